import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainsparse.errors import BrainsparseError
from brainsparse.selection import select, select_among, select_index


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_topk_takes_largest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.0, 0.3]])
    cand = torch.ones(2, 3, dtype=torch.bool)
    chosen = select(scores, 3, cand, rule="topk", generator=gen())
    assert chosen.tolist() == [[False, True, True], [True, False, False]]


def test_topk_respects_candidates():
    scores = torch.tensor([[5.0, 4.0], [3.0, 2.0]])
    cand = torch.tensor([[False, True], [True, True]])
    chosen = select(scores, 2, cand, generator=gen())
    assert chosen.tolist() == [[False, True], [True, False]]


def test_topk_ties_are_broken_randomly():
    scores = torch.ones(1, 100)
    cand = torch.ones(1, 100, dtype=torch.bool)
    a = select(scores, 10, cand, generator=gen(1))
    b = select(scores, 10, cand, generator=gen(2))
    assert int(a.sum()) == int(b.sum()) == 10
    assert not torch.equal(a, b)


def test_zero_scores_fill_from_fallback_only():
    scores = torch.zeros(4, 4)
    scores[0, 0] = 1.0
    cand = torch.ones(4, 4, dtype=torch.bool)
    fallback = torch.zeros(4, 4, dtype=torch.bool)
    fallback[1, :] = True
    chosen = select(scores, 3, cand, rule="soft", generator=gen(), fallback=fallback)
    assert chosen[0, 0]
    assert int(chosen[1].sum()) == 2
    assert int(chosen.sum()) == 3


def test_fallback_exhausted_uses_other_candidates():
    scores = torch.zeros(3, 3)
    cand = torch.ones(3, 3, dtype=torch.bool)
    fallback = torch.zeros(3, 3, dtype=torch.bool)
    fallback[0, 0] = True
    chosen = select(scores, 4, cand, generator=gen(), fallback=fallback)
    assert chosen[0, 0] and int(chosen.sum()) == 4


def test_soft_sampling_frequencies_follow_score_power():
    # With k = 1, sampling without replacement is one draw with p ∝ score^T.
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    cand = torch.ones(1, 3, dtype=torch.bool)
    g = gen(3)
    for temperature in (1.0, 2.0):
        counts = torch.zeros(3)
        n = 6000
        for _ in range(n):
            counts += select(scores, 1, cand, rule="soft", temperature=temperature, generator=g)[0].float()
        expected = scores[0] ** temperature / (scores[0] ** temperature).sum()
        assert torch.allclose(counts / n, expected, atol=0.025)


def test_soft_with_infinite_temperature_is_topk():
    scores = torch.rand(10, 10, generator=gen(5)) + 0.01
    cand = torch.ones(10, 10, dtype=torch.bool)
    assert torch.equal(
        select(scores, 17, cand, rule="soft", temperature=math.inf, generator=gen()),
        select(scores, 17, cand, rule="topk", generator=gen()),
    )


def test_soft_zero_temperature_is_uniform():
    scores = torch.tensor([[100.0, 1e-6]])
    cand = torch.ones(1, 2, dtype=torch.bool)
    g = gen(9)
    hits = sum(int(select(scores, 1, cand, rule="soft", temperature=0.0, generator=g)[0, 1]) for _ in range(2000))
    assert 850 < hits < 1150


def test_errors_name_the_problem():
    cand = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(BrainsparseError, match="rule"):
        select(torch.ones(2, 2), 1, cand, rule="greedy")
    with pytest.raises(BrainsparseError, match="cannot select 5"):
        select(torch.ones(2, 2), 5, cand)
    with pytest.raises(BrainsparseError, match="temperature"):
        select(torch.ones(2, 2), 1, cand, rule="soft", temperature=-1.0)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    frac=st.floats(0.0, 1.0),
    rule=st.sampled_from(["topk", "soft"]),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    seed=st.integers(0, 1000),
)
def test_exact_count_and_subset_of_candidates(rows, cols, frac, rule, temperature, seed):
    g = gen(seed)
    scores = torch.rand(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) > 0.5)
    cand = torch.rand(rows, cols, generator=g) > 0.3
    k = int(frac * int(cand.sum()))
    chosen = select(scores, k, cand, rule=rule, temperature=temperature, generator=g)
    assert int(chosen.sum()) == k
    assert not (chosen & ~cand).any()


def test_non_finite_scores_count_as_zero():
    scores = torch.tensor([[float("nan"), float("inf"), 2.0, 1.0]])
    cand = torch.ones(1, 4, dtype=torch.bool)
    chosen = select(scores, 2, cand, generator=gen())
    assert chosen[0, 2] and chosen[0, 3] and int(chosen.sum()) == 2
    chosen = select(scores, 3, cand, generator=gen())
    assert chosen[0, 2] and chosen[0, 3] and int(chosen.sum()) == 3


