"""The ``brainsparse`` commands that are not training runs: reproduce's report, bench, analyze,
translate and methods (the parser and the training commands are in :mod:`brainsparse.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BrainsparseError


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce
    from .train.common import set_threads

    set_threads(args.threads)
    settings = {"data_dir": args.data_dir, "kernel": args.kernel.lower() if args.kernel else None, "device": args.device}
    report = reproduce(
        args.recipe, methods=args.methods, seeds=args.seeds, epochs=args.epochs, steps=args.steps,
        sparsity=args.sparsity, profile=args.profile, out=args.out, progress=not args.no_progress,
        report_only=args.report_only, **settings,
    )
    from .reproduce import report_markdown

    out = Path(report["methods"][next(iter(report["methods"]))]["seeds"][0]["folder"]).parent
    print(report_markdown(report))
    print(f"report: {out}/report.md, {out}/report.json; figure: {out}/report.png")
    return 0


def _check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file or cannot be created, before anything runs."""
    from .train.common import check_creatable

    if out.exists() and not out.is_dir():
        raise BrainsparseError(f"--out '{out}' exists and is not a folder; allowed: a folder or a path that can be created")
    if not out.exists():
        check_creatable(out, "--out")


def _check_bench_results(path: Path, quick: bool) -> None:
    """A ``--quick`` run must not replace the full results already in ``bench.json``."""
    from .train.checkpoint import read_json_file

    if not path.exists():
        return
    previous = read_json_file(path, "benchmark results")  # a damaged file: one error line, before any timing
    if quick and previous.get("quick") is False:
        raise BrainsparseError(f"'{path}' holds full benchmark results that a --quick run would replace; "
                               "allowed: another --out for quick runs, or drop --quick")


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmarks

    allowed = {"layers", "scoring", "memory", "epoch", "decay", "peak", "peers", "models"}
    if args.peers:
        from .bench_peers import installed_peers

        if not installed_peers():
            raise BrainsparseError("--peers times sparselab and SparseProp beside brainsparse, and neither is "
                                   "installed: pip install 'brainsparse[peers]'")
        args.parts = [*args.parts, "peers"] if "peers" not in args.parts else args.parts
    unknown = [p for p in args.parts if p not in allowed]
    if unknown:
        raise BrainsparseError(f"unknown benchmark part {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    _check_output_folder(Path(args.out))
    _check_bench_results(Path(args.out, "bench.json"), args.quick)
    run_benchmarks(args.out, parts=args.parts, quick=args.quick, data_dir=args.data_dir, dataset=args.dataset)
    print(Path(args.out, "bench.md").read_text())
    print(f"results: {args.out}/bench.json, {args.out}/bench.md")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_run

    result = analyze_run(args.run, args.out, seed=args.seed)
    out = args.out or str(Path(args.run) / "analysis")
    from .train.checkpoint import strict_json

    summary = result.get("summary", {k: v for k, v in result.items() if k != "layers"})
    print(json.dumps(strict_json(json.loads(json.dumps(summary, default=str))), indent=2, allow_nan=False))
    print(f"analysis written to {out}")
    return 0


#: the most text ``translate`` reads
_MAX_INPUT_BYTES = 1 << 28


def _input_lines(raw: bytes, name: str) -> list[str]:
    """The sentences of UTF-8 text, one per ``\\n``-terminated line (``\\r\\n`` too); other
    Unicode line breaks stay inside their line. Binary or non-UTF-8 input raises."""
    if len(raw) > _MAX_INPUT_BYTES:
        raise BrainsparseError(f"{name} is larger than {_MAX_INPUT_BYTES} bytes; allowed: split it into smaller files")
    if b"\0" in raw:
        raise BrainsparseError(f"{name} holds NUL bytes (binary data); allowed: UTF-8 text, one sentence per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BrainsparseError(f"{name} is not UTF-8 text (byte {exc.start}); allowed: UTF-8 text, one sentence per line") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _translate(args: argparse.Namespace) -> int:
    from .train.common import set_threads
    from .train.checkpoint import write_text
    from .train.translation import translate_lines

    set_threads(args.threads)
    if args.beam is not None:
        from .train.translation import check_beam

        check_beam(args.beam)
    if args.output != "-":
        target = Path(args.output)
        if target.is_dir():
            raise BrainsparseError(f"--output '{target}' is a folder; allowed: a file path (or - for stdout)")
        if not target.parent.is_dir():
            raise BrainsparseError(f"--output '{target}': folder '{target.parent}' does not exist; allowed: a file in an existing folder")
        from .train.translation import RUN_FILES

        if target.resolve().parent == Path(args.run).resolve() and target.name in RUN_FILES:
            raise BrainsparseError(f"--output '{target}' would replace the run's own {target.name}; allowed: another file")
    if args.input == "-":
        raw = sys.stdin.buffer.read(_MAX_INPUT_BYTES + 1)
        name = "standard input"
    else:
        path = Path(args.input)
        if not path.is_file():
            raise BrainsparseError(f"input file '{path}' does not exist or is not a file")
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_INPUT_BYTES + 1)
        name = f"input file '{path}'"
    lines = _input_lines(raw, name)
    hyps = translate_lines(args.run, lines, beam=args.beam)
    text = "".join(" ".join(h.split("\n")).replace("\r", " ") + "\n" for h in hyps)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_text(Path(args.output), text)
        print(f"{len(hyps)} translations written to {args.output}", file=sys.stderr)
    return 0


def _methods() -> int:
    from .methods import PRESETS, MethodConfig

    defaults = MethodConfig(name="defaults").to_dict()
    print("defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items() if k != "name"))
    for name, cfg in PRESETS.items():
        changed = {k: v for k, v in cfg.to_dict().items() if k != "name" and v != defaults[k]}
        print(f"{name}: " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the defaults"))
    from .recipes import load_recipe, recipe_names

    print("\nper task, the recipes change these (brainsparse train applies them unless an option overrides; --recipe none: the bare preset):")
    for recipe in recipe_names():
        r = load_recipe(recipe)
        for method, options in r.method_overrides.items():
            print(f"  {recipe} ({r.task}, {r.dataset}) {method}: " + ", ".join(f"{k}={v}" for k, v in options.items()))
        for variant, options in r.variants.items():
            shown = {k: v for k, v in options.items() if k != "note"}
            print(f"  {recipe} variant {variant}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return 0
