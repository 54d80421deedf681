"""A layer's links under FSDP2: the third storage of the engine (after ``MaskedStorage`` and
``LinkStorage``, :mod:`brainsparse.engine.storage`), and the scores' view of a sharded layer.

FSDP2 (``fully_shard``) splits every weight into row pieces (``Shard(0)``, :func:`torch.chunk`
sizes). :class:`ShardedStorage` keeps the layer's ``weight_mask`` buffer sharded the same way:
a boolean :class:`~torch.distributed.tensor.DTensor` whose local part is this rank's rows, so
``model.state_dict()`` (and a :mod:`torch.distributed.checkpoint` of it) carries the topology
sharded like the weights, and it reshards on load like them. Weights, gradients and optimizer
state are masked on the local rows only.

The full ``(out, in)`` mask exists only while the engine holds it (:meth:`ShardedStorage.hold`,
during a topology update, :meth:`report` and :meth:`state_dict`): it is gathered once (bool
masks travel as bytes) and every rank then holds the same tensor. Outside those windows
``storage.mask`` is this rank's rows.

:class:`ShardedScoreInput` is what a score sees of a sharded layer: the full mask; a score with
a row form (:class:`brainsparse.registry.RowForm`: ``|W|``, relative importance, MEST, ``|∇W|``)
is computed on each rank's rows and only those partial scores are gathered (:func:`sharded_score`);
any other score reading ``weight`` or ``grad`` gathers them on first use.
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..engine.storage import MASK_BUFFER, GradSink, MaskedStorage
from ..errors import BrainsparseError
from ..registry import Regularizer, Score, ScoreInput

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._tensor import DTensor, Shard  # type: ignore[no-redef]


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view sharing its storage), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def row_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``rows`` are split like :func:`torch.chunk`
    (what FSDP2's ``Shard(0)`` does): pieces of ``ceil(rows / world)``, the last ones shorter or empty."""
    size = math.ceil(rows / world) if rows else 0
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def gather_rows(part: Tensor, rows: int, group: dist.ProcessGroup | None = None) -> Tensor:
    """The full tensor whose ``torch.chunk`` row pieces the ranks of ``group`` hold (``part`` is
    this rank's piece). Booleans travel as bytes; every rank receives the same tensor."""
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    if world == 1:
        return part.clone()
    size = math.ceil(rows / world) if rows else 0
    dtype = part.dtype
    send = part.to(torch.uint8) if dtype == torch.bool else part
    padded = send.new_zeros((size, *part.shape[1:]))
    padded[: part.shape[0]] = send
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    full = torch.cat(pieces)[:rows]
    return full.bool() if dtype == torch.bool else full


def _optimizer_states(optimizer: torch.optim.Optimizer | None, weight: Tensor) -> list[Tensor]:
    """The local parts of ``weight``'s optimizer state tensors shaped like it."""
    if optimizer is None:
        return []
    return [local(v) for v in optimizer.state.get(weight, {}).values() if torch.is_tensor(v) and v.shape == weight.shape]


