"""Dynamic sparse training of a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Every rank holds a row shard (FSDP2 shards dim 0, in :func:`torch.chunk` pieces) of every
weight, of its boolean mask, of its ``ever_active`` record and of its optimizer state. Between
topology updates nothing is gathered: gradients and weights are masked on the local shard.

A topology update (:meth:`ShardedSparseEngine.update`) gathers, per layer, only what the
decision needs, never the weights:

* the boolean masks (and ``ever_active``), for Cannistraci-Hebb scoring, percolation and the
  metrics;
* removal scores computed on each shard (``|W|`` on the links, or MEST's ``|W| + λ|∇W|``;
  relative importance is then formed from the gathered ``|W|`` exactly as in one process);
* gradient-regrowth scores ``|∇W|`` off the links (RigL, GraNet), from the shard's gradient,
  which FSDP has already averaged over the ranks.

Every rank then runs the single-process selection code on the full tensors with the same
generator state, so every rank makes the same decision, equal to the decision of one process
on the same global batch, and applies it to its own rows: removed links and their optimizer
state become zero, regrown links start at zero with zero optimizer state.

Not supported under FSDP (refused with an error naming the option): the sparse kernel path,
CTRE's activation-based regrowth and NeuroPrune (head pruning and the preferential-attachment
penalty). The ``swi``/``kaiming`` weight initialisations draw the same numbers as one process:
each rank fills a full temporary of one layer at a time and keeps its rows.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import topology
from ..engine import DynamicSparseEngine, SparseLayer, sparsify
from ..errors import BrainsparseError
from ..scoring.regrowth import gradient_magnitude
from ..scoring.removal import mest, relative_importance, weight_magnitude

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._tensor import DTensor  # type: ignore[no-redef]


def release_freed_memory() -> None:
    """Hand memory freed to the C allocator back to the system (glibc ``malloc_trim``; a no-op
    elsewhere). Used after the unsharded model and the full masks of set-up or an update are
    freed: glibc otherwise keeps such blocks in its heap, and the process's resident memory
    stays at its high-water mark."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view sharing its storage), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (the model was wrapped with ``fully_shard``)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


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


