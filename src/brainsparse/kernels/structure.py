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

import numpy as np
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

    def __post_init__(self) -> None:
        """Check the index tensors (the compiled kernel trusts them: this keeps it memory-safe)."""
        out_f, in_f = (int(v) for v in self.shape)
        object.__setattr__(self, "shape", (out_f, in_f))
        rows = self.rows
        if not torch.is_tensor(rows):
            raise BrainsparseError("LinkStructure index tensors must be tensors")
        k = rows.numel()
        sizes = {"rows": k, "cols": k, "crow": out_f + 1, "t_perm": k, "t_rows": k, "ccol": in_f + 1}
        for name, size in sizes.items():
            t = getattr(self, name)
            if (
                not torch.is_tensor(t) or t.dtype != torch.int64 or t.dim() != 1 or t.numel() != size
                or not t.is_contiguous() or t.device != rows.device
            ):
                got = f"{t.dtype}, shape {tuple(t.shape)}, {t.device}" if torch.is_tensor(t) else type(t).__name__
                raise BrainsparseError(
                    f"LinkStructure.{name} must be a contiguous int64 vector of {size} on {rows.device}; got {got}"
                )
        if rows.device.type == "cpu":  # cheap O(K) bounds checks where the C++ kernel reads them
            for ptr, name in ((self.crow, "crow"), (self.ccol, "ccol")):
                if int(ptr[0]) != 0 or int(ptr[-1]) != k or (ptr.numel() > 1 and bool((ptr.diff() < 0).any())):
                    raise BrainsparseError(f"LinkStructure.{name} is not a valid pointer vector for {k} links")
            for t, hi, name in ((self.cols, in_f, "cols"), (self.t_rows, out_f, "t_rows"),
                                (self.rows, out_f, "rows"), (self.t_perm, k, "t_perm")):
                if k and (int(t.min()) < 0 or int(t.max()) >= hi):
                    raise BrainsparseError(f"LinkStructure.{name} has entries outside [0, {hi})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mask(cls, mask: Tensor) -> LinkStructure:
        """The structure of the nonzero (``True``) entries of a 2-D mask, on the mask's device."""
        if not torch.is_tensor(mask) or mask.dim() != 2:
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise BrainsparseError(f"mask must be a 2-D tensor (out, in), got {shape}")
        mask = mask.detach()
        if mask.dtype != torch.bool:
            mask = mask != 0
        if mask.device.type == "cpu":  # numpy's flatnonzero is several times faster than torch's
            keys = torch.from_numpy(np.flatnonzero(mask.contiguous().numpy()).astype(np.int64, copy=False))
        else:
            keys = mask.reshape(-1).nonzero().squeeze(1)
        return cls._from_sorted_keys(keys, (int(mask.shape[0]), int(mask.shape[1])))

    @classmethod
    def from_indices(cls, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> LinkStructure:
        """The structure of the links ``(rows[i], cols[i])``, any order (duplicates count once)."""
        out_f, in_f = (int(v) for v in shape)
        if out_f < 0 or in_f < 0:
            raise BrainsparseError(f"shape {shape} is invalid; allowed: two non-negative sizes")
        rows = rows.reshape(-1).to(torch.int64)
        cols = cols.reshape(-1).to(torch.int64)
        if rows.numel() != cols.numel():
            raise BrainsparseError(f"rows ({rows.numel()}) and cols ({cols.numel()}) differ in length")
        if rows.numel() and (
            int(rows.min()) < 0 or int(rows.max()) >= out_f or int(cols.min()) < 0 or int(cols.max()) >= in_f
        ):
            raise BrainsparseError(f"link indices outside the shape {(out_f, in_f)}")
        return cls._from_sorted_keys(torch.unique(rows * in_f + cols), (out_f, in_f))

    @classmethod
    def _from_sorted_keys(cls, keys: Tensor, shape: tuple[int, int]) -> LinkStructure:
        """Build from ascending flat keys ``row * in + col``: O(K log K), vectorised."""
        out_f, in_f = shape
        keys = keys.to(torch.int64)
        if keys.numel() == 0:
            empty = keys.new_zeros(0)
            return cls(empty, empty.clone(), _pointers(empty, out_f), empty.clone(), empty.clone(),
                       _pointers(empty, in_f), (out_f, in_f))
        rows = torch.div(keys, in_f, rounding_mode="floor")
        cols = keys - rows * in_f
        crow = _pointers(rows, out_f)
        # column-major order, rows ascending inside a column: sort the transposed keys (unique)
        t_keys = cols * out_f + rows
        if t_keys.device.type == "cpu":
            t_perm = torch.from_numpy(np.argsort(t_keys.numpy()).astype(np.int64, copy=False))
        else:
            t_perm = torch.argsort(t_keys)
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
