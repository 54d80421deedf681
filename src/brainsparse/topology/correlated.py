"""Correlated sparse topological initialisation (CSTI)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_density, link_count
from ..errors import BrainsparseError
from .random import _check_generator, _check_shape, _mask_from_flat, _randperm

__all__ = ["feature_correlation", "correlated"]


def feature_correlation(x: Tensor) -> Tensor:
    """Pearson correlation between the columns (features) of ``x`` (n_samples × n_features).

    Entries involving a zero-variance feature are 0, and so is the diagonal. Returns a float
    tensor of shape (n_features, n_features) (float64 if ``x`` is float64, else float32).
    """
    # [CSTI] Pearson correlation, NaN → 0, diagonal → 0, algorithms.md §1 / reference.md §2.6 step 2
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise BrainsparseError(
            f"x with shape {tuple(getattr(x, 'shape', ()))} is not a 2-D tensor; "
            "allowed: a (n_samples, n_features) tensor"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise BrainsparseError(f"x with shape {tuple(x.shape)} is empty; allowed: at least one sample and feature")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xd = x.detach().to(torch.float64)
    centred = xd - xd.mean(dim=0, keepdim=True)
    cov = centred.t() @ centred
    std = torch.sqrt(torch.diagonal(cov).clamp_min(0.0))
    alive = xd.amax(dim=0) != xd.amin(dim=0)  # zero variance exactly when constant
    denom = std[:, None] * std[None, :]
    corr = torch.where(alive[:, None] & alive[None, :], cov / torch.where(denom > 0, denom, 1.0), 0.0)
    corr = torch.nan_to_num(corr, nan=0.0).clamp_(-1.0, 1.0)
    corr.fill_diagonal_(0.0)
    return corr.to(out_dtype)


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
    cover the layer: entry (a, i) uses ``correlation[a % p, i % q]``; NaN counts as 0.
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
    p, q = correlation.shape
    c = torch.nan_to_num(correlation.detach().to("cpu", torch.float64), nan=0.0).abs()
    rows = torch.arange(out_features) % p
    cols = torch.arange(in_features) % q
    score = c[rows[:, None], cols[None, :]].flatten()
    # threshold = K-th largest value; everything above it is kept, the rest drawn among ties
    tau = torch.topk(score, k_total, sorted=False).values.min()
    above = torch.nonzero(score > tau, as_tuple=False).flatten()
    tied = torch.nonzero(score == tau, as_tuple=False).flatten()
    chosen = tied[_randperm(tied.numel(), generator)[: k_total - above.numel()]]
    return _mask_from_flat(torch.cat([above, chosen]), out_features, in_features)
