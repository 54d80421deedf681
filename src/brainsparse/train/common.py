"""Pieces every training task shares: run-folder checks, per-evaluation topology records."""

from __future__ import annotations

import dataclasses
import json
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


def method_option_overrides(config: Any) -> dict[str, Any]:
    """Preset overrides from a task config's generic options (``init``, ``beta``, ``r``,
    ``drop_fraction``, ``regrowth_exact``; those left None change nothing)."""
    out: dict[str, Any] = {}
    if getattr(config, "init", None) is not None:
        out["init"] = config.init.lower()
    params = {k: getattr(config, k) for k in ("beta", "r") if getattr(config, k, None) is not None}
    if params:
        out["init_params"] = params
    for key in ("drop_fraction", "regrowth_exact"):
        if getattr(config, key, None) is not None:
            out[key] = getattr(config, key)
    return out


class ConfigDict:
    """Mixin of task configs (dataclasses): build one from a stored ``config.json`` dict."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def open_run(config: Any, out: Path, files: Sequence[str], resume: bool, overwrite: bool) -> Any:
    """The config a run goes on with: on resume the one stored in ``out/config.json``, else
    ``config``; validated, and ``out`` checked, before anything is written."""
    out = Path(out)
    if resume:
        prepare_run_folder(out, files, resume=True, overwrite=False)
        config = type(config).from_dict(json.loads((out / "config.json").read_text()))
    config.validate()
    if not resume:
        prepare_run_folder(out, files, resume=False, overwrite=overwrite)
    return config


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → the GPU when one is present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BrainsparseError(f"device {name!r} asked for, but this torch build sees no GPU; allowed here: auto, cpu")
        try:
            return torch.device(name)
        except RuntimeError:
            raise BrainsparseError(f"device {name!r} is invalid; allowed: auto, cpu, cuda, cuda:N") from None
    raise BrainsparseError(f"device {name!r} is invalid; allowed: auto, cpu, cuda, cuda:N")


def restore_training_state(state: dict[str, Any], engine: DynamicSparseEngine, model, optimizer) -> None:
    """Load a checkpoint's engine, model and optimizer state, the engine first (it sizes the
    sparse layers' link values, which the model and optimizer state then fill)."""
    engine.load_state_dict(state["engine"])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