class ShardedSparseEngine(DynamicSparseEngine):
    """A :class:`DynamicSparseEngine` for a model sharded with FSDP2 (see the module docs).

    ``layer.mask`` and ``layer.ever_active`` hold this rank's rows between updates
    (``layer.mask_float`` is the same bool tensor: multiplying by it zeroes as well, and no float
    copy is kept); during :meth:`update`, :meth:`report` and :meth:`state_dict` they are the gathered
    full tensors. Build it with :func:`sparsify_sharded`.

    Gradients of the sharded weights are masked by :meth:`mask_gradients`, which a training loop
    calls right after ``backward()`` (before gradient clipping, as one process masks them in
    the backward pass); an optimizer pre-step hook calls it too if the loop did not.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, method: Any, *args: Any,
                 group: dist.ProcessGroup | None = None, **kwargs: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self._full = False  # whether layer masks currently hold the full (gathered) tensors
        self._grads_masked = False
        if kwargs.get("kernel", "dense") != "dense":
            raise BrainsparseError(f"kernel {kwargs.get('kernel')!r} is not supported under FSDP (the sparse path changes "
                                   "parameter shapes at every update); allowed: dense")
        if method.sparse:
            bad = [(what, value) for what, value, ok in (
                ("regrowth", method.regrowth, method.regrowth != "cosine"),
                ("head pruning", method.head_pruning, not method.head_pruning),
                ("regularizer", method.regularizer, method.regularizer == "none"),
            ) if not ok]
            if bad:
                what, value = bad[0]
                raise BrainsparseError(
                    f"method {method.name!r} ({what} {value!r}) is not supported under FSDP: scores from activations, "
                    "head pruning and the preferential-attachment penalty need unsharded weights or activations; "
                    "allowed: static, set, rigl, mest, granet, cht, chts, chtss")
        super().__init__(model, optimizer, method, *args, **kwargs)

    # ------------------------------------------------------------------ shards
    def rows_of(self, layer: SparseLayer) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of ``layer``'s weight."""
        return row_range(layer.module.out_features, self.rank, self.world_size)

    def _local_rows(self, layer: SparseLayer) -> int:
        start, stop = self.rows_of(layer)
        return stop - start

    def _slice(self, layer: SparseLayer, full: Tensor) -> Tensor:
        start, stop = self.rows_of(layer)
        return full[start:stop].clone()

    def _gather(self, layer: SparseLayer, part: Tensor) -> Tensor:
        return gather_rows(part, layer.module.out_features, self.group)

    def _local_mask(self, layer: SparseLayer) -> Tensor:
        return self._slice(layer, layer.mask) if self._full else layer.mask

    def _localize(self) -> None:
        """Full masks → this rank's rows (and the float copy of the local mask)."""
        for layer in self.layers.values():
            layer.mask = self._slice(layer, layer.mask)
            layer.ever_active = self._slice(layer, layer.ever_active)
            layer.mask_float = layer.mask  # the bool mask multiplies as well: no float copy kept
        self._full = False

    def _gather_all(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Install the full masks and ever_active on every layer; returns the local ones."""
        saved = {n: (l.mask, l.ever_active) for n, l in self.layers.items()}
        for layer in self.layers.values():
            layer.mask = self._gather(layer, layer.mask)
            layer.ever_active = self._gather(layer, layer.ever_active)
        self._full = True
        return saved

    def _restore(self, saved: dict[str, tuple[Tensor, Tensor]]) -> None:
        for name, (mask, ever) in saved.items():
            self.layers[name].mask, self.layers[name].ever_active = mask, ever
        self._full = False

    def full_masks(self) -> dict[str, Tensor]:
        """Every layer's full boolean mask, gathered (the same on every rank)."""
        return {n: self._gather(l, l.mask) for n, l in self.layers.items()}

    # ------------------------------------------------------------------ set-up
    def _build(self, layers: Sequence[tuple[str, nn.Linear]], init_data: Tensor | None) -> None:
        for name, module in layers:
            rows = local(module.weight).shape[0]
            start, stop = row_range(module.out_features, self.rank, self.world_size)
            if isinstance(module.weight, DTensor) and rows != stop - start:
                raise BrainsparseError(
                    f"layer {name}: its local shard has {rows} rows, expected {stop - start} (FSDP2 Shard(0) over "
                    f"{self.world_size} ranks); shard the model with fully_shard on one mesh dimension")
        self._full = True
        method = self.method
        self.method = dataclasses.replace(method, weight_init="keep")
        try:
            super()._build(layers, init_data)  # full masks from the shared generator, as in one process
        finally:
            self.method = method
        if method.weight_init in ("swi", "kaiming"):
            # the same draws as one process: each rank fills a full temporary, one layer at a
            # time, and keeps its rows (initialisation only; updates never form full weights)
            with torch.no_grad():
                for layer in self.layers.values():
                    w = layer.weight
                    full = torch.zeros(w.shape, dtype=w.dtype, device=local(w).device)
                    if method.weight_init == "swi":
                        topology.sparse_weight_init(full, layer.mask, layer.density, generator=self.generator)
                    else:
                        topology.kaiming_init(full, layer.mask, generator=self.generator)
                    start, stop = self.rows_of(layer)
                    local(w).copy_(full[start:stop])
                    del full
            self.apply_masks()
        self._localize()
        release_freed_memory()

    def _attach_layer(self, layer: SparseLayer) -> None:
        # FSDP2 writes the sharded gradient after its reduce-scatter, so a tensor hook on the
        # sharded parameter never runs: gradients are masked by mask_gradients instead
        for h in layer.hooks:
            h.remove()
        layer.hooks.clear()

    def _attach(self) -> None:
        super()._attach()
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(lambda *_: self.mask_gradients()))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients off-mask on this rank's shard (once per step; later calls do
        nothing). Before a RigL/GraNet/MEST update, the dense gradient of the shard is kept first."""
        if self._grads_masked:
            return
        keep_dense = self._needs_dense_grad() and self.is_update_step(self.step_count + 1)
        for layer in self.layers.values():
            grad = layer.weight.grad
            if grad is None:
                continue
            g = local(grad)
            if keep_dense:
                layer.dense_grad = g.detach().clone()
            g.mul_(layer.mask_float)
        self._grads_masked = True

    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        self._grads_masked = False
        self._mask_weights()

    @torch.no_grad()
    def _mask_weights(self) -> None:
        for layer in self.layers.values():
            local(layer.weight).mul_(self._local_mask(layer))

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero weights, gradients and optimizer state off-mask, on this rank's shard."""
        for layer in self.layers.values():
            mask = self._local_mask(layer)
            w = layer.weight
            local(w).mul_(mask)
            if w.grad is not None:
                local(w.grad).mul_(mask)
            if self.optimizer is not None:
                for value in self.optimizer.state.get(w, {}).values():
                    if torch.is_tensor(value) and value.shape == w.shape:
                        local(value).mul_(mask)

    # ------------------------------------------------------------------ scores
    def _scores_for_removal(self, layer: SparseLayer, mask: Tensor, kind: str) -> Tensor:
        """Removal scores of the full layer: each rank scores its rows, the scores are gathered
        (relative importance is formed from the gathered ``|W|``, exactly as in one process)."""
        start, stop = self.rows_of(layer)
        part_mask = mask[start:stop]
        w = local(layer.weight).detach()
        if kind == "mest":
            grad = layer.dense_grad
            part = mest(w, grad, part_mask)
        elif kind in ("magnitude", "relative_importance"):
            part = weight_magnitude(w, part_mask)
        else:
            raise BrainsparseError(f"removal score {kind!r} is not supported under FSDP; allowed: magnitude, "
                                   "relative_importance, mest")
        full = self._gather(layer, part)
        return relative_importance(full, mask) if kind == "relative_importance" else full

    def _regrowth_scores(self, layer: SparseLayer, kept: Tensor) -> Tensor:
        if self.method.regrowth == "gradient":
            if layer.dense_grad is None:
                raise BrainsparseError(
                    f"layer {layer.name}: gradient regrowth needs a backward pass (and mask_gradients) before the update step")
            start, stop = self.rows_of(layer)
            return self._gather(layer, gradient_magnitude(layer.dense_grad, kept[start:stop]))
        return super()._regrowth_scores(layer, kept)  # CH scores from the full bool mask; random scores

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """One topology update: full masks gathered, the single-process decision made on every
        rank, each rank's rows applied (see the module docs)."""
        self._gather_all()
        try:
            return super().update()
        finally:
            self._localize()
            release_freed_memory()

    @torch.no_grad()
    def _set_mask(self, layer: SparseLayer, mask: Tensor, new_links: Tensor | None) -> None:
        """Install the full ``mask`` (kept full until the update ends); new links of this rank's
        rows start at weight 0 with zero optimizer state."""
        start, stop = self.rows_of(layer)
        fresh = (mask & ~layer.mask)[start:stop]  # layer.mask is still the full mask before the update
        layer.mask = mask.bool()
        part = mask[start:stop]
        layer.mask_float = part
        w = layer.weight
        local(w).masked_fill_(fresh, 0.0)
        local(w).mul_(part)
        if self.optimizer is not None:
            for value in self.optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    local(value).masked_fill_(fresh, 0.0)
                    local(value).mul_(part)

    # ------------------------------------------------------------------ reporting and state
    def report(self) -> dict[str, Any]:
        """As :meth:`DynamicSparseEngine.report`, from the gathered masks (a collective)."""
        saved = self._gather_all()
        try:
            return super().report()
        finally:
            self._restore(saved)

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`DynamicSparseEngine.state_dict`, with the full masks (a collective): the
        same format as one process's, so it loads on any number of processes."""
        saved = self._gather_all()
        try:
            return super().state_dict()
        finally:
            self._restore(saved)

    def small_state_dict(self) -> dict[str, Any]:
        """Everything of :meth:`state_dict` but the masks and ``ever_active`` (no collective);
        the masks go to a sharded checkpoint as :meth:`sharded_tensors`."""
        state = super().state_dict()  # the local rows: small copies
        state.pop("masks"), state.pop("ever_active")
        return state

    def sharded_tensors(self, mesh: Any) -> dict[str, dict[str, Tensor]]:
        """``{"masks": {layer: DTensor}, "ever_active": {...}}``: this rank's rows as DTensors
        sharded like the weights (for :mod:`torch.distributed.checkpoint`)."""
        from torch.distributed.tensor import Shard

        out: dict[str, dict[str, Tensor]] = {"masks": {}, "ever_active": {}}
        for name, layer in self.layers.items():
            shape = (layer.module.out_features, layer.module.in_features)
            for key, part in (("masks", layer.mask), ("ever_active", layer.ever_active)):
                out[key][name] = DTensor.from_local(part.contiguous(), mesh, [Shard(0)], run_check=False,
                                                    shape=torch.Size(shape), stride=(shape[1], 1))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a one-process format state (full masks) or one whose masks are this
        rank's rows (as :meth:`sharded_tensors` loads them)."""
        masks = {n: local(m) for n, m in state["masks"].items()}
        full = any(n in self.layers and m.shape[0] != self._local_rows(self.layers[n]) for n, m in masks.items())
        state = {**state, "masks": masks,
                 "ever_active": {n: local(m) for n, m in state["ever_active"].items()}}
        self._full = full
        super().load_state_dict(state)
        if full:
            self._localize()
        else:
            for layer in self.layers.values():
                layer.mask_float = layer.mask
        self._full = False


