"""Bipartite receptive-field (BRF) initial topology."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice, check_density, check_unit_interval, link_count
from ..errors import BrainsparseError
from .random import _check_generator, _check_shape, _exponential, _rand, _randint, _randperm

__all__ = ["bipartite_receptive_field"]

# rows of the (n_min, n_max) score matrix processed at once, to bound memory on large layers
_CHUNK_ELEMENTS = 1 << 22


def _uniform_degrees(n_min: int, n_max: int, k_total: int, generator: torch.Generator) -> Tensor:
    """Degrees of the smaller side: 1 each plus the rest of the links spread uniformly at
    random, capped at ``n_max`` (overflow redistributed)."""
    if k_total < n_min:
        raise BrainsparseError(
            f"density gives K = {k_total} links but degree='uniform' needs at least one link for each "
            f"of the {n_min} nodes of the smaller side; allowed: density >= {n_min}/(out*in), "
            "or degree='fixed'"
        )
    degree = torch.ones(n_min, dtype=torch.long)
    degree += torch.bincount(_randint(n_min, k_total - n_min, generator), minlength=n_min)
    while True:
        overflow = int((degree - n_max).clamp_min(0).sum())
        if overflow == 0:
            return degree
        degree.clamp_(max=n_max)
        spare = torch.nonzero(degree < n_max, as_tuple=False).flatten()
        degree += torch.bincount(spare[_randint(spare.numel(), overflow, generator)], minlength=n_min)


def _fixed_degrees(n_min: int, k_total: int, generator: torch.Generator) -> Tensor:
    """Degrees of the smaller side: ⌊K/n_min⌋ or ⌈K/n_min⌉, the larger ones on random nodes."""
    base, extra = divmod(k_total, n_min)
    degree = torch.full((n_min,), base, dtype=torch.long)
    degree[_randperm(n_min, generator)[:extra]] += 1
    return degree


def bipartite_receptive_field(
    out_features: int,
    in_features: int,
    density: float,
    *,
    r: float = 0.3,
    degree: str = "uniform",
    generator: torch.Generator,
) -> Tensor:
    """Bipartite receptive-field mask BRF(r) with exactly ``link_count(density, out, in)`` links.

    Every node i of the smaller side gets a degree k_i (``degree="uniform"``: at least 1, the
    rest of the links spread uniformly at random; ``"fixed"``: ⌊K/n_min⌋ or ⌈K/n_min⌉) and a
    centre c_i = round(i · n_max / n_min) (halves rounded up) on the ring of the larger side. With ``r = 0`` it
    links to the k_i nodes nearest its centre (ring distance; equal-distance ties broken at
    random); with ``0 < r <= 1`` it links to k_i distinct nodes drawn without replacement with
    probability ∝ (1 + ring distance)^(−(1 − r)/r), so ``r = 1`` is uniform.

    Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [BRF] receptive-field topology, algorithms.md §1 / reference.md §2.5 (centres round(i·n_max/n_min))
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    r = check_unit_interval(r, "r")
    degree = check_choice(degree, ["uniform", "fixed"], "degree")
    generator = _check_generator(generator)
    k_total = link_count(density, out_features, in_features)
    n_min, n_max = min(out_features, in_features), max(out_features, in_features)

    if degree == "uniform":
        k = _uniform_degrees(n_min, n_max, k_total, generator)
    else:
        k = _fixed_degrees(n_min, k_total, generator)

    i = torch.arange(n_min, dtype=torch.long)
    centre = torch.div(2 * i * n_max + n_min, 2 * n_min, rounding_mode="floor")  # round(i·n_max/n_min)
    cols = torch.arange(n_max, dtype=torch.long)
    alpha = (1.0 - r) / r if r > 0 else 0.0

    result = torch.zeros(n_min, n_max, dtype=torch.bool)
    chunk = max(1, _CHUNK_ELEMENTS // n_max)
    for lo in range(0, n_min, chunk):
        hi = min(n_min, lo + chunk)
        diff = (cols[None, :] - centre[lo:hi, None]).abs()
        dist = torch.minimum(diff, n_max - diff).to(torch.float32)
        if r == 0.0:
            # nearest first; uniform noise in [0, 1) only reorders equal (integer) distances
            key = -(dist + _rand((hi - lo, n_max), generator))
        else:
            # Gumbel-top-k in exponential form: top-k of log w − log E, E ~ Exp(1)
            key = -alpha * torch.log1p(dist) - torch.log(_exponential((hi - lo, n_max), generator))
        k_chunk = k[lo:hi]
        k_max = int(k_chunk.max())
        top = torch.topk(key, k_max, dim=1).indices
        keep = torch.arange(k_max)[None, :] < k_chunk[:, None]
        rows = torch.arange(lo, hi)[:, None].expand(-1, k_max)
        result[rows[keep], top[keep]] = True

    if out_features <= in_features:  # rows are the smaller side = outputs
        return result
    return result.t().contiguous()
