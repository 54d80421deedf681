"""Correlated sparse topological initialisation (CSTI)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_density, link_count
from ..errors import BrainsparseError
from .random import _check_generator, _check_shape, _mask_from_flat, _randperm

__all__ = ["feature_correlation", "correlated"]

#: rows of the input read at a time by :func:`feature_correlation` (256 × 784 MNIST pixels: a
#: 1.6 MB float64 block instead of the whole sample in float64, twice)
CORRELATION_BLOCK_ROWS = 256
#: entries of the tiled score scored at a time by :func:`correlated` (2 MB of float64)
CSTI_BLOCK_ENTRIES = 1 << 18


def _row_block(x: Any, start: int, stop: int) -> Tensor:
    """Rows ``[start, stop)`` of ``x`` as a 2-D float64 tensor."""
    return x[start:stop].detach().to(torch.float64)


def feature_correlation(x: Any, *, block_rows: int = CORRELATION_BLOCK_ROWS) -> Tensor:
    """Pearson correlation between the columns (features) of ``x`` (n_samples × n_features).

    ``x`` is a 2-D tensor, or any row-indexable with a 2-D ``shape`` and ``dtype`` whose slices
    ``x[a:b]`` are float tensors (e.g. :class:`~brainsparse.data.images.PixelImages`, read
    without a float copy of the whole sample). The sums run in float64 over blocks of
    ``block_rows`` rows (one block: the same numbers as the textbook formula on the whole
    sample; several: the same up to float64 rounding of the sums). Entries involving a
    zero-variance feature are 0, and so is the diagonal. Returns a float tensor of shape
    (n_features, n_features) (float64 if ``x`` is float64, else float32).
    """
    # [CSTI] Pearson correlation, NaN → 0, diagonal → 0, algorithms.md §1 / reference.md §2.6 step 2
    shape = tuple(getattr(x, "shape", ()))
    if not hasattr(x, "__getitem__") or len(shape) != 2:
        raise BrainsparseError(
            f"x with shape {shape} is not a 2-D tensor; allowed: a (n_samples, n_features) tensor"
        )
    n, m = shape
    if n < 1 or m < 1:
        raise BrainsparseError(f"x with shape {shape} is empty; allowed: at least one sample and feature")
    out_dtype = torch.float64 if getattr(x, "dtype", None) == torch.float64 else torch.float32
    step = max(1, int(block_rows))
    bounds = [(a, min(a + step, n)) for a in range(0, n, step)]
    # pass 1: column sums (for the mean) and whether each column varies (zero variance exactly
    # when constant)
    total = lo = hi = None
    for a, b in bounds:
        block = _row_block(x, a, b)
        part, part_lo, part_hi = block.sum(dim=0), block.amin(dim=0), block.amax(dim=0)
        if total is None:
            total, lo, hi = part, part_lo, part_hi
        else:
            total.add_(part)
            torch.minimum(lo, part_lo, out=lo)
            torch.maximum(hi, part_hi, out=hi)
    mean = (total / n)[None, :]
    alive = hi != lo
    # pass 2: the covariance Σ (x − mean)ᵀ (x − mean), one block at a time
    cov = None
    for a, b in bounds:
        centred = _row_block(x, a, b).sub_(mean)
        if cov is None:
            cov = centred.t() @ centred
        else:
            cov.addmm_(centred.t(), centred)
        del centred
    std = torch.sqrt(torch.diagonal(cov).clamp_min(0.0))
    denom = std[:, None] * std[None, :]
    denom.masked_fill_(~(denom > 0), 1.0)
    corr = cov.div_(denom)  # in place: cov is not needed any more
    del denom
    corr.masked_fill_(~(alive[:, None] & alive[None, :]), 0.0)
    corr = torch.nan_to_num_(corr, nan=0.0).clamp_(-1.0, 1.0)
    corr.fill_diagonal_(0.0)
    return corr.to(out_dtype)


def _tiled_blocks(c: Tensor, out_features: int, in_features: int):
    """``(first flat index, scores)`` of consecutive row blocks of the tiled score
    ``c[a % p, i % q]`` (flattened, row-major)."""
    p, q = c.shape
    cols = torch.arange(in_features) % q
    rows_per_block = max(1, CSTI_BLOCK_ENTRIES // in_features)
    for start in range(0, out_features, rows_per_block):
        stop = min(start + rows_per_block, out_features)
        rows = torch.arange(start, stop) % p
        yield start * in_features, c[rows[:, None], cols[None, :]].flatten()


def correlated(
    out_features: int,
    in_features: int,
    density: float,
    *,
    correlation: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """CSTI mask: the ``link_count(density, out, in)`` positions with the largest absolute
    correlation, exact count, ties broken at random.

    ``correlation`` (p × q, usually the m × m output of :func:`feature_correlation`) is tiled to
    cover the layer: entry (a, i) uses ``correlation[a % p, i % q]``; NaN counts as 0. The tiled
    scores are formed a block of rows at a time (never the whole ``(out, in)`` array).
    Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [CSTI] top-K |correlation| of the tiled matrix, algorithms.md §1 / reference.md §2.6 steps 3-4
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    generator = _check_generator(generator)
    if not isinstance(correlation, Tensor) or correlation.dim() != 2 or correlation.numel() == 0:
        raise BrainsparseError(
            f"correlation with shape {tuple(getattr(correlation, 'shape', ()))} is not a non-empty "
            "2-D tensor; allowed: a (m, m) correlation matrix"
        )
    k_total = link_count(density, out_features, in_features)
    c = torch.nan_to_num(correlation.detach().to("cpu", torch.float64), nan=0.0).abs()
    # threshold = K-th largest value of the tiled scores: the K largest of each block, merged
    best = c.new_empty(0)
    for _, score in _tiled_blocks(c, out_features, in_features):
        best = torch.cat([best, torch.topk(score, min(k_total, score.numel()), sorted=False).values])
        if best.numel() > 2 * k_total:
            best = torch.topk(best, k_total, sorted=False).values
    tau = torch.topk(best, k_total, sorted=False).values.min()
    del best
    # everything above it is kept, the rest drawn among the ties (both in row-major order)
    above_parts, tied_parts = [], []
    for first, score in _tiled_blocks(c, out_features, in_features):
        above_parts.append(torch.nonzero(score > tau, as_tuple=False).flatten() + first)
        tied_parts.append(torch.nonzero(score == tau, as_tuple=False).flatten() + first)
    above, tied = torch.cat(above_parts), torch.cat(tied_parts)
    chosen = tied[_randperm(tied.numel(), generator)[: k_total - above.numel()]]
    return _mask_from_flat(torch.cat([above, chosen]), out_features, in_features)
