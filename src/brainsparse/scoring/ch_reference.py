"""Slow, literal definitions of the CH L3 scores, the test oracles of the fast forms.

:func:`ch_l3_reference` (path form straight from the definition) and :func:`ch_l3_node_reference`
(node-based definition that the matrix form equals); both O(out · in · paths), for small graphs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._ch_common import as_mask, canonical_variant

__all__ = ["ch_l3_node_reference", "ch_l3_reference"]


def _graph(mask: Tensor) -> tuple[int, int, list[set[int]]]:
    """Monopartite adjacency sets: outputs are nodes 0..out−1, inputs out..out+in−1."""
    n_out, n_in = mask.shape
    nbr: list[set[int]] = [set() for _ in range(n_out + n_in)]
    for a, j in mask.nonzero().tolist():
        nbr[a].add(n_out + j)
        nbr[n_out + j].add(a)
    return n_out, n_in, nbr


def _l3_paths(nbr: list[set[int]], u: int, v: int) -> list[tuple[int, int]]:
    """All simple paths u – z1 – z2 – v as (z1, z2)."""
    return [
        (z1, z2)
        for z1 in sorted(nbr[u])
        if z1 != v
        for z2 in sorted(nbr[z1])
        if z2 not in (u, v) and v in nbr[z2]
    ]


def _community_degrees(
    nbr: list[set[int]], community: set[int], u: int, v: int, z: int
) -> tuple[int, int]:
    """(di, de) of community node z: links inside the community, and links leaving it
    (not counting one link to the seeds u or v)."""
    di = len(nbr[z] & community)
    de = len(nbr[z]) - di - (1 if (u in nbr[z] or v in nbr[z]) else 0)
    return di, de


def _absent_pairs(mask: Tensor):
    """For the slow references: yield (u, i, v, paths, community) for every absent pair,
    with v = out + i the input node, its L3 paths and their local community."""
    n_out, n_in, nbr = _graph(mask.cpu())
    for u in range(n_out):
        for i in range(n_in):
            v = n_out + i
            if v in nbr[u]:
                continue
            paths = _l3_paths(nbr, u, v)
            yield u, i, v, paths, {z for path in paths for z in path}, nbr


def ch_l3_reference(mask: Tensor, variant: str = "CH3") -> Tensor:
    """Slow, literal path form [CH3-L3] / [CH2-L3] / [CH3.1-L3], for tests on small graphs.

    Loops over every absent pair, lists its L3 paths, builds the local community as a set and
    counts each community node's internal / external degree from the graph. O(out·in·paths).
    """
    m = as_mask(mask)
    var = canonical_variant(variant)
    scores = torch.zeros(m.shape, dtype=torch.float64)
    for u, i, v, paths, community, nbr in _absent_pairs(m):
        total = 0.0
        for z1, z2 in paths:
            di1, de1 = _community_degrees(nbr, community, u, v, z1)
            di2, de2 = _community_degrees(nbr, community, u, v, z2)
            if var == "CH3":
                total += 1.0 / math.sqrt((1 + de1) * (1 + de2))
            elif var == "CH2":
                total += math.sqrt((1 + di1) * (1 + di2)) / math.sqrt((1 + de1) * (1 + de2))
            else:
                total += 1.0 / math.sqrt((1.0 / (1 + di1) + de1) * (1.0 / (1 + di2) + de2))
        scores[u, i] = total
    return scores.to(torch.float32).to(m.device)


def ch_l3_node_reference(mask: Tensor, variant: str = "CH3") -> Tensor:
    """Slow node-based definition that the matrix form equals, for tests on small graphs.

    For every absent pair, each local-community node z (from the L3 paths) is counted once:
    CH3 ``Σ_z 1/(1+de_z)``, CH2 ``Σ_z (1+di_z)/(1+de_z)``,
    CH3.1 ``Σ_z (1+di_z)/(1+de_z)^(1+de_z/(1+de_z))``.
    """
    m = as_mask(mask)
    var = canonical_variant(variant)
    scores = torch.zeros(m.shape, dtype=torch.float64)
    for u, i, v, _paths, community, nbr in _absent_pairs(m):
        total = 0.0
        for z in community:
            di, de = _community_degrees(nbr, community, u, v, z)
            if var == "CH3":
                total += 1.0 / (1 + de)
            elif var == "CH2":
                total += (1 + di) / (1 + de)
            else:
                total += (1 + di) / (1 + de) ** (1 + de / (1 + de))
        scores[u, i] = total
    return scores.to(torch.float32).to(m.device)
