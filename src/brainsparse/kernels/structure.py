"""The link structure of a sparse linear layer: which (row, column) pairs exist, in kernel order.

A :class:`LinkStructure` is the index half of a sparse weight matrix ``W`` of shape
``(out, in)``; the value half is a plain tensor ``values`` of length ``nnz`` (one value per
link, in the same order). Links are ordered row-major (by row, then column) — the CSR order —
and the structure also carries the column-major (CSC) view needed by the input gradient:

* ``rows``, ``cols`` (int64, ``nnz``): the link coordinates, row-major;
* ``crow`` (int64, ``out + 1``): CSR row pointers, links of row ``r`` are ``crow[r]:crow[r+1]``;
* ``t_perm`` (int64, ``nnz``): the permutation that orders links column-major
  (``cols[t_perm]`` is sorted, rows ascending within a column);
* ``t_rows`` (int64, ``nnz``): ``rows[t_perm]``, the CSC row indices;
* ``ccol`` (int64, ``in + 1``): CSC column pointers into ``t_perm``.

Building one from a mask is O(K log K) and fully vectorised, so a topology update simply
rebuilds it; :func:`remap` carries per-link tensors (weights, optimizer state) across.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import BrainsparseError

#: names of the index tensors, in the order they are stored (also the buffer names of SparseLinear)
INDEX_FIELDS = ("rows", "cols", "crow", "t_perm", "t_rows", "ccol")


@dataclass(frozen=True, eq=False)
class LinkStructure:
    """Row-major (CSR) and column-major (CSC) index of the links of an ``(out, in)`` matrix."""

    rows: Tensor
    cols: Tensor
    crow: Tensor
    t_perm: Tensor
    t_rows: Tensor
    ccol: Tensor
    shape: tuple[int, int]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mask(cls, mask: Tensor) -> LinkStructure:
        """The structure of the ``True`` entries of a 2-D mask (any dtype; nonzero = link)."""
        if not torch.is_tensor(mask) or mask.dim() != 2:
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise BrainsparseError(f"mask must be a 2-D tensor (out, in), got {shape}")
        out_f, in_f = (int(s) for s in mask.shape)
        idx = (mask != 0).nonzero()  # lexicographic: row-major
        return cls.from_indices(idx[:, 0], idx[:, 1], (out_f, in_f), sorted=True)

    @classmethod
    def from_indices(
        cls, rows: Tensor, cols: Tensor, shape: tuple[int, int], *, sorted: bool = False
    ) -> LinkStructure:
        """The structure of the links ``(rows[i], cols[i])`` (unique pairs, any order)."""
        out_f, in_f = (int(s) for s in shape)
        if out_f < 0 or in_f < 0:
            raise BrainsparseError(f"shape {shape} is invalid; allowed: two non-negative sizes")
        rows = rows.reshape(-1).to(torch.int64)
        cols = cols.reshape(-1).to(torch.int64)
        if rows.numel() != cols.numel():
            raise BrainsparseError(f"rows ({rows.numel()}) and cols ({cols.numel()}) differ in length")
        if not sorted and rows.numel():
            order = torch.argsort(rows * in_f + cols)
            rows, cols = rows[order], cols[order]
        rows, cols = rows.contiguous(), cols.contiguous()
        crow = _pointers(rows, out_f)
        # stable sort by column keeps rows ascending inside each column
        t_perm = torch.sort(cols, stable=True).indices if cols.numel() else cols.clone()
        t_rows = rows[t_perm]
        ccol = _pointers(cols[t_perm], in_f)
        return cls(rows, cols, crow, t_perm, t_rows, ccol, (out_f, in_f))

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], shape: tuple[int, int]) -> LinkStructure:
        """Re-assemble a structure from its index tensors (as stored by ``SparseLinear``)."""
        return cls(*(tensors[name] for name in INDEX_FIELDS), shape=(int(shape[0]), int(shape[1])))

    # ------------------------------------------------------------------ views
    @property
    def nnz(self) -> int:
        """Number of links ``K``."""
        return int(self.rows.numel())

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def tensors(self) -> dict[str, Tensor]:
        """The index tensors by name (``INDEX_FIELDS`` order)."""
        return {name: getattr(self, name) for name in INDEX_FIELDS}

    def to(self, device: torch.device | str) -> LinkStructure:
        """The same structure with its index tensors on ``device``."""
        moved = {k: v.to(device) for k, v in self.tensors().items()}
        return LinkStructure(**moved, shape=self.shape)

    def keys(self) -> Tensor:
        """Flat link keys ``row * in + col`` (sorted ascending, since links are row-major)."""
        return self.rows * self.shape[1] + self.cols

    def to_mask(self) -> Tensor:
        """The bool mask ``(out, in)`` of the links."""
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        mask[self.rows, self.cols] = True
        return mask

    def to_dense(self, values: Tensor) -> Tensor:
        """The dense ``(out, in)`` matrix with ``values`` at the links (for inspection only)."""
        dense = torch.zeros(self.shape, dtype=values.dtype, device=values.device)
        dense[self.rows, self.cols] = values
        return dense

    def gather(self, dense: Tensor) -> Tensor:
        """The entries of a dense ``(out, in)`` tensor at the links, in link order."""
        return dense[self.rows, self.cols]

    def __repr__(self) -> str:
        return f"LinkStructure(shape={self.shape}, nnz={self.nnz}, density={self.density:.4g})"


def _pointers(sorted_index: Tensor, size: int) -> Tensor:
    """Compressed pointers (size + 1) of an ascending index vector."""
    ptr = torch.zeros(size + 1, dtype=torch.int64, device=sorted_index.device)
    if sorted_index.numel():
        torch.cumsum(torch.bincount(sorted_index, minlength=size), 0, out=ptr[1:])
    return ptr


def remap(old: LinkStructure, new: LinkStructure, old_values: Tensor) -> Tensor:
    """Per-link values for ``new``: links present in ``old`` keep their value, new links get 0.

    ``old_values`` has shape ``(old.nnz, ...)``; any trailing dimensions are carried along, so
    optimizer state tensors move with the same call. Runs in O((K_old + K_new) log K_old).
    """
    if tuple(old.shape) != tuple(new.shape):
        raise BrainsparseError(f"remap between different shapes {old.shape} and {new.shape}")
    if old_values.shape[:1] != (old.nnz,):
        raise BrainsparseError(
            f"old_values has {old_values.shape[0] if old_values.dim() else 0} entries, the old structure {old.nnz} links"
        )
    out = old_values.new_zeros((new.nnz, *old_values.shape[1:]))
    if old.nnz == 0 or new.nnz == 0:
        return out
    old_keys = old.keys().to(old_values.device)
    new_keys = new.keys().to(old_values.device)
    pos = torch.searchsorted(old_keys, new_keys).clamp_(max=old.nnz - 1)
    found = old_keys[pos] == new_keys
    out[found] = old_values[pos[found]]
    return out
