"""Distributed data-parallel training under ``torchrun``: process group, sharding, engine sync.

Protocol (every rank runs the same step loop on its shard of each global batch):

1. DDP all-reduces (averages) the masked gradients, so weights stay identical on all ranks.
2. Before a topology update, dense gradients kept for gradient-based scores (RigL, GraNet, MEST)
   are averaged over the ranks (:func:`allreduce_dense_grads`): the scores are those of the
   global batch.
3. Every rank runs the update, then rank 0's result is broadcast (:func:`broadcast_engine`):
   masks, the engine state (generator, counters, targets, history) and the values and optimizer
   state of the sparse layers. Rank 0 thus decides every update and all ranks hold bit-identical
   masks and weights afterwards, even if a rank's own computation had differed in the last bit.

Scores from activations (CTRE's cosine regrowth) use rank 0's shard only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..engine import DynamicSparseEngine
from ..errors import BrainsparseError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank as ``torchrun`` sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(cuda: bool = True, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): NCCL on ``cuda:LOCAL_RANK`` when CUDA is there
    and ``cuda`` is true, gloo on the CPU otherwise. Without those variables (or with
    ``WORLD_SIZE=1``) returns the single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return DistContext(rank=rank, world_size=dist.get_world_size(), local_rank=local_rank, device=device, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Wait for every rank, then leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(batch: Tensor, ctx: DistContext) -> Tensor:
    """This rank's rows of a global batch (equal contiguous slices)."""
    if not ctx.distributed:
        return batch
    if batch.shape[0] % ctx.world_size:
        raise BrainsparseError(
            f"batch size {batch.shape[0]} is not divisible by the {ctx.world_size} processes; "
            f"allowed: a multiple of {ctx.world_size}")
    per = batch.shape[0] // ctx.world_size
    return batch[ctx.rank * per : (ctx.rank + 1) * per]


def allreduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum of ``values`` over all ranks (float64; identity for one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@torch.no_grad()
def allreduce_dense_grads(engine: DynamicSparseEngine, ctx: DistContext) -> None:
    """Average the dense gradients the engine kept for an update's scores over all ranks."""
    if not ctx.distributed:
        return
    for layer in engine.layers.values():
        if layer.dense_grad is not None:
            dist.all_reduce(layer.dense_grad, op=dist.ReduceOp.SUM)
            layer.dense_grad.div_(ctx.world_size)


def _broadcast_object(obj: Any, ctx: DistContext, src: int) -> Any:
    holder = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(holder, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return holder[0]


@torch.no_grad()
def broadcast_engine(engine: DynamicSparseEngine, ctx: DistContext, src: int = 0) -> None:
    """Make every rank's engine, sparse-layer values and their optimizer state equal rank ``src``'s.

    Masks travel as tensors, the rest of :meth:`DynamicSparseEngine.state_dict` as one object;
    the other ranks load it with :meth:`DynamicSparseEngine.load_state_dict`, then receive the
    values and optimizer state of every sparse layer.
    """
    if not ctx.distributed or not engine.layers:
        return
    state = engine.state_dict() if ctx.rank == src else None
    small = None if state is None else {k: v for k, v in state.items() if k not in ("masks", "ever_active")}
    small = _broadcast_object(small, ctx, src)
    masks: dict[str, Tensor] = {}
    ever: dict[str, Tensor] = {}
    for name, layer in engine.layers.items():
        for store, own in ((masks, layer.mask), (ever, layer.ever_active)):
            t = own.to(device=ctx.device, dtype=torch.uint8).contiguous()
            dist.broadcast(t, src=src)
            store[name] = t.bool()
    if ctx.rank != src:
        engine.load_state_dict({**small, "masks": masks, "ever_active": ever})
    optimizer = engine.optimizer
    for layer in engine.layers.values():
        param = layer.param
        dist.broadcast(param.data, src=src)
        if optimizer is not None:
            for key in sorted(optimizer.state.get(param, {})):
                value = optimizer.state[param][key]
                if torch.is_tensor(value):
                    buf = value.to(ctx.device).contiguous()
                    dist.broadcast(buf, src=src)
                    value.copy_(buf)


def seed_rank_rng(seed: int, ctx: DistContext) -> None:
    """Give ranks other than 0 their own torch random stream (dropout differs between shards);
    rank 0 keeps the stream a single-process run uses, which is the one checkpoints store."""
    if ctx.rank > 0:
        torch.manual_seed(seed * 1_000_003 + 7919 * ctx.rank)
