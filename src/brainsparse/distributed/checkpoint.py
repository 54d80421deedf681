"""Sharded checkpoints of FSDP2 runs (:mod:`torch.distributed.checkpoint`), loadable on any
number of processes.

A checkpoint is two things in the run folder:

* ``checkpoint-step<N>.dcp/``: the tensors, each rank writing its shards: the model state
  (``get_model_state_dict``: the weights and the layers' ``weight_mask`` buffers, both
  row-sharded), the optimizer state (``get_optimizer_state_dict``: keys are parameter names)
  and the engine's ``ever_active`` (row-sharded like the weights);
* ``checkpoint.pt`` (written by rank 0 last, atomically, so it always names a complete folder):
  the engine's small state (generator, counters, targets, history), the step, the run history,
  the random state, the config and ``"sharded": "checkpoint-step<N>.dcp"``.

:func:`restore` loads such a checkpoint into a sharded run on any number of ranks or into a
single unsharded process, and also a one-process ``checkpoint.pt`` into a sharded run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..engine import MASK_BUFFER, DynamicSparseEngine
from ..errors import BrainsparseError
from .fsdp import ShardedSparseEngine

#: the key of ``checkpoint.pt`` that names the folder of the sharded tensors
SHARDED = "sharded"
#: set by the loader: the absolute path of that folder
SHARDED_PATH = "sharded_path"
_PREFIX, _SUFFIX = "checkpoint-step", ".dcp"


def _broadcast(value: Any) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    holder = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _engine_tensors(engine: DynamicSparseEngine, mesh: Any) -> dict[str, dict[str, Tensor]]:
    """The engine's ever_active as the destination/source of a DCP save or load (the masks are
    the model's ``weight_mask`` buffers, in the model state)."""
    if isinstance(engine, ShardedSparseEngine):
        return engine.sharded_tensors(mesh)
    return {"ever_active": {n: l.ever_active.clone() for n, l in engine.layers.items()}}


def save_sharded(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, engine: ShardedSparseEngine,
                 extra: dict[str, Any], mesh: Any) -> Path:
    """Write a sharded checkpoint into ``out`` (a collective: every rank calls it; rank 0's
    ``out`` is used). Older ``checkpoint-step*.dcp`` folders are removed once ``checkpoint.pt``
    names the new one. Returns the folder of the tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from ..train.checkpoint import save_checkpoint

    out = Path(_broadcast(str(out)))
    name = f"{_PREFIX}{int(extra['step'])}{_SUFFIX}"
    folder = out / name
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
             **_engine_tensors(engine, mesh)}
    if dist.get_rank() == 0 and folder.exists():
        shutil.rmtree(folder)  # a half-written folder of a killed run at this step
    dist.barrier()
    dcp.save(state, checkpoint_id=str(folder))
    dist.barrier()
    if dist.get_rank() == 0:
        save_checkpoint(out / "checkpoint.pt", {"engine": engine.small_state_dict(), SHARDED: name, **extra})
        for old in out.glob(f"{_PREFIX}*{_SUFFIX}"):
            if old.name != name and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return folder


def resolve(state: dict[str, Any], out: Path) -> dict[str, Any]:
    """``state`` (a loaded ``checkpoint.pt``) with the absolute folder of its sharded tensors."""
    if SHARDED in state:
        name = str(state[SHARDED])
        if "/" in name or name.startswith(".") or not (Path(out) / name).is_dir():
            raise BrainsparseError(f"checkpoint '{Path(out) / 'checkpoint.pt'}' names the sharded folder {name!r}, "
                                   f"which is missing from '{out}'; restore it or start the run again with --overwrite")
        state = {**state, SHARDED_PATH: str(Path(out) / name)}
    return state


def restore(state: dict[str, Any], engine: DynamicSparseEngine, model: nn.Module,
            optimizer: torch.optim.Optimizer, mesh: Any = None) -> None:
    """Load a checkpoint into a live run: sharded (DCP) → sharded or single process; one-process
    ``checkpoint.pt`` → sharded (full tensors, each rank keeping its rows)."""
    if SHARDED in state:
        _restore_sharded(state, engine, model, optimizer, mesh)
    elif isinstance(engine, ShardedSparseEngine):
        _restore_full_into_sharded(state, engine, model, optimizer)
    else:
        raise BrainsparseError("restore() got a one-process checkpoint for an unsharded run; use "
                               "brainsparse.train.common.restore_training_state")


def _restore_sharded(state: dict[str, Any], engine: DynamicSparseEngine, model: nn.Module,
                     optimizer: torch.optim.Optimizer, mesh: Any) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
    )

    if SHARDED_PATH not in state:
        raise BrainsparseError("a sharded checkpoint must be read with brainsparse.distributed.checkpoint.resolve first")
    path = state[SHARDED_PATH]
    if isinstance(engine, ShardedSparseEngine) and mesh is None:
        from .fsdp import default_mesh

        mesh = default_mesh()
    # the engine first: it puts every layer on the checkpoint's path (dense) before the model loads
    tensors = _engine_tensors(engine, mesh)
    dcp.load(tensors, checkpoint_id=path)
    engine.load_state_dict({**state["engine"], "ever_active": dict(tensors["ever_active"])})
    full = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(full, checkpoint_id=path)
    set_model_state_dict(model, full["model"])
    set_optimizer_state_dict(model, optimizer, full["optimizer"])
    engine.apply_masks()


def _restore_full_into_sharded(state: dict[str, Any], engine: ShardedSparseEngine, model: nn.Module,
                               optimizer: torch.optim.Optimizer) -> None:
    """A one-process checkpoint (full tensors; optimizer state keyed by parameter index) into a
    sharded run built the same way (the same parameter order in the optimizer)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    kernels = state["engine"].get("kernels", {})
    if any(k == "sparse" for k in kernels.values()):
        raise BrainsparseError("the checkpoint has layers on the sparse kernel path, which FSDP does not support; "
                               "resume it without --parallel fsdp (a run meant to move to FSDP later: train it "
                               "with --kernel dense)")
    engine.load_state_dict(state["engine"])
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = state["optimizer"]
    if len(order) != sum(len(g["params"]) for g in saved["param_groups"]):
        raise BrainsparseError("the checkpoint's optimizer holds a different number of parameters than this model")
    by_name = {
        "state": {order[int(i)]: v for i, v in saved["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
    engine.apply_masks()


def load_sharded_masks(path: str | Path, key: str = "masks") -> dict[str, Tensor]:
    """The full masks (``key="masks"``: the model's ``weight_mask`` buffers) or ``ever_active``
    of a sharded checkpoint folder, by layer name, read in this process alone (no process group
    needed), e.g. for ``brainsparse analyze``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except (OSError, ValueError, RuntimeError) as exc:
        raise BrainsparseError(f"sharded checkpoint '{path}' cannot be read ({exc}); restore it") from None
    group, suffix = ("model", f".{MASK_BUFFER}") if key == "masks" else (key, "")
    prefix = group + "."
    tensors = {
        name[len(prefix):]: torch.zeros(tuple(meta.size), dtype=meta.properties.dtype)
        for name, meta in metadata.state_dict_metadata.items()
        if name.startswith(prefix) and name.endswith(suffix) and isinstance(meta, TensorStorageMetadata)
    }
    state = {group: tensors}
    dcp.load(state, checkpoint_id=str(path))
    return {n[: len(n) - len(suffix)]: t.bool() for n, t in state[group].items()}


__all__ = ["SHARDED", "SHARDED_PATH", "load_sharded_masks", "resolve", "restore", "save_sharded"]
