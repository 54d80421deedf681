"""``SparseLinear``: a linear layer whose weight exists only at its links."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import BrainsparseError
from .backend import check_backend
from .sparse_linear import sparse_linear_indices
from .structure import INDEX_FIELDS, LinkStructure, remap

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
    """A linear layer whose weight exists only at its links: ``values`` (K,) plus a structure.

    The structure's index tensors are buffers (``rows``, ``cols``, ``crow``, ``t_perm``,
    ``t_rows``, ``ccol``), so ``.to(device)`` moves them and ``state_dict()`` saves them.
    Optimizer state for ``values`` exists for the links only. ``backend`` (``"auto"``, ``"cpp"``
    or ``"torch"``, an attribute that may be changed) picks the implementation of the products,
    see :mod:`brainsparse.kernels.backend`. :meth:`forward` passes the buffers themselves to
    :func:`~brainsparse.kernels.sparse_linear_indices` (under ``torch.compile`` the registered
    operator ``torch.ops.brainsparse.sparse_linear_forward``).
    """

    def __init__(
        self,
        structure: LinkStructure,
        values: Tensor | None = None,
        bias: bool | Tensor | None = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        out_f, in_f = structure.shape
        self.in_features = int(in_f)
        self.out_features = int(out_f)
        if device is None:
            device = values.device if values is not None else structure.device
        factory = {"device": device, "dtype": dtype if dtype is not None else
                   (values.dtype if values is not None else torch.get_default_dtype())}
        bound = 1.0 / math.sqrt(in_f) if in_f > 0 else 0.0
        if values is None:
            values = torch.empty(structure.nnz, **factory).uniform_(-bound, bound)
        elif values.shape != (structure.nnz,):
            raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {structure.nnz} links")
        self.values = nn.Parameter(values.detach().to(**factory).clone())
        if isinstance(bias, nn.Parameter):
            self.bias = bias
        elif torch.is_tensor(bias):
            self.bias = nn.Parameter(bias.detach().to(**factory).clone())
        elif bias:
            self.bias = nn.Parameter(torch.empty(out_f, **factory).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        for name, tensor in structure.to(device).tensors().items():
            self.register_buffer(name, tensor)
        self._cached: LinkStructure | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor, *, backend: str = "auto") -> SparseLinear:
        """A sparse copy of ``linear`` at the links of ``mask``, sharing its bias Parameter."""
        w = linear.weight
        if tuple(mask.shape) != tuple(w.shape):
            raise BrainsparseError(f"mask shape {tuple(mask.shape)} differs from the weight's {tuple(w.shape)}")
        structure = LinkStructure.from_mask(mask.to(w.device))
        values = structure.gather(w.detach())
        return cls(structure, values, bias=linear.bias if linear.bias is not None else False,
                   device=w.device, dtype=w.dtype, backend=backend)

    # ------------------------------------------------------------------ structure
    @property
    def structure(self) -> LinkStructure:
        """The current link structure (views of the buffers)."""
        c = self._cached
        b = self._buffers
        if (
            c is None or c.rows is not b["rows"] or c.cols is not b["cols"] or c.crow is not b["crow"]
            or c.t_perm is not b["t_perm"] or c.t_rows is not b["t_rows"] or c.ccol is not b["ccol"]
        ):
            c = self._cached = LinkStructure.from_tensors(b, (self.out_features, self.in_features))
        return c

    def kernel_pointers(self) -> tuple[int, ...]:
        """Addresses of the contiguous index buffers ``crow, cols, t_perm, t_rows, ccol`` (for the
        compiled kernels; read afresh at every call, so moved or reshared buffers are seen)."""
        b = self._buffers
        tensors = (b["crow"], b["cols"], b["t_perm"], b["t_rows"], b["ccol"])
        if not all(t.is_contiguous() and t.dtype == torch.int64 for t in tensors):
            raise BrainsparseError("the sparse layer's index buffers must be contiguous int64 tensors")
        return tuple(t.data_ptr() for t in tensors)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def density(self) -> float:
        size = self.out_features * self.in_features
        return self.nnz / size if size else 0.0

    @property
    def mask(self) -> Tensor:
        """The bool mask ``(out, in)`` of the links."""
        return self.structure.to_mask()

    def dense_weight(self) -> Tensor:
        """The dense ``(out, in)`` weight (a detached copy, for inspection)."""
        return self.structure.to_dense(self.values.detach())

    @torch.no_grad()
    def set_structure(
        self,
        structure: LinkStructure | Tensor,
        values: Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Replace the links (a structure or a mask) and their values, in place.

        ``values`` default to :func:`remap` of the current ones (kept links keep their value,
        new links start at 0). The ``values`` Parameter object is kept — only its data changes
        (in place when the link count is unchanged) — so an optimizer holding it stays valid;
        pass ``optimizer`` to remap its per-link state (momentum, Adam moments) the same way.
        When the link count changes, call this between steps: an autograd graph built before
        still expects the old shape for ``values``.
        """
        if not isinstance(structure, LinkStructure):
            structure = LinkStructure.from_mask(structure)
        if tuple(structure.shape) != (self.out_features, self.in_features):
            raise BrainsparseError(
                f"structure shape {structure.shape} differs from the layer's {(self.out_features, self.in_features)}"
            )
        old = self.structure
        device = self.values.device
        structure = structure.to(device)
        if values is None:
            values = remap(old, structure, self.values.detach())
        elif values.shape != (structure.nnz,):
            raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {structure.nnz} links")
        if optimizer is not None:
            state = optimizer.state.get(self.values)
            if state:
                for key, value in list(state.items()):
                    if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == old.nnz:
                        state[key] = remap(old, structure, value)
        values = values.to(device=device, dtype=self.values.dtype)
        if values.numel() == self.values.numel():
            self.values.copy_(values)
        else:
            self.values.data = values.clone()
            self.values.grad = None
        for name, tensor in structure.tensors().items():
            self._buffers[name] = tensor
        self._cached = structure

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # a checkpoint with a different link count: resize the buffers and values to receive it
        incoming = state_dict.get(prefix + "rows")
        if torch.is_tensor(incoming) and incoming.numel() != self.nnz:
            k = incoming.numel()
            for name in INDEX_FIELDS:
                src = state_dict.get(prefix + name)
                if torch.is_tensor(src):
                    self._buffers[name] = torch.empty_like(src, device=self.rows.device)
            with torch.no_grad():
                self.values.data = self.values.new_empty(k)
                self.values.grad = None
            self._cached = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._cached = None  # re-validate the loaded structure on next use

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        return sparse_linear_indices(x, self.values, self.bias, self.crow, self.cols, self.rows, self.t_perm,
                                     self.t_rows, self.ccol, backend=getattr(self, "backend", "auto"))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, links={self.nnz}, "
            f"density={self.density:.4g}, bias={self.bias is not None}"
            + (f", backend={self.backend!r}" if self.backend != "auto" else "")
        )
