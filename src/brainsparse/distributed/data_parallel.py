"""Data parallelism without the DDP wrapper, for the sparse kernel path.

On the sparse path a layer's parameter is its vector of link values, which a topology update
replaces (a new Parameter when the link count changes). DDP's reducer registers its parameters
once, so instead every rank averages the gradients of all current parameters itself right
after ``backward()`` (:func:`average_gradients`, in flat buckets) and the ranks start from the
same values (:func:`broadcast_parameters`). Topology updates then follow the DDP protocol of
:mod:`brainsparse.train.distributed`: dense gradients for scores are averaged, rank 0's
decision, values and optimizer state are broadcast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

#: elements per all-reduce bucket (32 MiB of float32)
BUCKET_ELEMENTS = 8 << 20


@torch.no_grad()
def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (what DDP does at wrapping)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def average_gradients(model: nn.Module, bucket_elements: int = BUCKET_ELEMENTS) -> None:
    """Replace every parameter's gradient by its mean over the ranks (a sum all-reduce of flat
    buckets of at most ``bucket_elements``, one per dtype and device, then a division). Every
    rank must hold the same parameters with gradients, in the same order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket, size = [], 0

    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device or size + g.numel() > bucket_elements):
            flush()
        bucket.append(g)
        size += g.numel()
    flush()


__all__ = ["BUCKET_ELEMENTS", "average_gradients", "broadcast_parameters"]
