"""Tests of brainsparse.topology: initial sparse connectivity and sparse weight init."""

from __future__ import annotations

import math
import time

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from networkx.algorithms import bipartite

from brainsparse._validation import link_count
from brainsparse.errors import BrainsparseError
from brainsparse.topology import (
    INITIALISERS,
    bipartite_receptive_field,
    bipartite_scale_free,
    bipartite_small_world,
    correlated,
    equal_partition,
    erk_densities,
    feature_correlation,
    initial_masks,
    kaiming_init,
    resort_chain,
    ring_lattice,
    scale_free_chain,
    sparse_weight_init,
    uniform,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ring_distance(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    d = (a - b).abs() % n
    return torch.minimum(d, n - d)


def rank_aligned(first: torch.Tensor, second: torch.Tensor) -> bool:
    """True if first[a] > first[b] implies second[a] >= second[b] for all a, b."""
    gt = first[:, None] > first[None, :]
    return bool((second[:, None] >= second[None, :])[gt].all())


# every single-layer initialiser, with a fixed choice of its extra parameters
SINGLE = {
    "uniform": lambda o, i, d, g: uniform(o, i, d, generator=g),
    "bsw0": lambda o, i, d, g: bipartite_small_world(o, i, d, beta=0.0, generator=g),
    "bsw": lambda o, i, d, g: bipartite_small_world(o, i, d, beta=0.25, generator=g),
    "bsw1": lambda o, i, d, g: bipartite_small_world(o, i, d, beta=1.0, generator=g),
    "bsf": lambda o, i, d, g: bipartite_scale_free(o, i, d, generator=g),
    "brf0_fixed": lambda o, i, d, g: bipartite_receptive_field(o, i, d, r=0.0, degree="fixed", generator=g),
    "brf_fixed": lambda o, i, d, g: bipartite_receptive_field(o, i, d, r=0.3, degree="fixed", generator=g),
    "brf1_fixed": lambda o, i, d, g: bipartite_receptive_field(o, i, d, r=1.0, degree="fixed", generator=g),
    "csti": lambda o, i, d, g: correlated(
        o, i, d, correlation=feature_correlation(torch.randn(30, 7, generator=gen(5))), generator=g
    ),
}


# ---------------------------------------------------------------------------
# exact link counts, shapes, determinism
# ---------------------------------------------------------------------------


@FAST
@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    density=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_link_count_every_initialiser(out: int, inp: int, density: float, seed: int) -> None:
    k = link_count(density, out, inp)
    for name, make in SINGLE.items():
        mask = make(out, inp, density, gen(seed))
        assert mask.dtype == torch.bool, name
        assert tuple(mask.shape) == (out, inp), name
        assert int(mask.sum()) == k, name


@FAST
@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    density=st.floats(0.001, 1.0),
    r=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_brf_uniform_degree_count_or_clear_error(out: int, inp: int, density: float, r: float, seed: int) -> None:
    k = link_count(density, out, inp)
    n_min = min(out, inp)
    if k < n_min:
        with pytest.raises(BrainsparseError, match="at least one link"):
            bipartite_receptive_field(out, inp, density, r=r, degree="uniform", generator=gen(seed))
        return
    mask = bipartite_receptive_field(out, inp, density, r=r, degree="uniform", generator=gen(seed))
    assert int(mask.sum()) == k
    small_side_degree = mask.sum(dim=1) if out <= inp else mask.sum(dim=0)
    assert int(small_side_degree.min()) >= 1


@pytest.mark.parametrize("name", [n for n in SINGLE if n not in ("bsw0", "csti")])
def test_same_seed_same_mask_different_seed_different(name: str) -> None:
    make = SINGLE[name]
    a = make(64, 48, 0.1, gen(1))
    b = make(64, 48, 0.1, gen(1))
    c = make(64, 48, 0.1, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_csti_ties_are_broken_by_the_generator() -> None:
    flat = torch.ones(8, 8)  # every position ties
    a = correlated(16, 8, 0.2, correlation=flat, generator=gen(1))
    b = correlated(16, 8, 0.2, correlation=flat, generator=gen(1))
    c = correlated(16, 8, 0.2, correlation=flat, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == link_count(0.2, 16, 8)


def test_global_random_state_is_untouched() -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    for make in SINGLE.values():
        make(30, 20, 0.2, gen(3))
    equal_partition(uniform(30, 20, 0.2, generator=gen(0)), generator=gen(0))
    sparse_weight_init(torch.empty(30, 20), uniform(30, 20, 0.2, generator=gen(0)), generator=gen(0))
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), "half"])
@pytest.mark.parametrize("name", list(SINGLE))
def test_bad_density_names_the_value(name: str, density: object) -> None:
    with pytest.raises(BrainsparseError, match=r"density .*allowed") as info:
        SINGLE[name](10, 10, density, gen())
    assert repr(density) in str(info.value)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_bad_beta(beta: float) -> None:
    with pytest.raises(BrainsparseError, match="beta") as info:
        bipartite_small_world(10, 10, 0.1, beta=beta, generator=gen())
    assert repr(beta) in str(info.value) and "[0, 1]" in str(info.value).replace("0 <= beta <= 1", "[0, 1]")


@pytest.mark.parametrize("r", [-0.5, 1.01])
def test_bad_r(r: float) -> None:
    with pytest.raises(BrainsparseError, match="r ") as info:
        bipartite_receptive_field(10, 10, 0.5, r=r, generator=gen())
    assert repr(r) in str(info.value)


def test_bad_degree_and_generator_and_shape() -> None:
    with pytest.raises(BrainsparseError, match="'poisson'"):
        bipartite_receptive_field(10, 10, 0.5, degree="poisson", generator=gen())
    with pytest.raises(BrainsparseError, match="torch.Generator"):
        uniform(10, 10, 0.5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(BrainsparseError, match="out_features"):
        uniform(0, 10, 0.5, generator=gen())


def test_unknown_init_lists_allowed_names() -> None:
    with pytest.raises(BrainsparseError, match="'foo'") as info:
        initial_masks([(10, 10)], 0.1, "foo", generator=gen())
    for name in ("uniform", "er", "erk", "bsw", "bsf", "brf", "csti"):
        assert name in str(info.value)


def test_csti_without_correlation_says_what_is_needed() -> None:
    with pytest.raises(BrainsparseError, match="init 'csti' needs input data \\(a correlation matrix\\)"):
        initial_masks([(10, 10)], 0.1, "csti", generator=gen())


def test_initial_masks_bad_density_length_and_init_params() -> None:
    with pytest.raises(BrainsparseError, match="2 values for 3 layers"):
        initial_masks([(10, 10)] * 3, [0.1, 0.2], "uniform", generator=gen())
    with pytest.raises(BrainsparseError, match=r"density\[1\] 1.5"):
        initial_masks([(10, 10)] * 2, [0.1, 1.5], "bsw", generator=gen())
    with pytest.raises(BrainsparseError, match="beta 2"):
        initial_masks([(10, 10)], 0.1, "bsw", beta=2, generator=gen())
    with pytest.raises(BrainsparseError, match="r -1"):
        initial_masks([(10, 10)], 0.1, "brf", r=-1, generator=gen())
    with pytest.raises(BrainsparseError, match="single number"):
        initial_masks([(10, 10)] * 2, [0.1, 0.2], "erk", generator=gen())


# ---------------------------------------------------------------------------
# BSW
# ---------------------------------------------------------------------------


@FAST
@given(out=st.integers(1, 60), inp=st.integers(1, 60), density=st.floats(0.001, 1.0))
def test_bsw_beta0_is_a_ring_lattice(out: int, inp: int, density: float) -> None:
    mask = bipartite_small_world(out, inp, density, beta=0.0, generator=gen())
    assert torch.equal(mask, ring_lattice(out, inp, density))
    k = link_count(density, out, inp)
    n_min, n_max = min(out, inp), max(out, inp)
    a = mask if out <= inp else mask.t()  # rows: smaller side, columns: larger side
    col_deg = a.sum(dim=0)
    assert int(col_deg.max() - col_deg.min()) <= 1
    assert abs(float(col_deg.double().mean()) - k / n_max) < 1e-9
    # every larger-side node links to the smaller-side nodes nearest its ring position
    rows, cols = torch.nonzero(a, as_tuple=True)
    pos = (cols.double() + 0.5) * n_min / n_max - 0.5
    diff = (rows.double() - pos).abs() % n_min
    dist = torch.minimum(diff, n_min - diff)
    assert bool((dist <= (col_deg[cols].double() + 1) / 2 + 1e-9).all())


def test_bsw_beta0_square_is_a_diagonal_band() -> None:
    mask = bipartite_small_world(100, 100, 0.05, beta=0.0, generator=gen())
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert int(ring_distance(rows, cols, 100).max()) <= 3  # k = 5 per column: |i - j| <= 2 (+1 slack)
    assert int(mask.sum(dim=0).min()) == int(mask.sum(dim=0).max()) == 5


def _bipartite_clustering(mask: torch.Tensor) -> float:
    out, inp = mask.shape
    graph = nx.Graph()
    graph.add_nodes_from(range(out + inp))
    rows, cols = torch.nonzero(mask, as_tuple=True)
    graph.add_edges_from(zip(rows.tolist(), (cols + out).tolist()))
    return bipartite.average_clustering(graph)


def test_bsw_clustering_falls_as_beta_grows() -> None:
    def clustering(beta: float) -> float:
        return float(
            np.mean(
                [
                    _bipartite_clustering(bipartite_small_world(100, 100, 0.05, beta=beta, generator=gen(s)))
                    for s in range(3)
                ]
            )
        )

    c0, c25, c1 = clustering(0.0), clustering(0.25), clustering(1.0)
    assert c0 > c25 > c1
    assert c0 > 2 * c1


def test_bsw_beta1_forgets_the_lattice() -> None:
    density = 0.05
    lattice = ring_lattice(200, 200, density)
    overlaps = [
        int((bipartite_small_world(200, 200, density, beta=1.0, generator=gen(s)) & lattice).sum()) for s in range(3)
    ]
    expected = density * int(lattice.sum())  # an ER mask hits a fixed set of K positions K·d times on average
    assert np.mean(overlaps) < 3 * expected + 10
    partial = int((bipartite_small_world(200, 200, density, beta=0.25, generator=gen(0)) & lattice).sum())
    assert 0.65 * int(lattice.sum()) < partial < 0.85 * int(lattice.sum())


# ---------------------------------------------------------------------------
# BSF, equal partition, resort
# ---------------------------------------------------------------------------


def _powerlaw_exponent(degrees: torch.Tensor, xmin: int) -> float:
    """Discrete power-law exponent, Clauset et al. continuous approximation with xmin - 1/2."""
    x = degrees[degrees >= xmin].double()
    return 1.0 + x.numel() / float(torch.log(x / (xmin - 0.5)).sum())


def test_bsf_degrees_are_heavy_tailed() -> None:
    exponents = []
    for seed in range(2):
        mask = bipartite_scale_free(500, 500, 0.02, generator=gen(seed))
        degrees = torch.cat([mask.sum(dim=0), mask.sum(dim=1)])
        assert int(degrees.max()) > 4 * float(degrees.float().mean())
        exponents.append(_powerlaw_exponent(degrees, xmin=8))
    assert 2.0 <= float(np.mean(exponents)) <= 3.5
    # an ER mask of the same size has no hubs
    er = uniform(500, 500, 0.02, generator=gen(0))
    er_degrees = torch.cat([er.sum(dim=0), er.sum(dim=1)])
    assert int(er_degrees.max()) < 3 * float(er_degrees.float().mean())


@FAST
@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    density=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_equal_partition_balances_inputs_and_keeps_row_degrees(out: int, inp: int, density: float, seed: int) -> None:
    mask = bipartite_scale_free(out, inp, density, generator=gen(seed))
    before = mask.clone()
    balanced = equal_partition(mask, generator=gen(seed + 1))
    assert torch.equal(mask, before)  # input untouched
    assert torch.equal(balanced.sum(dim=1), mask.sum(dim=1))
    k = int(mask.sum())
    col = balanced.sum(dim=0)
    assert int(col.min()) >= k // inp and int(col.max()) <= -(-k // inp)
    assert int(col.max() - col.min()) <= 1


@FAST
@given(
    sizes=st.lists(st.integers(1, 25), min_size=2, max_size=5),
    density=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_resort_chain_rank_aligns_hidden_degrees(sizes: list[int], density: float, seed: int) -> None:
    shapes = [(sizes[l + 1], sizes[l]) for l in range(len(sizes) - 1)]
    masks = [uniform(o, i, density, generator=gen(seed + l)) for l, (o, i) in enumerate(shapes)]
    resorted = resort_chain(masks)
    assert torch.equal(resorted[0], masks[0])
    for l in range(1, len(masks)):
        assert int(resorted[l].sum()) == int(masks[l].sum())
        assert torch.equal(resorted[l].sum(dim=1), masks[l].sum(dim=1))
        assert torch.equal(resorted[l].sum(dim=0).sort().values, masks[l].sum(dim=0).sort().values)
        assert rank_aligned(resorted[l - 1].sum(dim=1), resorted[l].sum(dim=0))


def test_resort_chain_rejects_a_broken_chain() -> None:
    with pytest.raises(BrainsparseError, match="chain"):
        resort_chain([torch.ones(5, 4, dtype=torch.bool), torch.ones(3, 6, dtype=torch.bool)])


def test_scale_free_chain() -> None:
    shapes = [(60, 40), (60, 60), (30, 60)]
    masks = scale_free_chain(shapes, 0.1, generator=gen(0))
    assert [tuple(m.shape) for m in masks] == shapes
    assert [int(m.sum()) for m in masks] == [link_count(0.1, o, i) for o, i in shapes]
    first_cols = masks[0].sum(dim=0)
    assert int(first_cols.max() - first_cols.min()) <= 1
    for l in range(1, len(masks)):
        assert rank_aligned(masks[l - 1].sum(dim=1), masks[l].sum(dim=0))
    again = scale_free_chain(shapes, [0.1, 0.1, 0.1], generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    with pytest.raises(BrainsparseError, match="chain"):
        scale_free_chain([(60, 40), (60, 50)], 0.1, generator=gen(0))


# ---------------------------------------------------------------------------
# BRF
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 40), (30, 100), (100, 30), (512, 1376)])
@pytest.mark.parametrize("degree", ["fixed", "uniform"])
def test_brf_r0_links_lie_in_the_receptive_window(shape: tuple[int, int], degree: str) -> None:
    out, inp = shape
    mask = bipartite_receptive_field(out, inp, 0.1, r=0.0, degree=degree, generator=gen(0))
    a = mask if out <= inp else mask.t()
    n_min, n_max = a.shape
    centres = torch.floor(torch.arange(n_min, dtype=torch.float64) * n_max / n_min + 0.5).long()  # half up
    rows, cols = torch.nonzero(a, as_tuple=True)
    k = a.sum(dim=1)
    assert bool((ring_distance(cols, centres[rows], n_max) <= k[rows] // 2).all())
    # centres cover the whole larger side (not the integer-stride bug)
    assert int(cols.max()) >= n_max - n_max // n_min - int(k.max())


def test_brf_r1_looks_uniform_and_r_controls_locality() -> None:
    def local_fraction(r: float) -> float:
        mask = bipartite_receptive_field(200, 200, 0.1, r=r, degree="fixed", generator=gen(0))
        rows, cols = torch.nonzero(mask, as_tuple=True)
        return float((ring_distance(rows, cols, 200) <= 20).double().mean())  # 41 of 200 columns

    near_uniform = local_fraction(1.0)
    assert abs(near_uniform - 41 / 200) < 0.03
    assert local_fraction(0.0) == 1.0
    assert local_fraction(0.0) > local_fraction(0.3) > local_fraction(0.7) > near_uniform - 0.03
    # r = 1: column degrees look binomial (no hubs, no structure)
    mask = bipartite_receptive_field(200, 200, 0.1, r=1.0, degree="fixed", generator=gen(1))
    col = mask.sum(dim=0).double()
    assert 0.5 < float(col.var()) / (200 * 0.1 * 0.9) < 1.6


def test_brf_fixed_degrees_and_orientation() -> None:
    mask = bipartite_receptive_field(30, 100, 0.1, r=0.5, degree="fixed", generator=gen(0))
    rows = mask.sum(dim=1)
    assert int(rows.min()) == 10 and int(rows.max()) == 10  # smaller side = outputs, k = 10
    mask = bipartite_receptive_field(100, 30, 0.1, r=0.5, degree="fixed", generator=gen(0))
    assert int(mask.sum(dim=0).min()) == int(mask.sum(dim=0).max()) == 10  # smaller side = inputs


# ---------------------------------------------------------------------------
# CSTI
# ---------------------------------------------------------------------------


def test_feature_correlation_matches_numpy_and_zeroes_nan_and_diagonal() -> None:
    x = torch.randn(200, 6, generator=gen(0), dtype=torch.float64)
    x[:, 2] = 3.0  # zero variance
    corr = feature_correlation(x)
    assert corr.shape == (6, 6)
    assert torch.all(torch.diagonal(corr) == 0)
    assert torch.all(corr[2] == 0) and torch.all(corr[:, 2] == 0)
    keep = [0, 1, 3, 4, 5]
    expected = np.corrcoef(x[:, keep].numpy(), rowvar=False)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(corr[keep][:, keep].numpy(), expected, atol=1e-10)
    assert feature_correlation(torch.ones(5, 3)).abs().sum() == 0
    with pytest.raises(BrainsparseError):
        feature_correlation(torch.ones(5))


def test_csti_keeps_the_most_correlated_pairs() -> None:
    g = gen(0)
    x = torch.randn(2000, 10, generator=g)
    x[:, 7] = x[:, 3] + 0.05 * torch.randn(2000, generator=g)
    x[:, 5] = -x[:, 1] + 0.1 * torch.randn(2000, generator=g)
    corr = feature_correlation(x)
    mask = correlated(10, 10, 0.04, correlation=corr, generator=gen(1))  # K = 4
    expected = {(3, 7), (7, 3), (1, 5), (5, 1)}
    assert set(map(tuple, torch.nonzero(mask).tolist())) == expected
    # a wider layer tiles the matrix: entry (a, i) uses corr[a % 10, i % 10]
    wide = correlated(20, 10, 0.04, correlation=corr, generator=gen(1))  # K = 8
    assert set(map(tuple, torch.nonzero(wide).tolist())) == expected | {(a + 10, i) for a, i in expected}


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------


def test_sparse_weight_init_std_uses_density_and_fan_in() -> None:
    out, inp, d = 1000, 2000, 0.1
    mask = uniform(out, inp, d, generator=gen(0))
    weight = torch.nn.Parameter(torch.full((out, inp), 7.0))
    sparse_weight_init(weight, mask, generator=gen(1))
    assert torch.all(weight.detach()[~mask] == 0)
    std = float(weight.detach()[mask].std())
    assert abs(std / math.sqrt(2.0 / (d * inp)) - 1.0) < 0.02
    w2 = torch.empty(out, inp)
    sparse_weight_init(w2, mask, 0.2, generator=gen(1))
    assert abs(float(w2[mask].std()) / math.sqrt(2.0 / (0.2 * inp)) - 1.0) < 0.02
    w3 = torch.empty(out, inp)
    kaiming_init(w3, mask, generator=gen(1))
    assert torch.all(w3[~mask] == 0)
    assert abs(float(w3[mask].std()) / math.sqrt(2.0 / inp) - 1.0) < 0.02
    w4 = torch.empty(out, inp)
    sparse_weight_init(w4, mask, generator=gen(1))
    assert torch.equal(w4, weight.detach())  # deterministic


def test_weight_init_bad_input() -> None:
    mask = torch.zeros(4, 5, dtype=torch.bool)
    with pytest.raises(BrainsparseError, match="0 links"):
        sparse_weight_init(torch.empty(4, 5), mask, generator=gen())
    with pytest.raises(BrainsparseError, match="does not match"):
        sparse_weight_init(torch.empty(5, 4), mask, generator=gen())
    with pytest.raises(BrainsparseError, match="density 2"):
        sparse_weight_init(torch.empty(4, 5), mask, 2, generator=gen())


# ---------------------------------------------------------------------------
# ERK and the registry
# ---------------------------------------------------------------------------


@FAST
@given(
    shapes=st.lists(st.tuples(st.integers(1, 2000), st.integers(1, 2000)), min_size=1, max_size=6),
    density=st.floats(0.001, 1.0),
)
def test_erk_densities_meet_the_budget(shapes: list[tuple[int, int]], density: float) -> None:
    dens = erk_densities(shapes, density)
    sizes = [o * i for o, i in shapes]
    assert all(0.0 < d <= 1.0 for d in dens)
    assert math.isclose(sum(d * n for d, n in zip(dens, sizes)), density * sum(sizes), rel_tol=1e-9)
    # non-dense layers keep the ERK proportion (out + in) / (out * in)
    ratios = [d / ((o + i) / (o * i)) for d, (o, i) in zip(dens, shapes) if d < 1.0]
    assert all(math.isclose(q, ratios[0], rel_tol=1e-9) for q in ratios)


def test_erk_makes_small_layers_dense() -> None:
    dens = erk_densities([(10, 784), (1000, 1000), (10, 10)], 0.3)
    assert dens[2] == 1.0 and dens[0] > dens[1]


@pytest.mark.parametrize("init", ["uniform", "er", "erk", "bsw", "bsf", "brf", "csti"])
def test_initial_masks_every_init(init: str) -> None:
    shapes = [(60, 40), (60, 60), (10, 60)]
    corr = feature_correlation(torch.randn(100, 40, generator=gen(9)))
    masks = initial_masks(shapes, 0.2, init, generator=gen(0), correlation=corr)
    assert [tuple(m.shape) for m in masks] == shapes
    assert all(m.dtype == torch.bool for m in masks)
    if init == "erk":
        dens = erk_densities(shapes, 0.2)
        assert [int(m.sum()) for m in masks] == [link_count(d, o, i) for d, (o, i) in zip(dens, shapes)]
    else:
        assert [int(m.sum()) for m in masks] == [link_count(0.2, o, i) for o, i in shapes]
    again = initial_masks(shapes, 0.2, init.upper(), generator=gen(0), correlation=corr)
    assert all(torch.equal(a, b) for a, b in zip(masks, again))


def test_initial_masks_per_layer_density_and_unchained_bsf() -> None:
    shapes = [(30, 20), (30, 30), (8, 8)]  # the last layer does not chain
    masks = initial_masks(shapes, [0.1, 0.2, 0.5], "bsf", generator=gen(0))
    assert [int(m.sum()) for m in masks] == [link_count(d, o, i) for d, (o, i) in zip([0.1, 0.2, 0.5], shapes)]
    assert set(INITIALISERS) == {"uniform", "er", "bsw", "bsf", "brf", "csti"}
    assert INITIALISERS["er"] is INITIALISERS["uniform"]


@pytest.mark.slow
def test_initialisers_are_fast_on_a_mnist_layer() -> None:
    corr = feature_correlation(torch.rand(500, 784, generator=gen(0)))
    limits = {"bsf": 2.0}
    for name, make in {
        "uniform": lambda g: uniform(1568, 1568, 0.01, generator=g),
        "bsw": lambda g: bipartite_small_world(1568, 1568, 0.01, generator=g),
        "bsf": lambda g: bipartite_scale_free(1568, 1568, 0.01, generator=g),
        "brf": lambda g: bipartite_receptive_field(1568, 1568, 0.01, generator=g),
        "csti": lambda g: correlated(1568, 1568, 0.01, correlation=corr, generator=g),
    }.items():
        start = time.perf_counter()
        make(gen(0))
        assert time.perf_counter() - start < limits.get(name, 1.0), name
