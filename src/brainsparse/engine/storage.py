"""How a sparse layer stores its links: two small classes behind one interface.

- :class:`MaskedStorage` (the masked-dense path): an ``nn.Linear`` whose dense weight is zero off
  the links, and a persistent bool buffer ``weight_mask`` on the module (as ``torch.nn.utils.prune``
  keeps it), so ``model.state_dict()`` carries the topology.
- :class:`LinkStorage` (the sparse path): a :class:`~brainsparse.kernels.SparseLinear` whose
  ``values`` hold the link weights and whose index buffers hold the link structure.

Either way the module is the single source of truth for the mask; the storage only caches
what it derives from it (a float copy, a bool mask) and notices when a ``load_state_dict``
changed the module. :func:`switch_path` moves a layer from one storage to the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..kernels import SparseLinear
from ..kernels.chain import idle_when
from ..registry import Regularizer
from ..scoring.regrowth import GradFactors, factored_gradient
from ..selection import row_blocks

#: the name of the bool mask buffer on a masked-path ``nn.Linear``
MASK_BUFFER = "weight_mask"

GradSink = Callable[[Tensor | GradFactors], None]


def mul_by_mask_(t: Tensor, mask: Tensor) -> None:
    """``t *= mask`` in place; on the CPU a block of rows at a time (a float tensor times a bool
    mask first converts the whole mask to the float dtype: a weight-sized temporary)."""
    if t.device.type != "cpu" or t.dim() != 2 or t.shape != mask.shape:
        t.mul_(mask)
        return
    for start, stop in row_blocks(*t.shape):
        t[start:stop].mul_(mask[start:stop])


def swap_param(optimizer: torch.optim.Optimizer | None, old: nn.Parameter, new: nn.Parameter,
               convert: Callable[[Tensor], Tensor] | None = None) -> None:
    """Make ``optimizer`` update ``new`` instead of ``old``, keeping ``old``'s state (each state
    tensor shaped like ``old`` passed through ``convert``, if given)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        if convert is not None:
            state = {k: convert(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()}
        optimizer.state[new] = state


class LayerStorage(Protocol):
    """The interface the engine uses for a layer's links, whatever holds them."""

    path: str  # "dense" (masked) or "sparse" (links only): engine.state_dict()["kernels"]
    module: nn.Module

    @property
    def mask(self) -> Tensor:
        """The bool ``(out, in)`` mask, read from the module."""
        ...

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer updates."""
        ...

    def dense_weight(self) -> Tensor:
        """The ``(out, in)`` weight, zero off-mask (detached)."""
        ...

    def write_dense_weight(self, weight: Tensor) -> None:
        """Set the weight at the links from a dense ``(out, in)`` tensor."""
        ...

    def link_values(self) -> tuple[Tensor, Tensor] | None:
        """``(values, flat row-major indices)`` of the links, where stored that way."""
        ...

    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None,
                 fresh: Tensor | None = None) -> None:
        """Install an update's mask (kept links keep weight and state, new ones start at 0)."""
        ...

    def load_mask(self, mask: Tensor) -> None:
        """Take ``mask`` as it is (a restore)."""
        ...

    def apply_mask(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero weight, gradient and optimizer state off-mask."""
        ...

    def after_step(self) -> None:
        """Re-zero what an optimizer step may have moved off-mask."""
        ...

    def regularize(self, regularizer: Regularizer, step_size: float) -> None:
        """One proximal step of ``regularizer`` on the weights."""
        ...

    def attach_grad(self, capture: Callable[[], bool] | None, sink: GradSink) -> list[Any]:
        """Install the gradient hooks (masking; dense-gradient capture while ``capture()``)."""
        ...


class MaskedStorage:
    """The masked-dense path: dense weight × the module's ``weight_mask`` buffer."""

    path = "dense"

    def __init__(self, module: nn.Linear, mask: Tensor | None = None) -> None:
        self.module = module
        if mask is not None:
            mask = mask.to(device=module.weight.device, dtype=torch.bool)
            if MASK_BUFFER in module._buffers and module._buffers[MASK_BUFFER] is not None:
                module._buffers[MASK_BUFFER].copy_(mask)
            else:
                module.register_buffer(MASK_BUFFER, mask)
        elif getattr(module, MASK_BUFFER, None) is None:
            raise ValueError(f"the module has no {MASK_BUFFER!r} buffer and no mask was given")
        self._float: Tensor | None = None
        self._float_of: tuple[Tensor, int] | None = None

    @property
    def mask(self) -> Tensor:
        """The bool ``(out, in)`` mask: the module's buffer itself."""
        return self.module._buffers[MASK_BUFFER]

    @property
    def mask_float(self) -> Tensor:
        """The mask in the weight's dtype, re-made whenever the buffer changed (a new tensor, an
        in-place write such as ``load_state_dict``, another dtype or device)."""
        mask = self.mask
        weight = self.module.weight
        cached = self._float
        if (cached is None or self._float_of is None or self._float_of[0] is not mask
                or self._float_of[1] != mask._version or cached.dtype != weight.dtype or cached.device != weight.device):
            cached = self._float = mask.to(weight.dtype)
            self._float_of = (mask, mask._version)
        return cached

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer updates: the dense weight."""
        return self.module.weight

    def dense_weight(self) -> Tensor:
        """The ``(out, in)`` weight, zero off-mask (the live tensor, detached)."""
        return self.module.weight.detach()

    @torch.no_grad()
    def write_dense_weight(self, weight: Tensor) -> None:
        """Set the weight from a dense ``(out, in)`` tensor."""
        self.module.weight.copy_(weight)

    def link_values(self) -> tuple[Tensor, Tensor] | None:
        """``(values, flat indices)`` of the links on the sparse path; ``None`` here."""
        return None

    @torch.no_grad()
    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None,
                 fresh: Tensor | None = None) -> None:
        """Install ``mask``; the links of ``fresh`` start at weight 0 with zero optimizer state;
        weight, gradient and optimizer state are zeroed off the new mask."""
        self.mask.copy_(mask)
        if fresh is not None:
            w = self.module.weight
            w.masked_fill_(fresh, 0.0)  # new links start at weight 0
            if optimizer is not None:
                for value in optimizer.state.get(w, {}).values():
                    if torch.is_tensor(value) and value.shape == w.shape:
                        value.masked_fill_(fresh, 0.0)  # and with fresh optimizer state
        self.apply_mask(optimizer)

    @torch.no_grad()
    def load_mask(self, mask: Tensor) -> None:
        """Take ``mask`` as it is (a restore: weights follow from their own checkpoint)."""
        self.mask.copy_(mask)

    @torch.no_grad()
    def apply_mask(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero weight, gradient and optimizer state off-mask."""
        mask = self.mask
        w = self.module.weight
        mul_by_mask_(w, mask)
        if w.grad is not None:
            mul_by_mask_(w.grad, mask)
        if optimizer is not None:
            for value in optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    mul_by_mask_(value, mask)

    @torch.no_grad()
    def after_step(self) -> None:
        """After an optimizer step: re-zero the weight off-mask (gradients are masked by the hook,
        so SGD and Adam state stays zero there; only an optimizer moving a zero weight needs this)."""
        self.module.weight.mul_(self.mask_float)

    @torch.no_grad()
    def regularize(self, regularizer: Regularizer, step_size: float) -> None:
        """One proximal step of ``regularizer`` on the dense weight."""
        self.write_dense_weight(regularizer.dense(self.dense_weight(), self.mask, step_size))

    def attach_grad(self, capture: Callable[[], bool] | None, sink: GradSink) -> list[Any]:
        """A gradient hook on the weight: masks every gradient; while ``capture()`` is true it
        first hands the dense gradient to ``sink`` (RigL/MEST scores). Returns the handles."""

        def hook(grad: Tensor) -> Tensor:
            if capture is not None and capture():
                sink(grad.detach().clone())
            return grad * self.mask_float

        return [self.module.weight.register_hook(hook)]


class LinkStorage:
    """The sparse path: a :class:`SparseLinear` holding only the links."""

    path = "sparse"

    def __init__(self, module: SparseLinear) -> None:
        self.module = module
        self._mask: Tensor | None = None
        self._mask_of: Any = None

    @property
    def mask(self) -> Tensor:
        """The bool ``(out, in)`` mask of the links (cached per link structure)."""
        structure = self.module.structure
        if self._mask is None or self._mask_of is not structure:
            self._mask = structure.to_mask()
            self._mask_of = structure
        return self._mask

    def drop_cached_mask(self) -> None:
        """Forget the cached bool mask (``out × in`` bytes; made again on the next read). The
        engine calls this after a topology update: between updates nothing reads it."""
        self._mask = None
        self._mask_of = None

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer updates: the link values."""
        return self.module.values

    def dense_weight(self) -> Tensor:
        """The ``(out, in)`` weight, zero off the links (a copy)."""
        return self.module.dense_weight()

    @torch.no_grad()
    def write_dense_weight(self, weight: Tensor) -> None:
        """Set the link values from a dense ``(out, in)`` tensor."""
        self.module.values.copy_(self.module.structure.gather(weight))

    def link_values(self) -> tuple[Tensor, Tensor] | None:
        """``(values, flat row-major indices)`` of the links."""
        return self.module.values.detach(), self.module.structure.keys()

    @torch.no_grad()
    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None,
                 fresh: Tensor | None = None) -> None:
        """Install ``mask``: kept links keep value and optimizer state, new links start at 0,
        removed ones vanish. ``fresh`` is implied (the links not in the old structure)."""
        old = self.module.values
        old_count = old.numel()
        self.module.set_structure(mask, optimizer=optimizer)
        if old.numel() != old_count:
            # a new link count (density schedules): a fresh Parameter, since autograd caches a
            # leaf's shape; the optimizer follows it with its remapped state
            new = nn.Parameter(old.detach().clone())
            swap_param(optimizer, old, new)
            self.module.values = new

    @torch.no_grad()
    def load_mask(self, mask: Tensor) -> None:
        """Take ``mask`` as the link structure (a restore: the values, resized in place, follow
        from their own checkpoint; the Parameter object stays)."""
        if not torch.equal(mask, self.mask):
            self.module.set_structure(mask)

    def apply_mask(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Nothing to do: the sparse path has no off-mask entries."""

    def after_step(self) -> None:
        """Nothing to do: the sparse path has no off-mask entries."""

    @torch.no_grad()
    def regularize(self, regularizer: Regularizer, step_size: float) -> None:
        """One proximal step of ``regularizer`` on the link values (no dense temporaries)."""
        s = self.module.structure
        self.module.values.copy_(regularizer.links(self.module.values, s.rows, s.cols, s.shape, step_size))

    def attach_grad(self, capture: Callable[[], bool] | None, sink: GradSink) -> list[Any]:
        """With ``capture``: a forward hook that, while ``capture()`` is true, hands the dense
        gradient ∂L/∂W = gyᵀ x of the batch to ``sink`` — as its factors ``gy`` and ``x`` when
        they are the smaller (:func:`~brainsparse.scoring.regrowth.factored_gradient`). Returns
        the handles."""
        if capture is None:
            return []

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not (module.training and output.requires_grad and capture()):
                return
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            output.register_hook(lambda gy: sink(factored_gradient(gy.detach(), x)))

        # idle on every other batch: a fused chain of sparse layers may run past it then
        idle_when(hook, lambda module: not (module.training and torch.is_grad_enabled() and capture()))
        return [self.module.register_forward_hook(hook)]


Storage = MaskedStorage | LinkStorage


@torch.no_grad()
def switch_path(storage: Storage, optimizer: torch.optim.Optimizer | None,
                replace: Callable[[nn.Module], None]) -> Storage:
    """Move a layer to the other path; ``replace(module)`` puts the new module into the model.

    Masked → sparse: a :class:`SparseLinear` holding the link values (bias Parameter shared),
    per-link optimizer state gathered from the dense state. Sparse → masked: a plain
    ``nn.Linear`` whose weight holds the links (zero off-mask) and a ``weight_mask`` buffer,
    optimizer state scattered back to dense tensors (zero off-mask). Returns the new storage.
    """
    if isinstance(storage, MaskedStorage):
        old = storage.module.weight
        module = SparseLinear.from_linear(storage.module, storage.mask)
        replace(module)
        swap_param(optimizer, old, module.values, convert=module.structure.gather)
        return LinkStorage(module)
    sparse = storage.module
    old = sparse.values
    structure = sparse.structure
    mask = storage.mask
    linear = nn.Linear(sparse.in_features, sparse.out_features, bias=sparse.bias is not None,
                       device="meta", dtype=old.dtype)
    linear.weight = nn.Parameter(structure.to_dense(old.detach()), requires_grad=old.requires_grad)
    if sparse.bias is not None:
        linear.bias = sparse.bias
    linear.register_buffer(MASK_BUFFER, mask.to(old.device))
    replace(linear)
    swap_param(optimizer, old, linear.weight, convert=structure.to_dense)
    return MaskedStorage(linear)


__all__ = ["MASK_BUFFER", "LayerStorage", "LinkStorage", "MaskedStorage", "Storage", "swap_param", "switch_path"]
