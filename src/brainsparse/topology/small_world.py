"""Bipartite small-world (BSW) initial topology."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_density, check_unit_interval, link_count
from .random import _check_generator, _check_shape, _mask_from_flat, _rand, _sample_free

__all__ = ["bipartite_small_world", "ring_lattice"]


def ring_lattice(out_features: int, in_features: int, density: float) -> Tensor:
    """The bipartite ring lattice underlying BSW (its β = 0 case), with exactly
    ``link_count(density, out, in)`` links.

    Both node sets lie on one ring, spread evenly in proportion to their sizes; every node of
    the larger side links to its nearest nodes of the smaller side. Nodes of the larger side
    have degree ⌊K/n_max⌋ or ⌈K/n_max⌉; the ones with ⌈K/n_max⌉ are spread evenly along the
    ring. Deterministic. Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [BSW] bipartite ring lattice, algorithms.md §1 / reference.md §2.3 steps 1-3
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    k_total = link_count(density, out_features, in_features)
    n_min, n_max = min(out_features, in_features), max(out_features, in_features)

    # degree of every larger-side node: base or base + 1, the extra ones spread evenly
    base, extra = divmod(k_total, n_max)
    j = torch.arange(n_max, dtype=torch.long)
    degree = base + ((j + 1) * extra) // n_max - (j * extra) // n_max

    # larger-side node j sits at ring position (j + 0.5) / n_max, smaller-side node i at
    # (i + 0.5) / n_min; the k nearest smaller-side nodes form the contiguous window
    # starting at floor(((2j + 1) n_min + (1 - k) n_max) / (2 n_max)) (exact integer form)
    start = torch.div((2 * j + 1) * n_min + (1 - degree) * n_max, 2 * n_max, rounding_mode="floor")
    k_max = int(degree.max())
    offsets = torch.arange(k_max, dtype=torch.long)
    valid = offsets[None, :] < degree[:, None]  # (n_max, k_max)
    small = torch.remainder(start[:, None] + offsets[None, :], n_min)[valid]
    large = j[:, None].expand(n_max, k_max)[valid]

    if out_features <= in_features:  # rows of the lattice are the smaller side = outputs
        flat = small * in_features + large
    else:  # outputs are the larger side
        flat = large * in_features + small
    return _mask_from_flat(flat, out_features, in_features)


def bipartite_small_world(
    out_features: int,
    in_features: int,
    density: float,
    *,
    beta: float = 0.25,
    generator: torch.Generator,
) -> Tensor:
    """Bipartite small-world mask BSW(β) with exactly ``link_count(density, out, in)`` links.

    Starts from :func:`ring_lattice`; then every link is removed independently with
    probability ``beta`` and the same number of links is added uniformly at random among the
    positions that are empty after the removal. A just-vacated position may be chosen again,
    so ``beta = 1`` gives exactly an Erdős–Rényi mask and ``beta = 0`` the lattice.

    Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [BSW] lattice + Watts–Strogatz-like rewiring, algorithms.md §1 / reference.md §2.3 step 4
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    beta = check_unit_interval(beta, "beta")
    generator = _check_generator(generator)
    lattice = ring_lattice(out_features, in_features, density)
    if beta == 0.0:
        return lattice
    flat = lattice.flatten()
    links = torch.nonzero(flat, as_tuple=False).flatten()
    removed = _rand(links.numel(), generator) < beta
    n_removed = int(torch.count_nonzero(removed))
    if n_removed == 0:
        return lattice
    taken = flat.clone()
    taken[links[removed]] = False
    added = _sample_free(taken, n_removed, generator)
    taken[added] = True
    return taken.view(out_features, in_features)
