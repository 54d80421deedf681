"""Choosing links from scores: top-k and soft sampling without replacement.

Both rules are shared by removal (choose the links to *keep*) and regrowth (choose the links to
*add*). Scores are non-negative; a candidate with score zero is only taken when fewer than ``k``
candidates have a positive score, and then uniformly at random from the ``fallback`` set
(algorithms.md §4, "Zero scores").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._random import drawing_generator, rand, randperm, skip_randperm
from ._validation import check_choice
from .errors import BrainsparseError

RULES = ("topk", "soft")


def count(mask: Tensor) -> int:
    """Number of true entries (count_nonzero: several times faster than a bool sum)."""
    return int(torch.count_nonzero(mask))


def row_col_counts(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Links per row and per column of a 2-D mask (int64), counted a block of rows at a time:
    ``count_nonzero`` over a dimension first copies what it counts into int64 (8 bytes per entry)."""
    n_rows, n_cols = mask.shape
    rows = torch.zeros(n_rows, dtype=torch.int64, device=mask.device)
    cols = torch.zeros(n_cols, dtype=torch.int64, device=mask.device)
    for start, stop in row_blocks(n_rows, n_cols):
        block = mask[start:stop]
        rows[start:stop] = torch.count_nonzero(block, dim=1)
        cols += torch.count_nonzero(block, dim=0)
    return rows, cols