def shard_model(model: nn.Module, mesh: Any = None, blocks: Sequence[nn.Module] | None = None) -> nn.Module:
    """Wrap ``model`` with FSDP2: ``fully_shard`` on every unit of ``blocks`` (default: the
    entries of ``model.layers`` when it is a ModuleList, plus the model's own embedding children
    and ``lm_head`` unless their weights are tied), then on the model itself. Each unit is
    gathered only while it runs, so the large vocabulary matrices are not held unsharded for a
    whole step. ``mesh``: a 1-D device mesh (default: all ranks, on CPU or the current CUDA device)."""
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise BrainsparseError("FSDP needs a process group: run under torchrun (e.g. torchrun --nproc-per-node 2 "
                               "-m brainsparse train --task lm --parallel fsdp ...)")
    if mesh is None:
        mesh = default_mesh()
    if blocks is None:
        layers = getattr(model, "layers", None)
        blocks = list(layers) if isinstance(layers, nn.ModuleList) else []
        ends = [m for n, m in model.named_children() if isinstance(m, nn.Embedding) or n == "lm_head"]
        weights = [id(getattr(m, "weight", None)) for m in ends]
        if len(set(weights)) == len(weights):  # tied weights stay with the root
            blocks += ends
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    release_freed_memory()  # the unsharded weights are gone
    return model


