"""Command line: ``brainsparse train | compare | analyze | bench | methods``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import BrainsparseError


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _add_task_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``compare``."""
    p.add_argument("--task", default="classification", help="classification (MLP on an MNIST-family dataset)")
    p.add_argument("--dataset", default="fashion-mnist", help="mnist, fashion-mnist, emnist-balanced, ...")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files (else $BRAINSPARSE_DATA, system locations)")
    p.add_argument("--density", type=float, default=0.01, help="fraction of links kept in sparse layers, in (0, 1]")
    p.add_argument("--init", default=None, help="initial topology: uniform, er, erk, bsw, bsf, brf, csti (default: the method's)")
    p.add_argument("--beta", type=float, default=None, help="BSW rewiring probability in [0, 1]")
    p.add_argument("--r", type=float, default=None, help="BRF locality in [0, 1]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.025)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--hidden", type=_int_list, default=[1568, 1568, 1568], help="hidden widths, e.g. 1568,1568,1568")
    p.add_argument("--update-every", type=int, default=None, help="optimizer steps between topology updates (default: one epoch)")
    p.add_argument("--drop-fraction", type=float, default=None, help="fraction of links removed per update (zeta)")
    p.add_argument("--ch-form", choices=["exact", "matrix"], default=None, help="Cannistraci-Hebb score: exact paths or matrix form")
    p.add_argument("--kernel", default="auto", help="execution of sparse layers: auto (sparse below the measured crossover density), dense (masked), sparse")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N samples only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainsparse", description="Brain-inspired dynamic sparse training.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model with a sparse-training method into a run folder")
    _add_task_args(train)
    train.add_argument("--method", default="chts", help="a preset: see `brainsparse methods`")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<method>-d<density>-s<seed>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a finished or partial run in --out")

    comp = sub.add_parser("compare", help="run methods x seeds on one task and tabulate them (finished runs are reused)")
    _add_task_args(comp)
    comp.add_argument("--methods", type=_str_list, default=["dense", "set", "rigl", "cht", "chts", "chtss"],
                      help="comma-separated presets")
    comp.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated seeds")
    comp.add_argument("--out", default=None, help="folder for the runs and the table (default runs/compare-<dataset>-d<density>)")

    analyze = sub.add_parser("analyze", help="network measures, adjacency images and degree distributions of a run")
    analyze.add_argument("run", help="run folder (holds checkpoint.pt)")
    analyze.add_argument("--out", default=None, help="output folder (default RUN/analysis)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the randomised measures (modularity)")

    bench = sub.add_parser("bench", help="benchmark sparse kernels, CH scoring, memory and a training epoch")
    bench.add_argument("--out", default="benchmarks/results", help="folder for bench.json and bench.md")
    bench.add_argument("--parts", type=_str_list, default=["layers", "scoring", "memory", "epoch"],
                       help="comma-separated: layers, scoring, memory, epoch")
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    bench.add_argument("--dataset", default="mnist", help="dataset of the epoch benchmark")
    bench.add_argument("--data-dir", default=None)

    sub.add_parser("methods", help="list the method presets and their settings")
    return parser


def _str_list(text: str) -> list[str]:
    return [v.strip().lower() for v in text.split(",") if v.strip()]


def _config_from_args(args: argparse.Namespace, method: str, seed: int):
    import torch

    from .train import TrainConfig

    if args.task != "classification":
        raise BrainsparseError(f"unknown task {args.task!r}; allowed: classification")
    if args.threads is not None:
        if args.threads < 1:
            raise BrainsparseError(f"threads {args.threads!r} is not a positive integer")
        torch.set_num_threads(args.threads)
    return TrainConfig(
        dataset=args.dataset.lower(),
        method=method.lower(),
        density=args.density,
        epochs=args.epochs,
        seed=seed,
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
        kernel=args.kernel.lower(),
    )


def _train(args: argparse.Namespace) -> int:
    from .train import train_classifier

    config = _config_from_args(args, args.method, args.seed)
    if not args.resume:
        config.validate()
    out = args.out or f"runs/{config.dataset}-{config.method}-d{config.density:g}-s{config.seed}"
    summary = train_classifier(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    base = _config_from_args(args, args.methods[0] if args.methods else "dense", 0)
    out = args.out or f"runs/compare-{base.dataset}-d{base.density:g}"
    compare(args.methods, args.seeds, base, out, progress=not args.no_progress)
    print(Path(out, "compare.md").read_text())
    print(f"table: {out}/compare.md, {out}/compare.json; figure: {out}/compare.png")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmarks

    allowed = {"layers", "scoring", "memory", "epoch"}
    unknown = [p for p in args.parts if p not in allowed]
    if unknown:
        raise BrainsparseError(f"unknown benchmark part {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    run_benchmarks(args.out, parts=args.parts, quick=args.quick, data_dir=args.data_dir, dataset=args.dataset)
    print(Path(args.out, "bench.md").read_text())
    print(f"results: {args.out}/bench.json, {args.out}/bench.md")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_run

    result = analyze_run(args.run, args.out, seed=args.seed)
    out = args.out or str(Path(args.run) / "analysis")
    print(json.dumps(result.get("summary", {k: v for k, v in result.items() if k != "layers"}), indent=2, default=str))
    print(f"analysis written to {out}")
    return 0


def _methods() -> int:
    from .methods import PRESETS, MethodConfig

    defaults = MethodConfig(name="defaults").to_dict()
    print("defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items() if k != "name"))
    for name, cfg in PRESETS.items():
        changed = {k: v for k, v in cfg.to_dict().items() if k != "name" and v != defaults[k]}
        print(f"{name}: " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the defaults"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainsparse`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "bench":
            return _bench(args)
        return _methods()
    except BrainsparseError as exc:
        print(f"brainsparse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainsparse: interrupted; the last finished epoch is in the checkpoint (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
