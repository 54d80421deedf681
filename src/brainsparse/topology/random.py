"""Uniform random (Erdős–Rényi) masks, ERK per-layer densities, and shared sampling helpers.

All randomness comes from an explicit :class:`torch.Generator`; masks are returned as CPU
``torch.bool`` tensors of shape ``(out_features, in_features)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import check_density, check_positive_int, link_count
from ..errors import BrainsparseError

__all__ = ["uniform", "erk_densities"]


# ---------------------------------------------------------------------------
# private helpers shared by the other topology modules
# ---------------------------------------------------------------------------


def _check_generator(generator: object) -> torch.Generator:
    """Return ``generator`` if it is a :class:`torch.Generator`, else raise."""
    if not isinstance(generator, torch.Generator):
        raise BrainsparseError(
            f"generator {generator!r} is not a torch.Generator; allowed: a torch.Generator "
            "(e.g. torch.Generator().manual_seed(0))"
        )
    return generator


def _check_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Return the layer shape if both sizes are positive integers, else raise."""
    return (
        check_positive_int(out_features, "out_features"),
        check_positive_int(in_features, "in_features"),
    )


def _rand(size: int | tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform [0, 1) float32 samples on the CPU drawn from ``generator``."""
    size = (size,) if isinstance(size, int) else tuple(size)
    return torch.rand(size, generator=generator, device=generator.device).cpu()


def _randperm(n: int, generator: torch.Generator) -> Tensor:
    """A uniformly random permutation of ``range(n)`` (CPU int64) drawn from ``generator``."""
    return torch.randperm(n, generator=generator, device=generator.device).cpu()


def _randint(high: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` uniform integers in ``[0, high)`` (CPU int64) drawn from ``generator``."""
    return torch.randint(high, (size,), generator=generator, device=generator.device).cpu()


def _exponential(size: int | tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Exp(1) float32 samples on the CPU drawn from ``generator``."""
    size = (size,) if isinstance(size, int) else tuple(size)
    return torch.empty(size, device=generator.device).exponential_(generator=generator).cpu()


def _multinomial(weights: Tensor, count: int, replacement: bool, generator: torch.Generator) -> Tensor:
    """``count`` indices drawn with probability proportional to ``weights`` (CPU int64)."""
    w = weights.to(device=generator.device, dtype=torch.float64)
    return torch.multinomial(w, count, replacement=replacement, generator=generator).cpu()


def _first_occurrence(ids: Tensor) -> Tensor:
    """Bool tensor marking the first occurrence of every value of the 1-D tensor ``ids``."""
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    first_sorted = torch.ones_like(sorted_ids, dtype=torch.bool)
    first_sorted[1:] = sorted_ids[1:] != sorted_ids[:-1]
    first = torch.empty_like(first_sorted)
    first[order] = first_sorted
    return first


def _sample_free(taken: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Indices of ``count`` distinct positions drawn uniformly among the False entries of the
    flat bool tensor ``taken`` (which is not modified)."""
    n = taken.numel()
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    free = n - int(torch.count_nonzero(taken))
    if count > free:
        raise BrainsparseError(f"cannot place {count} links: only {free} empty positions are left")
    if free <= 4 * count or n <= 65536:
        # exact: a random subset of the explicit list of empty positions
        empty = torch.nonzero(~taken, as_tuple=False).flatten()
        return empty[_randperm(empty.numel(), generator)[:count]]
    # sparse regime: rejection sampling (every accepted batch is a uniform subset of what is free)
    taken = taken.clone()
    chosen: list[Tensor] = []
    need = count
    while need > 0:
        cand = torch.unique(_randint(n, need + need // 4 + 16, generator))
        cand = cand[~taken[cand]]
        if cand.numel() > need:
            cand = cand[_randperm(cand.numel(), generator)[:need]]
        taken[cand] = True
        chosen.append(cand)
        need -= cand.numel()
    return torch.cat(chosen)


def _degrees(taken: Tensor, out_features: int, in_features: int) -> tuple[Tensor, Tensor]:
    """Row and column degrees (int64) of the flat bool mask ``taken`` of a (out, in) layer."""
    links = torch.nonzero(taken, as_tuple=False).flatten()
    rows = torch.bincount(torch.div(links, in_features, rounding_mode="floor"), minlength=out_features)
    cols = torch.bincount(torch.remainder(links, in_features), minlength=in_features)
    return rows, cols


def _mask_from_flat(indices: Tensor, out_features: int, in_features: int) -> Tensor:
    """A ``(out_features, in_features)`` bool mask that is True at the flat ``indices``."""
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[indices] = True
    return mask.view(out_features, in_features)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def uniform(out_features: int, in_features: int, density: float, *, generator: torch.Generator) -> Tensor:
    """Erdős–Rényi mask: exactly ``link_count(density, out, in)`` positions chosen uniformly
    without replacement.

    Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [ER] uniform random topology, algorithms.md §1 / reference.md §2.1
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    generator = _check_generator(generator)
    k = link_count(density, out_features, in_features)
    taken = torch.zeros(out_features * in_features, dtype=torch.bool)
    return _mask_from_flat(_sample_free(taken, k, generator), out_features, in_features)


def check_shapes(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate a non-empty list of ``(out, in)`` layer shapes and return it as tuples."""
    shapes = [tuple(s) for s in shapes]
    if not shapes:
        raise BrainsparseError("shapes [] is empty; allowed: a non-empty list of (out, in) pairs")
    for s in shapes:
        if len(s) != 2:
            raise BrainsparseError(f"shape {s!r} is not an (out, in) pair")
        _check_shape(*s)
    return shapes


def erk_densities(shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
    """Per-layer densities proportional to ``(out + in) / (out * in)`` whose total link budget
    equals ``density * sum(out * in)``; layers that would exceed 1 are made dense (density 1)
    and the others rescaled.

    Deterministic. Returns one density in (0, 1] per shape, in order.
    """
    # [ERK] Erdős–Rényi-kernel layer densities (RigL), algorithms.md §1 / reference.md §2.2
    density = check_density(density)
    shapes = check_shapes(shapes)
    sizes = [o * i for o, i in shapes]
    raw = [(o + i) / (o * i) for o, i in shapes]
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        rest = [l for l in range(len(shapes)) if l not in dense]
        if not rest:
            break
        remaining = budget - sum(sizes[l] for l in dense)
        eps = remaining / sum(raw[l] * sizes[l] for l in rest)
        over = [l for l in rest if eps * raw[l] > 1.0]
        if not over:
            break
        dense.update(over)
    return [1.0 if l in dense else min(1.0, eps * raw[l]) for l in range(len(shapes))]
