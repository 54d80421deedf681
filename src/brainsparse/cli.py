"""Command line: ``brainsparse train | methods``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import BrainsparseError


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainsparse", description="Brain-inspired dynamic sparse training.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model with a sparse-training method into a run folder")
    train.add_argument("--task", default="classification", help="classification (MLP on an MNIST-family dataset)")
    train.add_argument("--dataset", default="fashion-mnist", help="mnist, fashion-mnist, emnist-balanced, ...")
    train.add_argument("--data-dir", default=None, help="folder holding the dataset files (else $BRAINSPARSE_DATA, system locations)")
    train.add_argument("--method", default="chts", help="dense, static, set, rigl, cht, chts")
    train.add_argument("--density", type=float, default=0.01, help="fraction of links kept in sparse layers, in (0, 1]")
    train.add_argument("--init", default=None, help="initial topology: uniform, er, erk, bsw, bsf, brf, csti (default: the method's)")
    train.add_argument("--beta", type=float, default=None, help="BSW rewiring probability in [0, 1]")
    train.add_argument("--r", type=float, default=None, help="BRF locality in [0, 1]")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=0.025)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--hidden", type=_int_list, default=[1568, 1568, 1568], help="hidden widths, e.g. 1568,1568,1568")
    train.add_argument("--update-every", type=int, default=None, help="optimizer steps between topology updates (default: one epoch)")
    train.add_argument("--drop-fraction", type=float, default=None, help="fraction of links removed per update (zeta)")
    train.add_argument("--ch-form", choices=["exact", "matrix"], default=None, help="Cannistraci-Hebb score: exact paths or matrix form")
    train.add_argument("--train-subset", type=int, default=None, help="train on the first N samples only")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<method>-d<density>-s<seed>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a finished or partial run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("methods", help="list the method presets and their settings")
    return parser


def _train(args: argparse.Namespace) -> int:
    import torch

    from .train import TrainConfig, train_classifier

    if args.task != "classification":
        raise BrainsparseError(f"unknown task {args.task!r}; allowed: classification")
    if args.threads is not None:
        if args.threads < 1:
            raise BrainsparseError(f"threads {args.threads!r} is not a positive integer")
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        dataset=args.dataset.lower(),
        method=args.method.lower(),
        density=args.density,
        epochs=args.epochs,
        seed=args.seed,
        init=args.init,
        beta=args.beta,
        r=args.r,
        hidden=args.hidden,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        update_every=args.update_every,
        drop_fraction=args.drop_fraction,
        regrowth_exact=None if args.ch_form is None else args.ch_form == "exact",
        train_subset=args.train_subset,
        data_dir=args.data_dir,
    )
    if not args.resume:
        config.validate()
    out = args.out or f"runs/{config.dataset}-{config.method}-d{config.density:g}-s{config.seed}"
    summary = train_classifier(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {out}")
    return 0


def _methods() -> int:
    from .methods import PRESETS

    for name, cfg in PRESETS.items():
        d = cfg.to_dict()
        d.pop("name")
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainsparse`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        return _methods()
    except BrainsparseError as exc:
        print(f"brainsparse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainsparse: interrupted; the last finished epoch is in the checkpoint (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
