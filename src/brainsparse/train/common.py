"""Pieces every training task shares: run-folder checks, per-evaluation topology records."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine import MASK_BUFFER, DynamicSparseEngine
from ..errors import BrainsparseError
from .run_folder import (  # noqa: F401  (re-exported: the tasks import them from here)
    LOCK_NAME, MANIFEST, READY, STAGING, RunFolder, check_creatable, clear_run_folder, finish_interrupted_swap,
    lock_run_folder, prepare_run_folder, refuse_if_locked, unlock_run_folder,
)


def train_time_s(history: list[dict[str, Any]], key: str) -> float | None:
    """Seconds of optimizer steps and topology updates in a run, evaluation excluded: the sum of
    each history row's ``key``; ``None`` when a row lacks it (written by an older version)."""
    if any(key not in r for r in history):
        return None
    return float(sum(r[key] for r in history))


def fused_optimizer_options(device: torch.device | str, optimizer: type = torch.optim.Adam) -> dict[str, Any]:
    """``{"fused": True}`` where this torch has a fused kernel of ``optimizer`` (Adam, AdamW,
    SGD) for ``device`` (CPU from torch 2.4; one kernel for all parameters: on the ``small``
    translation preset's masked path Adam took 58 ms → 10 ms per step, sparse path 21 ms → 6 ms,
    1 thread), else ``{}`` (the default loop). Adam's update is its formula computed in another
    order (last-bit differences), and so is SGD's."""
    dev = torch.device(device)
    key = (optimizer.__name__, dev.type)
    if key not in _FUSED_OK:
        try:
            probe = torch.zeros(1, device=dev, requires_grad=True)
            probe.grad = torch.zeros_like(probe)
            optimizer([probe], lr=0.1, fused=True).step()
            _FUSED_OK[key] = True
        except (RuntimeError, TypeError, ValueError):
            _FUSED_OK[key] = False
    return {"fused": True} if _FUSED_OK[key] else {}