def _random_pick(index: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` entries of ``index`` uniformly without replacement."""
    if k <= 0:
        return index[:0]
    perm = randperm(index.numel(), generator=generator, device=index.device)
    return index[perm[:k]]


def _skip_tie_break(n_relevant: int, k: int, n: int, generator: torch.Generator) -> bool:
    """Whether the random order of all ``n`` candidates (the tie-break) can be skipped, the
    generator moved past it: exactly ``k`` keys are at least the k-th largest, so no tie at the
    boundary needs breaking and the choice is the same whatever the order (equal keys among the
    chosen come back in candidate order instead of the permuted one)."""
    return n_relevant == k and skip_randperm(n, generator=generator)


def _ranked(index: Tensor, keys: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """The ``k`` entries of ``index`` with the largest ``keys``; ties broken uniformly at random."""
    if k <= 0:
        return index[:0]
    if k >= index.numel():
        return index
    if keys.is_floating_point() and bool(torch.isnan(keys).any()):
        if generator is not None:
            perm = randperm(index.numel(), generator=generator, device=index.device)
            index, keys = index.index_select(0, perm), keys.index_select(0, perm)
        return index[torch.argsort(keys, descending=True, stable=True)[:k]]
    # The same choice as index[perm][argsort(keys[perm], descending, stable)[:k]], without sorting
    # or permuting all candidates (millions in a regrowth): the k-th largest key splits them into
    # sure winners (>) and ties (==), of which the first in permuted order win. (Also the same
    # order, except where no tie at the k-th key needs the permutation: then it is skipped and
    # equal keys among the chosen come back in candidate order.)
    kth = torch.topk(keys, k, sorted=False).values.min()
    relevant = keys >= kth
    if generator is None or _skip_tie_break(count(relevant), k, index.numel(), generator):
        pos = relevant.nonzero().squeeze(1)
    else:
        perm = randperm(index.numel(), generator=generator, device=index.device)
        # (index_select takes the int32 permutation as it is; plain indexing would copy it to int64)
        pos = perm[relevant.index_select(0, perm).nonzero().squeeze(1)]
    pk = keys[pos]
    above = pk > kth
    tie = pk == kth
    take = above | (tie & (tie.cumsum(0) <= k - count(above)))
    pos, pk = pos[take], pk[take]
    return index[pos[torch.argsort(pk, descending=True, stable=True)]]


def gumbel_keys(log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """Perturbed keys whose top-k is a sample without replacement ∝ exp(log_weights) [Gumbel-top-k].

    ``key = log_weights − log(−log(u))`` with ``u`` uniform in float64 (computed in place: one
    array of the candidates' size, the same values as the out-of-place formula).
    """
    u = rand(log_weights.shape, generator=generator, dtype=torch.float64, device=log_weights.device)
    u.clamp_(min=1e-300, max=1.0 - 1e-16)
    u.log_().neg_().log_()  # log(−log(u)): minus the Gumbel noise
    return torch.sub(log_weights.double(), u, out=u)


def _check_arguments(rule: str, temperature: float) -> str:
    rule = check_choice(rule, RULES, "selection rule")
    if temperature < 0 or (isinstance(temperature, float) and math.isnan(temperature)):
        raise BrainsparseError(f"temperature {temperature!r} is invalid; allowed: a number >= 0")
    return rule


def _positive(flat_scores: Tensor, pos_index: Tensor) -> tuple[Tensor, Tensor]:
    """Drop non-finite scores (they count as zero) from ``pos_index``; returns the kept index and
    its scores in float64."""
    s = flat_scores[pos_index].double()
    # float64 sums of float32 (or moderate float64) scores overflow only if some score is ±inf/NaN
    if not math.isfinite(float(s.sum())):
        finite = torch.isfinite(s)
        pos_index, s = pos_index[finite], s[finite]
    return pos_index, s


def _pick_positive(pos_index: Tensor, s: Tensor, k: int, rule: str, temperature: float,
                   generator: torch.Generator | None) -> Tensor:
    """``k`` of more than ``k`` positive candidates: top-k, or sampled ∝ s**temperature [Eq. 2/3]."""
    if rule == "topk" or math.isinf(temperature):
        return _ranked(pos_index, s, k, generator)
    log_w = s.log_()  # in place: the caller's s is not read again
    if temperature != 1:
        log_w.mul_(temperature)  # temperature · log(s)
    keys = gumbel_keys(log_w, generator)
    return pos_index[torch.topk(keys, k).indices]


def select_index(
    scores: Tensor,
    k: int,
    candidates: Tensor,
    *,
    rule: str = "topk",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    fallback: Tensor | None = None,
) -> Tensor:
    """:func:`select`, returning the flat (row-major) indices of the chosen positions instead of
    a mask (int64, no particular order)."""
    rule = _check_arguments(rule, temperature)
    if scores.shape != candidates.shape:
        raise BrainsparseError(f"scores shape {tuple(scores.shape)} differs from candidates shape {tuple(candidates.shape)}")
    flat_scores = scores.reshape(-1)
    cand = candidates.reshape(-1).bool()
    n_cand = count(cand)
    if k < 0 or k > n_cand:
        raise BrainsparseError(f"cannot select {k} links from {n_cand} candidates")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=cand.device)

    if rule == "soft" and temperature == 0:
        # T -> 0: every candidate equally likely (uniform random choice).
        return _random_pick(cand.nonzero().squeeze(1), k, generator)

    # only candidates with a finite positive score compete; NaN and ±inf count as zero
    if rule == "soft" and not math.isinf(temperature):
        # one pass: sample while counting; with k or fewer finite positive scores the draws are
        # undone, so the generator goes on exactly as if they had been counted first
        drawing = drawing_generator(generator, flat_scores.device)
        state = drawing.get_state()
        picked = _soft_pick_blocks(flat_scores, cand, k, temperature, generator)
        if picked is not None:
            return picked
        drawing.set_state(state)
        pos_index = _finite_positive(flat_scores, cand, 0, cand.numel()).nonzero().squeeze(1)
        return _with_zero_scores(pos_index, k, cand, fallback, generator)
    positive = cand & (flat_scores > 0)
    pos_index, s = _positive(flat_scores, positive.nonzero().squeeze(1))
    del positive
    if pos_index.numel() > k:
        return _pick_positive(pos_index, s, k, rule, temperature, generator)
    return _with_zero_scores(pos_index, k, cand, fallback, generator)


def _finite_positive(flat_scores: Tensor, cand: Tensor, start: int, stop: int) -> Tensor:
    """Entries ``[start, stop)``: candidates whose score is finite and positive (bool)."""
    s = flat_scores[start:stop]
    return cand[start:stop] & (s > 0) & torch.isfinite(s)


def _soft_pick_blocks(flat_scores: Tensor, cand: Tensor, k: int, temperature: float,
                      generator: torch.Generator | None, entries: int | None = None) -> Tensor | None:
    """:func:`_pick_positive` with the soft rule over the candidates ``cand`` with a finite
    positive score, taken a block of entries at a time in row-major order: each block's Gumbel
    noise is the next stretch of the one draw for all of them, and only keys that can still be
    among the ``k`` largest are kept between blocks — the same sample, in the same order (unless
    two float64 keys tie exactly at the k-th place), without arrays of the candidates' size (their
    indices, float64 scores, noise and keys). ``None`` when at most ``k`` candidates have a
    finite positive score (then there is nothing to sample)."""
    step = entries or SOFT_BLOCK_ENTRIES
    n_pos = 0
    keys = torch.zeros(0, dtype=torch.float64, device=flat_scores.device)
    index = torch.zeros(0, dtype=torch.int64, device=flat_scores.device)
    bar: Tensor | None = None  # the k-th largest key so far
    for start in range(0, flat_scores.numel(), step):
        here = _finite_positive(flat_scores, cand, start, start + step).nonzero().squeeze(1)
        if here.numel() == 0:
            continue
        n_pos += here.numel()
        here += start
        log_w = flat_scores[here].double().log_()
        if temperature != 1:
            log_w.mul_(temperature)  # temperature · log(s)
        block = gumbel_keys(log_w, generator)
        if bar is not None:
            stays = block >= bar
            here, block = here[stays], block[stays]
        keys, index = torch.cat([keys, block]), torch.cat([index, here])
        if keys.numel() > 2 * k:
            bar = torch.topk(keys, k, sorted=False).values.min()
            stays = keys >= bar
            keys, index = keys[stays], index[stays]
    if n_pos <= k:
        return None
    return index[torch.topk(keys, k).indices]


#: score entries formed at a time by :func:`select_index_rows` (256 KB of float32)
ROW_BLOCK_ENTRIES = 1 << 16
#: score entries sampled at a time by the soft rule (at most ~7 MB of float64 keys, indices and
#: weights per block; 4x fewer Python rounds than 1 << 16: a CHTs update 246 -> 221 ms, CHTss
#: 404 -> 369 ms, paper MLP at 1 %, medians of six, alternating in one process)
SOFT_BLOCK_ENTRIES = 1 << 18
#: the fewest rows of a block (a last, shorter block joins the one before)
MIN_BLOCK_ROWS = 16


def row_blocks(n_rows: int, n_cols: int, entries: int = ROW_BLOCK_ENTRIES) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: consecutive blocks of rows of about ``entries`` entries each,
    none shorter than ``MIN_BLOCK_ROWS`` rows (unless the whole array is)."""
    step = max(MIN_BLOCK_ROWS, entries // max(1, n_cols))
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < n_rows:
        stop = min(n_rows, start + step)
        if n_rows - stop < MIN_BLOCK_ROWS:
            stop = n_rows
        bounds.append((start, stop))
        start = stop
    return bounds


def select_index_rows(
    score_rows: Callable[[int, int], Tensor],
    k: int,
    candidates: Tensor,
    *,
    generator: torch.Generator | None = None,
    fallback: Tensor | None = None,
    entries: int = ROW_BLOCK_ENTRIES,
) -> Tensor:
    """:func:`select_index` with ``rule="topk"`` for scores formed a block of rows at a time:
    ``score_rows(start, stop)`` returns rows ``[start, stop)`` of the ``(out, in)`` scores and
    is called once per block, in row order (a random score draws its numbers in the order the
    whole array would). The same choice, the same random numbers and the same order of the
    result as :func:`select_index` on the whole array, without it: between blocks only the
    positive candidates that can still be among the ``k`` best are kept (with their rank among
    all positive candidates, which the random tie-break needs)."""
    n_rows, n_cols = candidates.shape
    cand = candidates.bool()
    device = cand.device
    val = torch.zeros(0, dtype=torch.float64, device=device)  # the pool: score, flat index,
    idx = torch.zeros(0, dtype=torch.int64, device=device)  # and rank among the positive
    rank = torch.zeros(0, dtype=torch.int64, device=device)  # candidates (row-major)
    n_pos = 0
    bar: Tensor | None = None  # the k-th best score so far: anything below it is out for good
    for start, stop in row_blocks(n_rows, n_cols, entries):
        s = score_rows(start, stop).reshape(-1)
        if s.numel() != (stop - start) * n_cols:
            raise BrainsparseError(f"score rows {start}:{stop} have {s.numel()} entries; expected {(stop - start) * n_cols}")
        # only candidates with a finite positive score compete (as in select_index: a block has a
        # non-finite score exactly when the whole array has, so filtering per block is the same)
        here = (cand[start:stop].reshape(-1) & (s > 0)).nonzero().squeeze(1)
        v = s[here].double()
        del s
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            here, v = here[finite], v[finite]
        ranks = torch.arange(n_pos, n_pos + here.numel(), device=device)
        n_pos += here.numel()
        if bar is not None:
            stays = v >= bar
            here, v, ranks = here[stays], v[stays], ranks[stays]
        val = torch.cat([val, v])
        idx = torch.cat([idx, here + start * n_cols])
        rank = torch.cat([rank, ranks])
        if k > 0 and val.numel() > 2 * k:
            bar = torch.topk(val, k, sorted=False).values.min()
            stays = val >= bar
            val, idx, rank = val[stays], idx[stays], rank[stays]
    n_cand = count(cand)
    if k < 0 or k > n_cand:
        raise BrainsparseError(f"cannot select {k} links from {n_cand} candidates")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    if n_pos <= k:  # the pool never shrank: every positive candidate, in row-major order
        return _with_zero_scores(idx, k, cand.reshape(-1), fallback, generator)
    # _ranked over the pool: the k-th largest score splits it into sure winners and ties, of
    # which the first in the permuted order of all positive candidates win
    kth = torch.topk(val, k, sorted=False).values.min()
    relevant = val >= kth
    val, idx, rank = val[relevant], idx[relevant], rank[relevant]  # rank stays ascending
    if generator is None or _skip_tie_break(val.numel(), k, n_pos, generator):
        order = torch.arange(rank.numel(), device=device)
    else:
        perm = randperm(n_pos, generator=generator, device=device)
        is_relevant = torch.zeros(n_pos, dtype=torch.bool, device=device)
        is_relevant[rank] = True
        order = torch.searchsorted(rank, perm[is_relevant.index_select(0, perm).nonzero().squeeze(1)].long())
        del is_relevant, perm
    pk, pidx = val[order], idx[order]
    above = pk > kth
    tie = pk == kth
    take = above | (tie & (tie.cumsum(0) <= k - count(above)))
    pk, pidx = pk[take], pidx[take]
    return pidx[torch.argsort(pk, descending=True, stable=True)]


def _with_zero_scores(pos_index: Tensor, k: int, cand: Tensor, fallback: Tensor | None,
                      generator: torch.Generator | None) -> Tensor:
    """Too few positive scores: all of them (``pos_index``), then uniform among the fallback
    zero-score candidates of the flat bool ``cand``, then among any remaining candidate."""
    positive = torch.zeros_like(cand)
    positive[pos_index] = True
    missing = k - pos_index.numel()
    zero = cand & ~positive
    preferred = zero & fallback.reshape(-1).bool() if fallback is not None else zero
    pref_index = preferred.nonzero().squeeze(1)
    pick = _random_pick(pref_index, min(missing, pref_index.numel()), generator)
    missing -= pick.numel()
    parts = [pos_index, pick]
    if missing > 0:
        zero[pick] = False
        parts.append(_random_pick(zero.nonzero().squeeze(1), missing, generator))
    return torch.cat(parts)


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
    index = select_index(scores, k, candidates, rule=rule, temperature=temperature, generator=generator,
                         fallback=fallback)
    chosen = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    chosen[index] = True
    return chosen.view(candidates.shape)


def select_among(
    scores: Tensor,
    k: int,
    *,
    rule: str = "topk",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`select` over a 1-D vector of scores where every entry is a candidate (and the
    fallback): a bool vector with exactly ``k`` true entries.

    Used for removal on the links of a layer (``scores`` in the links' row-major order): it
    draws the same random numbers and makes the same choice as :func:`select` on the dense
    ``(out, in)`` scores with ``candidates = fallback = mask``, without any dense array.
    """
    rule = _check_arguments(rule, temperature)
    flat_scores = scores.reshape(-1)
    n = flat_scores.numel()
    if k < 0 or k > n:
        raise BrainsparseError(f"cannot select {k} links from {n} candidates")
    chosen = torch.zeros(n, dtype=torch.bool, device=flat_scores.device)
    if k == 0:
        return chosen
    if rule == "soft" and temperature == 0:
        chosen[_random_pick(torch.arange(n, device=chosen.device), k, generator)] = True
        return chosen
    pos_index, s = _positive(flat_scores, (flat_scores > 0).nonzero().squeeze(1))
    if pos_index.numel() > k:
        chosen[_pick_positive(pos_index, s, k, rule, temperature, generator)] = True
        return chosen
    chosen[pos_index] = True  # all positive ones, then uniform among the zero-score ones
    chosen[_random_pick((~chosen).nonzero().squeeze(1), k - pos_index.numel(), generator)] = True
    return chosen
