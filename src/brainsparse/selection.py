"""Choosing links from scores: top-k and soft sampling without replacement.

Both rules are shared by removal (choose the links to *keep*) and regrowth (choose the links to
*add*). Scores are non-negative; a candidate with score zero is only taken when fewer than ``k``
candidates have a positive score, and then uniformly at random from the ``fallback`` set
(algorithms.md §4, "Zero scores").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validation import check_choice
from .errors import BrainsparseError

RULES = ("topk", "soft")


def count(mask: Tensor) -> int:
    """Number of true entries (count_nonzero: several times faster than a bool sum)."""
    return int(torch.count_nonzero(mask))


def _random_pick(index: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` entries of ``index`` uniformly without replacement."""
    if k <= 0:
        return index[:0]
    perm = torch.randperm(index.numel(), generator=generator, device=index.device)
    return index[perm[:k]]


def _ranked(index: Tensor, keys: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """The ``k`` entries of ``index`` with the largest ``keys``; ties broken uniformly at random."""
    if k <= 0:
        return index[:0]
    if k >= index.numel():
        return index
    if generator is not None:
        perm = torch.randperm(index.numel(), generator=generator, device=index.device)
        index, keys = index[perm], keys[perm]
    order = torch.argsort(keys, descending=True, stable=True)
    return index[order[:k]]


def gumbel_keys(log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """Perturbed keys whose top-k is a sample without replacement ∝ exp(log_weights) [Gumbel-top-k]."""
    u = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64, device=log_weights.device)
    u = u.clamp_(min=1e-300, max=1.0 - 1e-16)
    return log_weights.double() - torch.log(-torch.log(u))


def select(
    scores: Tensor,
    k: int,
    candidates: Tensor,
    *,
    rule: str = "topk",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    fallback: Tensor | None = None,
) -> Tensor:
    """Choose exactly ``k`` positions among ``candidates`` and return them as a bool mask.

    ``rule="topk"`` takes the largest scores (ties broken at random). ``rule="soft"`` samples
    without replacement with probability ∝ score**temperature [Eq. 2 / Eq. 3 of the CHTs
    preprint]; temperature 0 is uniform over the candidates and ``math.inf`` is top-k.
    When fewer than ``k`` candidates have a positive score, all positive ones are taken and the
    rest is drawn uniformly from the zero-score candidates in ``fallback`` (default: all
    candidates), then, if that is still not enough, from any remaining candidate.
    """
    rule = check_choice(rule, RULES, "selection rule")
    if scores.shape != candidates.shape:
        raise BrainsparseError(f"scores shape {tuple(scores.shape)} differs from candidates shape {tuple(candidates.shape)}")
    if temperature < 0 or (isinstance(temperature, float) and math.isnan(temperature)):
        raise BrainsparseError(f"temperature {temperature!r} is invalid; allowed: a number >= 0")
    flat_scores = scores.reshape(-1)
    cand = candidates.reshape(-1).bool()
    n_cand = count(cand)
    if k < 0 or k > n_cand:
        raise BrainsparseError(f"cannot select {k} links from {n_cand} candidates")
    chosen = torch.zeros_like(cand)
    if k == 0:
        return chosen.view_as(candidates)

    if rule == "soft" and temperature == 0:
        # T -> 0: every candidate equally likely (uniform random choice).
        pick = _random_pick(cand.nonzero().squeeze(1), k, generator)
        chosen[pick] = True
        return chosen.view_as(candidates)

    # only candidates with a finite positive score compete; NaN and ±inf count as zero
    positive = cand & (flat_scores > 0)
    pos_index = positive.nonzero().squeeze(1)
    finite = torch.isfinite(flat_scores[pos_index])
    if not bool(finite.all()):
        positive[pos_index[~finite]] = False
        pos_index = pos_index[finite]
    if pos_index.numel() > k:
        s = flat_scores[pos_index].double()
        if rule == "topk" or math.isinf(temperature):
            pick = _ranked(pos_index, s, k, generator)
        else:
            keys = gumbel_keys(temperature * torch.log(s), generator)
            pick = pos_index[torch.topk(keys, k).indices]
        chosen[pick] = True
        return chosen.view_as(candidates)

    # Too few positive scores: all of them, then uniform among the fallback zero-score candidates.
    chosen[pos_index] = True
    missing = k - pos_index.numel()
    zero = cand & ~positive
    if fallback is not None:
        preferred = zero & fallback.reshape(-1).bool()
    else:
        preferred = zero
    pref_index = preferred.nonzero().squeeze(1)
    pick = _random_pick(pref_index, min(missing, pref_index.numel()), generator)
    chosen[pick] = True
    missing -= pick.numel()
    if missing > 0:
        rest = (zero & ~chosen).nonzero().squeeze(1)
        chosen[_random_pick(rest, missing, generator)] = True
    return chosen.view_as(candidates)