def default_mesh() -> Any:
    """A 1-D device mesh over all ranks (CPU with gloo, CUDA with NCCL)."""
    from torch.distributed.device_mesh import init_device_mesh

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device, (dist.get_world_size(),))


def sparsify_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                     sparsify_fn: Any = None, group: dist.ProcessGroup | None = None,
                     **options: Any) -> ShardedSparseEngine:
    """:func:`brainsparse.sparsify` (or ``sparsify_fn``, e.g.
    :func:`brainsparse.train.language_model.sparsify_llama`) for a model already wrapped with
    ``fully_shard``; ``optimizer`` must hold its sharded parameters. ``options`` are those of
    :func:`brainsparse.sparsify`; ``kernel`` must be ``"dense"``.

    The masks are drawn from the engine's generator on the full shapes, exactly as in one
    process, and each rank keeps its rows.
    """
    if not is_sharded(model):
        raise BrainsparseError("sparsify_sharded needs a model wrapped with torch.distributed.fsdp.fully_shard "
                               "(its parameters are DTensors); for an unsharded model use brainsparse.sparsify")
    kernel = options.pop("kernel", "dense")
    if kernel != "dense":
        raise BrainsparseError(f"kernel {kernel!r} is not supported under FSDP; allowed: dense")

    fn = sparsify_fn or sparsify
    return fn(model, optimizer, kernel="dense", engine_class=functools.partial(ShardedSparseEngine, group=group),
              **options)


__all__ = [
    "ShardedSparseEngine", "default_mesh", "gather_rows", "is_sharded", "local", "release_freed_memory", "row_range",
    "shard_model",
    "sparsify_sharded",
]
