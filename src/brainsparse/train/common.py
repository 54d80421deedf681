"""Pieces every training task shares: run-folder checks, per-evaluation topology records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine import DynamicSparseEngine
from ..errors import BrainsparseError


def prepare_run_folder(out: Path, files: Sequence[str], resume: bool, overwrite: bool) -> None:
    """Check what ``out`` holds before anything is written; raise instead of clobbering a run.

    ``files`` are the names a run of this task writes (any of them marks the folder as a run).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BrainsparseError(f"--out '{out}' exists and is not a folder")
    has_run = out.exists() and any((out / f).exists() for f in files)
    if resume:
        if not (out / "checkpoint.pt").exists():
            raise BrainsparseError(f"cannot resume: no checkpoint.pt in run folder '{out}'")
    elif has_run and not overwrite:
        raise BrainsparseError(
            f"run folder '{out}' already holds a run; pass --resume to continue it or --overwrite to replace it"
        )


def clear_run_folder(out: Path, files: Sequence[str]) -> None:
    """Delete a previous run's files from ``out`` (for ``--overwrite``) and make sure it exists."""
    out = Path(out)
    if out.exists():
        for name in files:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def topology_record(engine: DynamicSparseEngine, updates_before: int, **values: Any) -> dict[str, Any]:
    """One metrics.jsonl row: ``values`` plus the sparse network's state and the topology updates
    made since ``engine.history[updates_before]`` (their count, time and last overlap)."""
    report = engine.report()
    updates = engine.history[updates_before:]
    record = dict(values)
    record.update(
        density=report["density"],
        active_neuron_rate=report["active_neuron_rate"],
        itop=report["itop"],
        updates=len(updates),
        update_time_s=sum(u.get("time_s", 0.0) for u in updates),
        layers={
            name: {
                key: info[key]
                for key in ("links", "target", "density", "active_in", "active_out", "active_neurons", "overlap", "frozen")
            }
            for name, info in report["layers"].items()
        },
    )
    if updates:
        record["overlap"] = {n: v["overlap"] for n, v in updates[-1]["layers"].items()}
    return record


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch (None: leave torch's default)."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise BrainsparseError(f"threads {threads!r} is not a positive integer")
    torch.set_num_threads(threads)