class ShardedStorage(MaskedStorage):
    """The masked-dense path of a layer whose weight FSDP2 shards by rows (see the module docs).

    ``rows`` is this rank's ``[start, stop)``; ``mask`` is the full mask while :meth:`hold` is
    in effect and this rank's rows otherwise; ``mask_float`` is the local bool mask itself (it
    zeroes as well when multiplied, and no float copy is kept).
    """

    path = "dense"

    def __init__(self, module: nn.Linear, mask: Tensor, rank: int, world: int,
                 group: dist.ProcessGroup | None = None) -> None:
        self.module = module
        self.group = group
        out = module.out_features
        self.rows = row_range(out, rank, world)
        start, stop = self.rows
        weight = module.weight
        if tuple(mask.shape) != (out, module.in_features):
            raise BrainsparseError(f"a sharded layer's initial mask must be the full {(out, module.in_features)} mask, "
                                   f"got {tuple(mask.shape)}")
        mask = mask.to(device=local(weight).device, dtype=torch.bool)
        part = mask[start:stop].clone()
        if isinstance(weight, DTensor):
            if local(weight).shape[0] != stop - start:
                raise BrainsparseError(
                    f"the local shard has {local(weight).shape[0]} rows, expected {stop - start} (FSDP2 Shard(0) over "
                    f"{world} ranks); shard the model with fully_shard on one mesh dimension")
            buffer: Tensor = DTensor.from_local(part, weight.device_mesh, [Shard(0)], run_check=False,
                                                shape=mask.shape, stride=(mask.shape[1], 1))
        else:  # an unsharded layer of a sharded model: every rank holds it whole
            self.rows = (0, out)
            buffer = mask.clone()
        module._buffers.pop(MASK_BUFFER, None)
        module.register_buffer(MASK_BUFFER, buffer)
        self._full: Tensor | None = mask  # held until the engine's set-up releases it

    # ------------------------------------------------------------------ masks
    @property
    def local_mask(self) -> Tensor:
        """This rank's rows of the mask (the local part of the ``weight_mask`` buffer)."""
        return local(self.module._buffers[MASK_BUFFER])

    @property
    def mask(self) -> Tensor:
        """The full mask while held (:meth:`hold`), else this rank's rows."""
        return self._full if self._full is not None else self.local_mask

    @property
    def mask_float(self) -> Tensor:
        """The local bool mask (multiplying by it zeroes off-mask as a float copy would)."""
        return self.local_mask

    def full_mask(self) -> Tensor:
        """The full ``(out, in)`` mask: the held one, or gathered now (a collective)."""
        if self._full is not None:
            return self._full
        return gather_rows(self.local_mask, self.module.out_features, self.group)

    def hold(self) -> None:
        """Gather the full mask and keep it until :meth:`release` (a collective)."""
        if self._full is None:
            self._full = self.full_mask()

    def release(self) -> None:
        """Drop the full mask: only this rank's rows stay."""
        self._full = None

    def _local_rows(self, mask: Tensor) -> Tensor:
        start, stop = self.rows
        if mask.shape[0] == self.module.out_features and stop - start != mask.shape[0]:
            return mask[start:stop]
        return mask

    # ------------------------------------------------------------------ weights
    @property
    def local_weight(self) -> Tensor:
        """This rank's rows of the weight (detached)."""
        return local(self.module.weight).detach()

    def dense_weight(self) -> Tensor:
        """The full ``(out, in)`` weight, gathered (a collective; the engine's updates never call it)."""
        weight = self.module.weight.detach()
        return weight.full_tensor() if isinstance(weight, DTensor) else weight

    @torch.no_grad()
    def write_dense_weight(self, weight: Tensor) -> None:
        """Set this rank's rows of the weight from a full ``(out, in)`` tensor."""
        start, stop = self.rows
        local(self.module.weight).copy_(weight[start:stop])

    @torch.no_grad()
    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None,
                 fresh: Tensor | None = None) -> None:
        """Install the full ``mask`` (kept as the held mask if one is held); the links of
        ``fresh`` in this rank's rows start at weight 0 with zero optimizer state."""
        mask = mask.to(dtype=torch.bool)
        self.local_mask.copy_(self._local_rows(mask))
        if self._full is not None:
            self._full = mask
        w = local(self.module.weight)
        if fresh is not None:
            part = self._local_rows(fresh)
            w.masked_fill_(part, 0.0)
            for value in _optimizer_states(optimizer, self.module.weight):
                value.masked_fill_(part, 0.0)
        self.apply_mask(optimizer)

    @torch.no_grad()
    def load_mask(self, mask: Tensor) -> None:
        """Take ``mask`` (the full mask or this rank's rows) as it is (a restore)."""
        mask = local(mask).to(device=self.local_mask.device, dtype=torch.bool)
        self.local_mask.copy_(self._local_rows(mask))
        if self._full is not None:  # held: keep holding the new full mask
            full = mask.shape[0] == self.module.out_features
            self._full = mask.clone() if full else None
            if not full:
                self.hold()

    @torch.no_grad()
    def apply_mask(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero weight, gradient and optimizer state off-mask on this rank's rows."""
        mask = self.local_mask
        w = self.module.weight
        local(w).mul_(mask)
        if w.grad is not None:
            local(w.grad).mul_(mask)
        for value in _optimizer_states(optimizer, w):
            value.mul_(mask)

    @torch.no_grad()
    def after_step(self) -> None:
        """Re-zero this rank's rows of the weight off-mask."""
        local(self.module.weight).mul_(self.local_mask)

    @torch.no_grad()
    def mask_grad(self, keep_dense: bool) -> Tensor | None:
        """Zero the gradient off-mask on this rank's rows; with ``keep_dense``, return a copy of
        the gradient rows first (for gradient scores). ``None`` without a gradient."""
        grad = self.module.weight.grad
        if grad is None:
            return None
        g = local(grad)
        kept = g.detach().clone() if keep_dense else None
        g.mul_(self.local_mask)
        return kept

    def regularize(self, regularizer: Regularizer, step_size: float) -> None:
        """Not supported: a proximal step of the whole weight needs it unsharded."""
        raise BrainsparseError("regularizers (NeuroPrune's preferential-attachment penalty) are not supported under FSDP")

    def attach_grad(self, capture: Callable[[], bool] | None, sink: GradSink) -> list[Any]:
        """No hooks: FSDP2 writes the sharded gradient after its reduce-scatter, so a tensor hook
        on the sharded parameter never runs; the engine's ``mask_gradients`` masks it instead."""
        return []


class ShardedScoreInput(ScoreInput):
    """A sharded layer as a score sees it: the full mask (held on every rank); ``weight`` and
    ``grad`` are gathered on first use (only by scores without a row form); :meth:`rows_input`
    is the same view restricted to this rank's rows."""

    def __init__(self, name: str, mask: Tensor, storage: ShardedStorage, local_grad: Tensor | None,
                 **kwargs: Any) -> None:
        self._storage = storage
        self._local_grad = local_grad
        self._grad_full: Tensor | None = None
        super().__init__(name, mask, storage.dense_weight, **kwargs)

    @property  # type: ignore[override]
    def grad(self) -> Tensor | None:
        """The full gradient of the batch before the update (gathered on first use)."""
        if self._grad_full is None and self._local_grad is not None:
            self._grad_full = gather_rows(self._local_grad, self.mask.shape[0], self._storage.group)
        return self._grad_full

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self._grad_full = value

    def rows_input(self) -> ScoreInput:
        """This rank's rows: their mask, weight and gradient."""
        start, stop = self._storage.rows
        weight = self._storage.local_weight
        return ScoreInput(self.name, self.mask[start:stop], lambda: weight, grad=self._local_grad,
                          activations=self.activations, generator=self.generator, method=self.method,
                          max_exact_paths=self.max_exact_paths)


def sharded_score(score: Score) -> Score:
    """``score`` for sharded layers: with a row form, each rank scores its rows and the partial
    scores are gathered (then finished on the full mask); otherwise the plain score on the full
    view (which gathers weight or gradient only if it reads them)."""
    rows = score.rows
    if rows is None:  # the plain score (its block form, if any, reads the full-layer input)
        return score if score.blocks is None else dataclasses.replace(score, blocks=None)

    def fn(layer: ScoreInput) -> Tensor:
        if not isinstance(layer, ShardedScoreInput):
            return score.fn(layer)
        part_input = layer.rows_input()
        part = rows.part(part_input)
        layer.notes.update(part_input.notes)
        full = gather_rows(part, layer.mask.shape[0], layer._storage.group)
        return full if rows.finish is None else rows.finish(full, layer)

    return Score(fn, score.needs, on_links=None, rows=rows)


__all__ = ["ShardedScoreInput", "ShardedStorage", "gather_rows", "local", "row_range", "sharded_score"]
