"""One sparsified linear layer as the engine sees it: its storage plus the engine's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..scoring.regrowth import GradFactors, dense_gradient
from ..selection import count
from .storage import LinkStorage, MaskedStorage, Storage


@dataclass
class SparseLayer:
    """A sparse layer: the module's storage (which holds the mask) and the engine's per-layer
    state — scheduled density and link target, ITOP's union of masks, CHT's freeze flag, the
    scores' inputs recorded before an update, and the last update's counts.

    ``grad_record`` is the dense gradient of the batch before an update as recorded: a tensor
    (masked path) or its factors (:class:`~brainsparse.scoring.regrowth.GradFactors`, sparse
    path); :attr:`dense_grad` is it as an ``(out, in)`` tensor."""

    name: str
    storage: Storage
    density: float
    target: int
    ever_active: Tensor
    frozen: bool = False
    base_density: float = 0.0  # the layer's density at the end of any density schedule
    grad_record: Tensor | GradFactors | None = None
    activations: tuple[Tensor, Tensor] | None = None  # (inputs, pre-activations) for CTRE
    last_update: dict[str, Any] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list, repr=False)  # this layer's hook handles (path-specific)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)  # the engine's, if any

    @property
    def dense_grad(self) -> Tensor | None:
        """The dense ``(out, in)`` gradient recorded before an update (formed from its factors on
        first read, and kept in that form)."""
        self.grad_record = dense_gradient(self.grad_record)
        return self.grad_record

    @dense_grad.setter
    def dense_grad(self, value: Tensor | None) -> None:
        self.grad_record = value

    @property
    def module(self) -> nn.Module:
        """The layer's module: an ``nn.Linear`` (masked path) or a ``SparseLinear``."""
        return self.storage.module

    @property
    def mask(self) -> Tensor:
        """The bool ``(out, in)`` mask, read from the module."""
        return self.storage.mask

    @property
    def mask_float(self) -> Tensor:
        """The mask in the weight's dtype (masked path; empty on the sparse path)."""
        if isinstance(self.storage, MaskedStorage):
            return self.storage.mask_float
        return self.mask.new_empty(0)

    @property
    def sparse_kernel(self) -> bool:
        """True when the layer runs on the sparse path (a :class:`SparseLinear`)."""
        return isinstance(self.storage, LinkStorage)

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer updates: the dense weight, or the link values."""
        return self.storage.param

    @property
    def weight(self) -> nn.Parameter:
        """The dense weight (masked path only)."""
        return self.module.weight

    @property
    def links(self) -> int:
        """The number of links."""
        if isinstance(self.storage, LinkStorage):
            return self.storage.module.nnz  # the structure's, without forming the mask
        return count(self.mask)

    def dense_weight(self) -> Tensor:
        """The ``(out, in)`` weight, zero off-mask, on either path (a copy on the sparse path)."""
        return self.storage.dense_weight()

    def write_dense_weight(self, weight: Tensor) -> None:
        """Set the weight at the links from a dense ``(out, in)`` tensor."""
        self.storage.write_dense_weight(weight)

    @torch.no_grad()
    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Install ``mask`` on the module (weights and optimizer state off it are zeroed; on the
        sparse path new links start at 0); a no-op when it equals the current one. ``optimizer``
        defaults to the engine's."""
        mask = mask.to(device=self.mask.device, dtype=torch.bool)
        if not torch.equal(mask, self.mask):
            self.storage.set_mask(mask, optimizer if optimizer is not None else self.optimizer)