# ---------------------------------------------------------------- index and link-space forms
@st.composite
def _scored_masks(draw):
    rows, cols = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < draw(st.floats(0.1, 1.0))
    scores = torch.rand(rows, cols, generator=g)
    scores[torch.rand(rows, cols, generator=g) < draw(st.floats(0.0, 0.9))] = 0.0  # many zeros
    special = torch.tensor([float("inf"), float("nan"), -1.0])
    pos = torch.randint(0, rows * cols, (draw(st.integers(0, 2)),), generator=g)
    scores.view(-1)[pos] = special[: pos.numel()]
    return mask, scores * mask


@settings(max_examples=80, deadline=None)
@given(case=_scored_masks(), rule=st.sampled_from(["topk", "soft"]), temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_select_among_links_equals_dense_select(case, rule, temperature, frac, seed):
    mask, scores = case
    n = int(mask.sum())
    k = int(frac * n)
    dense = select(scores, k, mask, rule=rule, temperature=temperature, generator=gen(seed), fallback=mask)
    links = select_among(scores[mask], k, rule=rule, temperature=temperature, generator=gen(seed))
    assert int(links.sum()) == k
    expected = torch.zeros_like(mask)
    expected[mask] = links  # link order = row-major order of the mask
    assert torch.equal(dense, expected)


@settings(max_examples=60, deadline=None)
@given(case=_scored_masks(), rule=st.sampled_from(["topk", "soft"]), frac=st.floats(0.0, 1.0),
       seed=st.integers(0, 1000), use_fallback=st.booleans())
def test_select_index_is_select_as_indices(case, rule, frac, seed, use_fallback):
    cand, scores = case
    fallback = torch.rand(cand.shape, generator=gen(seed)) < 0.5 if use_fallback else None
    k = int(frac * int(cand.sum()))
    chosen = select(scores, k, cand, rule=rule, generator=gen(seed), fallback=fallback)
    index = select_index(scores, k, cand, rule=rule, generator=gen(seed), fallback=fallback)
    assert index.numel() == k == int(chosen.sum())
    assert sorted(index.tolist()) == chosen.view(-1).nonzero().squeeze(1).tolist()


def test_ranked_equals_a_full_stable_sort_of_the_permuted_candidates():
    """_ranked skips sorting all candidates; the choice and the random stream are those of the
    full stable sort (ties, integer keys, NaN, no generator), in descending key order. Where no
    tie at the k-th key needs breaking it skips the permutation too (the generator moves past
    it), and equal keys among the chosen keep candidate order; otherwise the order is the
    permuted one as well."""
    from brainsparse.selection import _ranked

    def reference(index, keys, k, generator):
        if k >= index.numel():
            return index
        if generator is not None:
            perm = torch.randperm(index.numel(), generator=generator)
            index, keys = index[perm], keys[perm]
        return index[torch.argsort(keys, descending=True, stable=True)[:k]]

    for trial in range(120):
        g = torch.Generator().manual_seed(trial)
        n = int(torch.randint(1, 400, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        keys = [torch.rand(n, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g).float(),
                torch.randint(0, 30, (n,), generator=g)][trial % 3]
        if trial % 5 == 0 and keys.is_floating_point():
            keys[torch.randint(0, n, (2,), generator=g)] = float("nan")
        index = torch.randperm(n, generator=g) * 3
        boundary_tie = k < n and not bool(torch.isnan(keys.double()).any()) and \
            int((keys >= torch.topk(keys, k).values.min()).sum()) > k
        for seeded in (False, True):
            gens = [torch.Generator().manual_seed(9) if seeded else None for _ in range(2)]
            got, expected = _ranked(index, keys, k, gens[0]), reference(index, keys, k, gens[1])
            assert torch.equal(got.sort().values, expected.sort().values), trial
            if seeded and boundary_tie or bool(torch.isnan(keys.double()).any()):
                assert torch.equal(got, expected), trial  # the permuted order itself
            position = {int(v): i for i, v in enumerate(index)}
            got_keys = keys[[position[int(v)] for v in got]]
            if k < n and not bool(torch.isnan(got_keys.double()).any()):  # (k >= n: all, as given)
                assert bool((got_keys[:-1] >= got_keys[1:]).all()), trial
            if seeded:
                assert torch.equal(gens[0].get_state(), gens[1].get_state())


@pytest.mark.parametrize("own_generator", [True, False])
def test_soft_selection_with_few_positive_scores_draws_as_top_k(own_generator):
    """With k or more wanted than positive scores the soft rule takes them all and fills at random,
    drawing exactly what the top-k rule draws: the one-pass sampler's draws are undone."""
    from brainsparse.selection import select_index

    scores = torch.zeros(6, 7)
    scores[1, 2], scores[4, 5] = 0.5, 2.0
    cand = torch.ones(6, 7, dtype=torch.bool)
    results, states = [], []
    for rule in ("soft", "topk"):
        torch.manual_seed(11)
        g = torch.Generator().manual_seed(5) if own_generator else None
        results.append(select_index(scores, 5, cand, rule=rule, generator=g))
        states.append((g if own_generator else torch.default_generator).get_state())
    assert torch.equal(results[0].sort().values, results[1].sort().values)
    assert torch.equal(states[0], states[1])
