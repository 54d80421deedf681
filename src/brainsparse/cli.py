"""Command line: ``brainsparse train | compare | translate | analyze | bench | methods``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_commands import _analyze, _bench, _check_output_folder, _methods, _reproduce, _translate
from .errors import BrainsparseError


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _add_task_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``compare``. Options left out take the task's defaults;
    an option that does not apply to the chosen task is an error."""
    p.add_argument("--task", default=None, choices=["classification", "translation", "lm"],
                   help="classification (MLP, MNIST family; the default), translation (Transformer, Multi30k), lm (LLaMA, PTB)")
    p.add_argument("--dataset", default=None,
                   help="classification: mnist, fashion-mnist (default), emnist-balanced, ...; "
                        "translation: multi30k (default), iwslt14, wmt17; lm: ptb (default), tinyshakespeare, ...")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files (else $BRAINSPARSE_DATA, system locations)")
    p.add_argument("--model", default=None, help="translation: small (default), multi30k, base, tiny; lm: llama-tiny (default), llama-60m, llama-130m, hf-llama-tiny")
    p.add_argument("--density", type=float, default=None, help="fraction of links kept in sparse layers, in (0, 1] (default 0.01; 0.1 for translation, 0.3 for lm)")
    p.add_argument("--recipe", default=None,
                   help="whose per-task method choices apply (default: the task's recipe for the dataset, see "
                        "`brainsparse recipes`; 'none': the bare method preset)")
    p.add_argument("--init", default=None, help="initial topology: uniform, er, erk, bsw, bsf, brf, csti (default: the method's)")
    p.add_argument("--beta", type=float, default=None, help="BSW rewiring probability in [0, 1]")
    p.add_argument("--r", type=float, default=None, help="BRF locality in [0, 1]")
    p.add_argument("--update-every", type=int, default=None, help="optimizer steps between topology updates (default: one epoch / the task's setting)")
    p.add_argument("--drop-fraction", type=float, default=None, help="fraction of links removed per update (zeta)")
    p.add_argument("--ch-form", choices=["exact", "matrix"], default=None, help="Cannistraci-Hebb score: exact paths or matrix form")
    p.add_argument("--kernel", default=None, help="execution of sparse layers: auto (sparse below the measured crossover density), dense (masked), sparse")
    p.add_argument("--lr", type=float, default=None, help="learning rate (translation: the noam scale)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="classification: images (32); lm: sequences")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N samples (sentences) only")
    cls = p.add_argument_group("classification")
    cls.add_argument("--epochs", type=int, default=None, help="(default 10)")
    cls.add_argument("--momentum", type=float, default=None, help="(default 0.9)")
    cls.add_argument("--hidden", type=_int_list, default=None, help="hidden widths (default 1568,1568,1568)")
    seq = p.add_argument_group("translation and lm")
    seq.add_argument("--steps", type=int, default=None, help="optimizer steps of the run")
    seq.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps")
    seq.add_argument("--eval-every", type=int, default=None, help="steps between validations and checkpoints")
    seq.add_argument("--dropout", type=float, default=None)
    tr = p.add_argument_group("translation")
    tr.add_argument("--batch-tokens", type=int, default=None, help="tokens per batch (source + target)")
    tr.add_argument("--beam", type=int, default=None, help="beam size of the decoder (default 2)")
    tr.add_argument("--label-smoothing", type=float, default=None)
    tr.add_argument("--vocab-size", type=int, default=None, help="joint sentencepiece vocabulary size (default 5000)")
    tr.add_argument("--source", default=None, help="source language code (default: the corpus's, en for multi30k)")
    tr.add_argument("--target", default=None, help="target language code (default: de for multi30k)")
    lm = p.add_argument_group("lm")
    lm.add_argument("--seq-len", type=int, default=None, help="tokens per training sequence")
    lm.add_argument("--parallel", default=None, choices=["ddp", "fsdp"],
                    help="under torchrun: ddp (default; replicated weights) or fsdp (FSDP2: weights, masks and optimizer "
                         "state sharded over the processes)")
    p.add_argument("--device", default=None, help="auto (the GPU when present, default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


#: argparse destinations that are not config fields
_NOT_CONFIG = {"command", "task", "threads", "no_progress", "ch_form", "out", "resume", "overwrite", "methods",
               "seeds", "method", "seed"}


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("brainsparse")
    except (ImportError, PackageNotFoundError):
        from . import __version__

        return __version__


class _UsageError(Exception):
    """A command line argparse rejects (printed as one ``brainsparse: error:`` line)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`_UsageError` instead of printing usage."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="brainsparse", description="Brain-inspired dynamic sparse training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model with a sparse-training method into a run folder")
    _add_task_args(train)
    train.add_argument("--method", default=None, help="a preset: see `brainsparse methods` (default chts)")
    train.add_argument("--seed", type=int, default=None, help="(default 0)")
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
    bench.add_argument("--parts", type=_str_list, default=["layers", "scoring", "memory", "epoch", "decay"],
                       help="comma-separated: layers, scoring, memory, epoch, decay, peak (peak memory of whole "
                            "runs, each in its own process; not in the default set), peers, models (Transformer and LLaMA "
                            "training steps, masked vs sparse; not in the default set)")
    bench.add_argument("--peers", action="store_true",
                       help="also time the installed peers (sparselab, SparseProp) per layer in the same process")
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    bench.add_argument("--dataset", default="mnist", help="dataset of the epoch benchmark")
    bench.add_argument("--data-dir", default=None)

    tr = sub.add_parser("translate", help="translate a file of sentences with a finished translation run")
    tr.add_argument("run", help="translation run folder (holds checkpoint.pt, vocab.model)")
    tr.add_argument("--input", default="-", help="file with one source sentence per line (default: stdin)")
    tr.add_argument("--output", default="-", help="where to write the translations (default: stdout)")
    tr.add_argument("--beam", type=int, default=None, help="beam size (default: the run's)")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    sub.add_parser("methods", help="list the method presets and their settings")

    rep = sub.add_parser("reproduce", help="run a paper's setting (a recipe) for every method x seed and report it "
                                           "beside the paper's numbers")
    rep.add_argument("recipe", help="a recipe: see `brainsparse recipes`")
    rep.add_argument("--methods", type=_str_list, default=None,
                     help="comma-separated presets or the recipe's named variants (default: the recipe's methods)")
    rep.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    rep.add_argument("--epochs", type=int, default=None, help="shorten the paper's budget (recipes counted in epochs)")
    rep.add_argument("--steps", type=int, default=None, help="shorten the paper's budget (recipes counted in steps)")
    rep.add_argument("--sparsity", type=float, default=None, help="one of the recipe's sparsity levels, e.g. 0.99 (default: its first)")
    rep.add_argument("--profile", default=None, help="the recipe's profile (transformer-multi30k: small, paper)")
    rep.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    rep.add_argument("--kernel", default=None, help="execution of sparse layers: auto, dense, sparse (default: the recipe's)")
    rep.add_argument("--device", default=None, help="auto (GPU when present), cpu, cuda, cuda:N")
    rep.add_argument("--out", default=None, help="folder for the runs and the report (default runs/<recipe>-d<density>-<budget>)")
    rep.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--report-only", action="store_true",
                     help="train nothing: report the runs already finished (look at a reproduction while it runs)")

    sub.add_parser("recipes", help="list the recipes: what each runs and its expected wall time on 2 cores")
    return parser


def _str_list(text: str) -> list[str]:
    return [v.strip().lower() for v in text.split(",") if v.strip()]


def _config_from_args(args: argparse.Namespace, method: str, seed: int):
    """The task's config from the given options (the others keep the task's defaults)."""
    import dataclasses

    from .train import task_entry
    from .train.common import set_threads

    config_cls, _ = task_entry(args.task)
    set_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    values = {"method": method.lower(), "seed": seed}
    for key, value in vars(args).items():
        if key in _NOT_CONFIG or value is None:
            continue
        if key not in fields:
            option = "--" + key.replace("_", "-")
            raise BrainsparseError(f"option {option} does not apply to task {args.task!r}")
        values[key] = value.lower() if key in ("dataset", "kernel", "model") else value
    if args.ch_form is not None:
        values["regrowth_exact"] = args.ch_form == "exact"
    return config_cls(**values)


def _train(args: argparse.Namespace) -> int:
    from .train import task_entry

    given_task, args.task = args.task, args.task or "classification"
    stored = Path(args.out or "", "config.json")
    if args.resume and args.out and stored.is_file():
        from .train.checkpoint import read_json_file

        # a resumed run keeps its own task; a --task that says otherwise is an error
        task = read_json_file(stored, "run config").get("task", "classification")
        if task not in ("classification", "translation", "lm"):
            raise BrainsparseError(f"run config '{stored}' names task {task!r:.40}; allowed: classification, translation, lm")
        if given_task is not None and given_task != task:
            raise BrainsparseError(f"--task {given_task} differs from the run's task {task!r}; a resumed run keeps "
                                   "its own task: drop --task")
        args.task = task
    config = _config_from_args(args, args.method or "chts", 0 if args.seed is None else args.seed)
    if args.resume:
        _check_resume_options(args, stored)
    else:
        from .train.common import with_task_defaults

        config = with_task_defaults(config)
        config.validate()
    out = args.out or f"runs/{config.dataset}-{config.method}-d{config.density:g}-s{config.seed}"
    _, train = task_entry(args.task)
    summary = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    from .train.checkpoint import strict_json

    print(json.dumps(strict_json(summary), indent=2, allow_nan=False))
    print(f"run folder: {out}")
    print(f"look at it: brainsparse analyze {shlex.quote(str(out))}")
    return 0


def _check_resume_options(args: argparse.Namespace, stored: Path) -> None:
    """Refuse options given with ``--resume`` that differ from the stored run (the run keeps its
    own settings; only --data-dir and --device may change where it reads and computes)."""
    from .train.checkpoint import read_json_file

    if not stored.is_file():
        return  # open_run names what is missing
    saved = read_json_file(stored, "run config")
    given = {k: v for k, v in vars(args).items()
             if k not in _NOT_CONFIG and v is not None and k not in ("data_dir", "device", "parallel")}
    given.update({k: getattr(args, k) for k in ("method", "seed") if getattr(args, k) is not None})
    if args.ch_form is not None:
        given["regrowth_exact"] = args.ch_form == "exact"
    differ = []
    for key, value in given.items():
        value = value.lower() if key in ("dataset", "kernel", "model", "method") and isinstance(value, str) else value
        if key not in saved or saved[key] != value:
            option = "--ch-form" if key == "regrowth_exact" else "--" + key.replace("_", "-")
            differ.append(f"{option} {value!r} (run: {saved.get(key, 'not applicable')!r})")
    if differ:
        raise BrainsparseError(
            "a resumed run keeps the settings it started with, but these options differ: " + "; ".join(differ)
            + "; allowed with --resume: --out, --data-dir, --device, --parallel, --threads, --no-progress (or start a new run)"
        )


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    args.task = args.task or "classification"
    from ._validation import check_seed

    for what, values in (("methods", args.methods), ("seeds", args.seeds)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise BrainsparseError(f"--{what} repeats {', '.join(repeated)}; allowed: each value once (a repeat would count one run twice)")
    for seed in args.seeds:
        check_seed(seed)
    base = _config_from_args(args, args.methods[0] if args.methods else "dense", 0)
    out = args.out or f"runs/compare-{base.dataset}-d{base.density:g}"
    _check_output_folder(Path(out))
    compare(args.methods, args.seeds, base, out, progress=not args.no_progress)
    print(Path(out, "compare.md").read_text())
    print(f"table: {out}/compare.md, {out}/compare.json; figure: {out}/compare.png")
    return 0


def _error(message: str) -> int:
    """Print ``message`` as the one line ``brainsparse: error: ...`` (whatever the terminal's
    encoding, whatever odd characters a bad value holds); returns the exit status 2."""
    line = "brainsparse: error: " + " ".join(str(message).split())
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(line, file=sys.stderr)
    except UnicodeEncodeError:
        print(line.encode("ascii", "backslashreplace").decode("ascii"), file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainsparse`` command."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _error(str(exc))
    if args.command != "methods":
        from ._optional import INSTALL_HINT, missing_runner_packages

        missing = missing_runner_packages()
        if missing:
            return _error(f"'brainsparse {args.command}' needs the experiment runner's packages "
                          f"({', '.join(missing)} missing): {INSTALL_HINT}")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "translate":
            return _translate(args)
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "recipes":
            from .reproduce import recipes_overview

            print(recipes_overview())
            return 0
        if args.command == "bench":
            return _bench(args)
        return _methods()
    except BrainsparseError as exc:
        return _error(str(exc))
    except OSError as exc:  # a file or folder the command cannot use
        where = f" '{exc.filename}'" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}; check the path and its permissions")
    except (MemoryError, RuntimeError) as exc:  # sizes that do not fit in memory
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc) and "out of memory" not in str(exc):
            raise
        return _error("out of memory: the model or data asked for is too large for this machine "
                      "(allowed: smaller --hidden, --model, --batch-size, --batch-tokens, --beam or --train-subset)")
    except KeyboardInterrupt:
        print("brainsparse: interrupted; the last finished epoch is in the checkpoint (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