_FUSED_OK: dict[tuple[str, str], bool] = {}


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its per-call profiler scope (the
    trainers' step loops): at the paper MLP's 1.2 ms steps that scope and the wrapper cost about
    3 % of a step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


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


#: the most CPU threads a command may ask torch for
MAX_THREADS = 1024


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch (None: leave torch's default)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise BrainsparseError(f"threads {threads!r} is invalid; allowed: an integer from 1 to {MAX_THREADS}")
    torch.set_num_threads(threads)


def method_option_overrides(config: Any) -> dict[str, Any]:
    """Preset overrides from a task config's generic options (``init``, ``beta``, ``r``,
    ``drop_fraction``, ``regrowth_exact``; those left None change nothing), on top of the
    task's recipe choices for the method (``method_options``, see :func:`with_task_defaults`)."""
    out: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in (getattr(config, "method_options", None) or {}).items()
    }
    if getattr(config, "init", None) is not None:
        out["init"] = config.init.lower()
        if out["init"] != (getattr(config, "method_options", None) or {}).get("init"):
            out.pop("init_params", None)  # the recipe's parameters belong to the recipe's init
    params = {k: getattr(config, k) for k in ("beta", "r") if getattr(config, k, None) is not None}
    if params:
        out["init_params"] = {**out.get("init_params", {}), **params}
    for key in ("drop_fraction", "regrowth_exact"):
        if getattr(config, key, None) is not None:
            out[key] = getattr(config, key)
    return out


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON fits a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if args and args[-1] is not Ellipsis and origin is tuple:
            return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
        return not args or all(_type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        if not isinstance(value, dict):
            return False
        return not args or all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    return True  # a type this check does not know: validate() judges the value


def check_init_params(config: Any) -> None:
    """Refuse ``beta`` unless the run's effective initial topology (after ``init``) is BSW, and
    ``r`` unless it is BRF: options that would be silently ignored."""
    from ..methods import resolve_method

    method = resolve_method(config.method, **config.method_overrides())
    init = "none (dense)" if not method.sparse else method.init
    for key, needs in (("beta", "bsw"), ("r", "brf")):
        if getattr(config, key, None) is not None and init != needs:
            raise BrainsparseError(
                f"--{key} {getattr(config, key)!r} applies only to the {needs.upper()} initial topology, but method "
                f"{config.method!r} starts from {init}; allowed: drop --{key}, or add --init {needs}"
            )


class ConfigDict:
    """Mixin of task configs (dataclasses): build one from a stored ``config.json`` dict."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config"):
        """The config of ``data`` (unknown keys are ignored); a value of the wrong type raises
        :class:`BrainsparseError` naming ``source`` and the key. Values are then checked by
        ``validate()`` as strictly as command-line options."""
        if not isinstance(data, dict):
            raise BrainsparseError(f"{source} is not a JSON object; restore it or start the run again")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                continue
            if not _type_ok(value, hints.get(key, Any)):
                raise BrainsparseError(
                    f"{source}: {key} {value!r:.80} is not of type {_hint_name(hints.get(key))}; restore the file or start the run again"
                )
            if isinstance(value, int) and not isinstance(value, bool) and hints.get(key) is float:
                value = float(value)
            values[key] = value
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise BrainsparseError(f"{source} is unusable ({exc}); restore it or start the run again") from None


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


#: config fields a resumed run may take from the caller (where the data is, where to compute)
RESUME_OVERRIDES = ("data_dir", "device", "parallel")


def stored_config(cls: type, out: Path, given: Any = None) -> Any:
    """The config of the run in ``out``: ``config.json`` read strictly and checked against the
    config stored in the checkpoint (the truth: a mismatch is an error). ``given`` (a config)
    may change only :data:`RESUME_OVERRIDES`, where it differs from the class defaults."""
    from .checkpoint import load_checkpoint, read_json_file

    out = Path(out)
    path = out / "config.json"
    config = cls.from_dict(read_json_file(path, "run config"), source=f"run config '{path}'")
    state = load_checkpoint(out / "checkpoint.pt")
    saved = state.get("config")
    if saved is not None:
        truth = cls.from_dict(saved, source=f"the config in checkpoint '{out / 'checkpoint.pt'}'")
        a, b = dataclasses.asdict(config), dataclasses.asdict(truth)
        changed = [k for k in b if a.get(k) != b.get(k) and k not in RESUME_OVERRIDES]
        if changed:
            k = changed[0]
            raise BrainsparseError(
                f"run config '{path}' differs from the run's checkpoint in {', '.join(changed)} "
                f"({k}: {a.get(k)!r:.60} vs {b.get(k)!r:.60}); a resumed run keeps the checkpoint's settings: "
                "restore config.json or start a new run"
            )
    try:  # values read back are checked as strictly as command-line options
        config.validate()
    except BrainsparseError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise BrainsparseError(f"run config '{path}' holds an unusable value ({type(exc).__name__}: {str(exc)[:120]}); "
                               "restore it or start the run again") from None
    if given is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in RESUME_OVERRIDES:
            value = getattr(given, key, None)
            if key in defaults and value != defaults[key]:
                config = dataclasses.replace(config, **{key: value})
    return config


def with_task_defaults(config: Any) -> Any:
    """``config`` with ``method_options`` filled from the task's recipe when it is None: what the
    papers used for this method on this task (``recipe``: None picks the recipe of the task and
    dataset, a name picks that recipe, ``"none"`` the bare preset). A method's preset stays the
    method; options given explicitly (``init``, ``drop_fraction``, ...) still win."""
    if not hasattr(config, "method_options") or config.method_options is not None:
        return config
    from ..recipes import load_recipe, task_method_options

    recipe = getattr(config, "recipe", None)
    if recipe is not None and str(recipe).lower() == "none":
        return dataclasses.replace(config, method_options={})
    if recipe is None:
        name, options = task_method_options(config.task, config.dataset, config.method)
    else:
        chosen = load_recipe(recipe)
        if chosen.task != config.task:
            raise BrainsparseError(f"recipe {recipe!r} is for task {chosen.task!r}, not {config.task!r}")
        name, options = chosen.name, dict(chosen.method_overrides.get(config.method.lower(), {}))
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}  # JSON-friendly
    return dataclasses.replace(config, recipe=name, method_options=plain)


def open_run(config: Any, out: Path, files: Sequence[str], resume: bool, overwrite: bool) -> Any:
    """The config a run goes on with: on resume the one stored in ``out/config.json``, else
    ``config``; validated, and ``out`` checked, before anything is written."""
    out = Path(out)
    if resume:
        if (out / READY).is_dir():  # an --overwrite killed while swapping in: finish it first
            fd = lock_run_folder(out)
            try:
                finish_interrupted_swap(out, files)
            finally:
                unlock_run_folder(out, fd)
        prepare_run_folder(out, files, resume=True, overwrite=False)
        config = stored_config(type(config), out, given=config)
    else:
        config = with_task_defaults(config)
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
    """Load a checkpoint's engine, model and optimizer state. The masks are in the model's state
    (``weight_mask`` buffers, link structure), and model and engine load in either order; the
    optimizer goes last, after any layer moved to its saved path (``kernel="auto"``). A checkpoint
    from before the masks moved into the model keeps them in its engine state: the engine installs
    them, and the model's state is completed with them."""
    engine.load_state_dict(state["engine"])
    model.load_state_dict(with_engine_masks(state["model"], state["engine"], model))
    optimizer.load_state_dict(state["optimizer"])


def with_engine_masks(model_state: dict[str, Any], engine_state: dict[str, Any], model) -> dict[str, Any]:
    """``model_state``, completed (for a checkpoint whose engine state still holds the masks) by
    the ``weight_mask`` buffers ``model`` has after loading that engine state."""
    if "masks" not in engine_state:
        return model_state
    own = {k: v for k, v in model.state_dict().items() if k.endswith("." + MASK_BUFFER) and k not in model_state}
    return {**model_state, **own}
