"""Dynamic sparse training of a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Every rank holds a row shard (FSDP2 shards dim 0, in :func:`torch.chunk` pieces) of every
weight, of its boolean ``weight_mask`` buffer (a DTensor sharded like the weight, see
:class:`~brainsparse.distributed.sharded_storage.ShardedStorage`), of its ``ever_active``
record and of its optimizer state. Between topology updates nothing is gathered: gradients and
weights are masked on the local shard.

A topology update (:meth:`ShardedSparseEngine.update`) gathers, per layer, only what the
decision needs, never the weights:

* the boolean masks (and ``ever_active``), for Cannistraci-Hebb scoring, percolation and the
  metrics;
* removal scores computed on each shard (``|W|`` on the links, or MEST's ``|W| + λ|∇W|``;
  relative importance is then formed from the gathered ``|W|`` exactly as in one process): the
  scores' row forms (:class:`brainsparse.registry.RowForm`);
* gradient-regrowth scores ``|∇W|`` off the links (RigL, GraNet), from the shard's gradient,
  which FSDP has already averaged over the ranks.

(A registered score without a row form still works: it gathers the weight or gradient it reads.)
Every rank then runs the single-process selection code on the full tensors with the same
generator state, so every rank makes the same decision, equal to the decision of one process
on the same global batch, and applies it to its own rows: removed links and their optimizer
state become zero, regrown links start at zero with zero optimizer state.

Not supported under FSDP (refused with an error naming the option): the sparse kernel path,
scores from activations (CTRE) and NeuroPrune (head pruning and the preferential-attachment
penalty). The ``swi``/``kaiming`` weight initialisations draw the same numbers as one process:
each rank fills a full temporary of one layer at a time and keeps its rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import topology
from ..engine import DynamicSparseEngine, SparseLayer, sparsify
from ..engine.components import resolve
from ..errors import BrainsparseError
from ..registry import Score, ScoreInput
from .._memory import release_freed_memory
from .sharded_storage import (
    DTensor, ShardedScoreInput, ShardedStorage, gather_rows, local, row_range, sharded_score,
)


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (the model was wrapped with ``fully_shard``)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


class ShardedSparseEngine(DynamicSparseEngine):
    """A :class:`DynamicSparseEngine` for a model sharded with FSDP2 (see the module docs).

    Every layer's storage is a :class:`ShardedStorage`: ``layer.mask`` and ``layer.ever_active``
    are this rank's rows between updates; during :meth:`update`, :meth:`report` and
    :meth:`state_dict` (collectives: every rank calls them) they are the gathered full tensors.
    Build it with :func:`sparsify_sharded`.

    Gradients of the sharded weights are masked by :meth:`mask_gradients`, which a training loop
    calls right after ``backward()`` (before gradient clipping, as one process masks them in
    the backward pass); an optimizer pre-step hook calls it too if the loop did not.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, method: Any, *args: Any,
                 group: dist.ProcessGroup | None = None, **kwargs: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self._grads_masked = False
        kernel = kwargs.get("kernel", "dense")
        if kernel != "dense":
            raise BrainsparseError(f"kernel {kernel!r} is not supported under FSDP (the sparse path changes "
                                   "parameter shapes at every update); allowed: dense")
        if method.sparse:
            components = resolve(method, kernel)
            bad = [what for what, ok in (
                (f"regrowth {method.regrowth!r}", "activations" not in components.needs),
                (f"head pruning {method.head_pruning!r}", not method.head_pruning),
                (f"regularizer {method.regularizer!r}", components.regularizer is None),
            ) if not ok]
            if bad:
                raise BrainsparseError(
                    f"method {method.name!r} ({bad[0]}) is not supported under FSDP: scores from activations, "
                    "head pruning and the preferential-attachment penalty need unsharded weights or activations; "
                    "allowed: static, set, rigl, mest, granet, cht, chts, chtss")
        super().__init__(model, optimizer, method, *args, **kwargs)
        c = self.components
        self.components = dataclasses.replace(
            c, removal=sharded_score(c.removal), prune=sharded_score(c.prune),
            regrowth=None if c.regrowth is None else sharded_score(c.regrowth))

    # ------------------------------------------------------------------ shards
    def rows_of(self, layer: SparseLayer) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of ``layer``'s weight."""
        return row_range(layer.module.out_features, self.rank, self.world_size)

    def _storages(self) -> list[ShardedStorage]:
        return [layer.storage for layer in self.layers.values()]  # type: ignore[misc]

    def _gather(self, layer: SparseLayer, part: Tensor) -> Tensor:
        return gather_rows(part, layer.module.out_features, self.group)

    def _local_rows(self, layer: SparseLayer, full: Tensor) -> Tensor:
        start, stop = layer.storage.rows  # type: ignore[attr-defined]
        return full[start:stop].clone()

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Hold every layer's full mask and ``ever_active`` for the duration (a collective);
        afterwards only this rank's rows stay and freed memory goes back to the system."""
        held = all(s._full is not None for s in self._storages())
        if held:  # nested (e.g. report() during an update)
            yield
            return
        for layer in self.layers.values():
            layer.storage.hold()  # type: ignore[attr-defined]
            layer.ever_active = self._gather(layer, layer.ever_active)
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.ever_active = self._local_rows(layer, layer.ever_active)
                layer.storage.release()  # type: ignore[attr-defined]
            release_freed_memory()

    def full_masks(self) -> dict[str, Tensor]:
        """Every layer's full boolean mask, gathered (the same on every rank; a collective)."""
        return {n: l.storage.full_mask() for n, l in self.layers.items()}  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ set-up
    def _storage_for(self, module: nn.Linear, mask: Tensor) -> ShardedStorage:
        """A :class:`ShardedStorage`: the full initial ``mask`` is held until set-up ends."""
        return ShardedStorage(module, mask, self.rank, self.world_size, self.group)

    def _build(self, layers: Sequence[tuple[str, nn.Linear]], init_data: Any) -> None:
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
                    layer.storage.write_dense_weight(full)
                    del full
            self.apply_masks()
        for layer in self.layers.values():  # keep only this rank's rows
            layer.ever_active = self._local_rows(layer, layer.ever_active)
            layer.storage.release()  # type: ignore[attr-defined]
        release_freed_memory()

    def _attach(self) -> None:
        super()._attach()
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(lambda *_: self.mask_gradients()))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients off-mask on this rank's shard (once per step; later calls do
        nothing). Before an update whose scores need gradients, the shard's dense gradient is kept first."""
        if self._grads_masked:
            return
        keep_dense = "gradient" in self.components.needs and self.is_update_step(self.step_count + 1)
        for layer in self.layers.values():
            kept = layer.storage.mask_grad(keep_dense)  # type: ignore[attr-defined]
            if kept is not None:
                layer.dense_grad = kept
        self._grads_masked = True

    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        self._grads_masked = False
        super()._after_optimizer_step()

    # ------------------------------------------------------------------ scores
    def _score_input(self, layer: SparseLayer, mask: Tensor, score: Score) -> ScoreInput:
        """The full mask; this rank's rows of weight and gradient for the scores' row forms
        (weight and gradient are gathered only for a score without one that reads them)."""
        return ShardedScoreInput(
            layer.name, mask, layer.storage,  # type: ignore[arg-type]
            layer.dense_grad if "gradient" in score.needs else None,
            generator=self.generator, method=self.method, max_exact_paths=self.max_exact_paths,
        )

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """One topology update: full masks gathered, the single-process decision made on every
        rank, each rank's rows applied (see the module docs)."""
        with self.gathered():
            return super().update()

    # ------------------------------------------------------------------ reporting and state
    def report(self) -> dict[str, Any]:
        """As :meth:`DynamicSparseEngine.report`, from the gathered masks (a collective)."""
        with self.gathered():
            return super().report()

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`DynamicSparseEngine.state_dict`, with the full ``ever_active`` (a collective):
        the same format as one process's, so it loads on any number of processes."""
        with self.gathered():
            return super().state_dict()

    def small_state_dict(self) -> dict[str, Any]:
        """Everything of :meth:`state_dict` but ``ever_active`` (no collective); it goes to a
        sharded checkpoint as :meth:`sharded_tensors` (the masks are in the model's state)."""
        state = super().state_dict()  # the local rows: small copies
        state.pop("ever_active")
        return state

    def sharded_tensors(self, mesh: Any) -> dict[str, dict[str, Tensor]]:
        """``{"ever_active": {layer: DTensor}}``: this rank's rows as DTensors sharded like the
        weights (for :mod:`torch.distributed.checkpoint`)."""
        from torch.distributed.tensor import Shard

        out: dict[str, dict[str, Tensor]] = {"ever_active": {}}
        for name, layer in self.layers.items():
            shape = (layer.module.out_features, layer.module.in_features)
            out["ever_active"][name] = DTensor.from_local(
                layer.ever_active.contiguous(), mesh, [Shard(0)], run_check=False, shape=torch.Size(shape),
                stride=(shape[1], 1))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a one-process format state (full ``ever_active``, optionally full
        ``"masks"``) or one whose tensors are this rank's rows or DTensors (a collective)."""
        state = dict(state)
        for key in ("masks", "ever_active"):
            if isinstance(state.get(key), dict):
                state[key] = {n: self._full_rows(n, t) for n, t in state[key].items()}
        with self.gathered():
            super().load_state_dict(state)

    def _full_rows(self, name: str, t: Tensor) -> Tensor:
        """``t`` as the full tensor: a DTensor's full value, or this rank's rows gathered."""
        if isinstance(t, DTensor):
            return t.full_tensor()
        layer = self.layers.get(name)
        if layer is None or t.shape[0] == layer.module.out_features:
            return t
        start, stop = layer.storage.rows  # type: ignore[attr-defined]
        if t.shape[0] != stop - start:
            raise BrainsparseError(f"layer {name}: a saved tensor has {t.shape[0]} rows; expected the layer's "
                                   f"{layer.module.out_features} or this rank's {stop - start}")
        return self._gather(layer, t.to(layer.ever_active.device))


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
    "ShardedSparseEngine", "ShardedStorage", "default_mesh", "gather_rows", "is_sharded", "local", "release_freed_memory",
    "row_range", "shard_model", "sparsify_sharded",
]
