"""Tests for brainsparse.scoring.cannistraci_hebb (CH link prediction on L3 paths)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainsparse.errors import BrainsparseError
from brainsparse.kernels import _cpu_ext, available
from brainsparse.scoring.cannistraci_hebb import (
    VARIANTS,
    ch_l3,
    ch_l3_exact,
    ch_l3_matrix,
    ch_l3_node_reference,
    ch_l3_reference,
)

# Notation in the comments: outputs (rows) o0, o1, ...; inputs (columns) i0, i1, ...
# N(x) = neighbours of x. A path for candidate (u, v) is u – z1 – z2 – v.


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _random_mask(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_out, n_in, generator=g) < density


# --------------------------------------------------------------------------------------------
# 1. hand-worked graphs
# --------------------------------------------------------------------------------------------
# Graph P (3×3), a chain o0 – i0 – o1 – i1 – o2 – i2:
#   o0: {i0}        i0: {o0, o1}
#   o1: {i0, i1}    i1: {o1, o2}
#   o2: {i1, i2}    i2: {o2}
# Candidates (absent pairs): (o0,i1), (o0,i2), (o1,i2), (o2,i0).
# (o0,i1): z1 ∈ N(o0) = {i0}; z2 ∈ N(i0) ∩ N(i1) \ {o0} = {o1}  → one path o0–i0–o1–i1.
#   community {i0, o1}.
#   i0: N = {o0, o1}; inside community {o1} → di = 1; de = 2 − 1 − 1 (linked to u=o0) = 0.
#   o1: N = {i0, i1}; inside {i0} → di = 1; de = 2 − 1 − 1 (linked to v=i1) = 0.
#   CH3 = 1/sqrt(1·1) = 1;  CH2 = sqrt(2·2)/sqrt(1·1) = 2;  CH3.1 = 1/sqrt((1/2)(1/2)) = 2.
# (o0,i2): z1 = i0, N(i0) = {o0, o1}, N(i2) = {o2}: no common z2 → no L3 path → score 0
#   (o0 and i2 are connected, but only at distance 5).
# (o1,i2): z1 ∈ {i0, i1}; N(i2) = {o2}; only i1 ~ o2 → path o1–i1–o2–i2, community {i1, o2}:
#   i1: di = 1 (o2), de = 2 − 1 − 1 = 0;  o2: di = 1 (i1), de = 2 − 1 − 1 = 0 → CH3 1, CH2 2.
# (o2,i0): z1 ∈ {i1, i2}; N(i0) = {o0, o1}; i1 ~ o1 → path o2–i1–o1–i0, community {i1, o1}:
#   i1: di = 1, de = 2 − 1 − 1 = 0;  o1: di = 1, de = 2 − 1 − 1 = 0 → CH3 1, CH2 2.
CHAIN = _mask([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
CHAIN_CH3 = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
CHAIN_CH2 = [[0, 2, 0], [0, 0, 2], [2, 0, 0]]

# Graph G (4×3):
#   o0: {i0, i1}         i0: {o0, o1}        deg: o0 2, o1 3, o2 2, o3 1
#   o1: {i0, i1, i2}     i1: {o0, o1, o2}         i0 2, i1 3, i2 3
#   o2: {i1, i2}         i2: {o1, o2, o3}
#   o3: {i2}
# Candidates: (o0,i2), (o2,i0), (o3,i0), (o3,i1).
#
# (o0,i2): N(o0) = {i0, i1}, N(i2) = {o1, o2, o3}.
#   i0: N(i0) ∩ N(i2) = {o1}      → path o0–i0–o1–i2
#   i1: N(i1) ∩ N(i2) = {o1, o2}  → paths o0–i1–o1–i2, o0–i1–o2–i2
#   community {i0, i1, o1, o2}
#   i0: N {o0,o1} → di 1 (o1), de = 2 − 1 − 1 = 0
#   i1: N {o0,o1,o2} → di 2 (o1,o2), de = 3 − 2 − 1 = 0
#   o1: N {i0,i1,i2} → di 2 (i0,i1), de = 3 − 2 − 1 = 0
#   o2: N {i1,i2} → di 1 (i1), de = 2 − 1 − 1 = 0
#   CH3 = 1 + 1 + 1 = 3
#   CH2 = sqrt(2·3) + sqrt(3·3) + sqrt(3·2) = 3 + 2·sqrt(6)
#
# (o2,i0): N(o2) = {i1, i2}, N(i0) = {o0, o1}.
#   i1: N(i1) ∩ N(i0) = {o0, o1}  → paths o2–i1–o0–i0, o2–i1–o1–i0
#   i2: N(i2) ∩ N(i0) = {o1}      → path  o2–i2–o1–i0
#   community {i1, i2, o0, o1}
#   i1: N {o0,o1,o2} → di 2 (o0,o1), de = 3 − 2 − 1 = 0
#   i2: N {o1,o2,o3} → di 1 (o1), de = 3 − 1 − 1 = 1      (o3 is outside)
#   o0: N {i0,i1} → di 1 (i1), de = 2 − 1 − 1 = 0
#   o1: N {i0,i1,i2} → di 2 (i1,i2), de = 3 − 2 − 1 = 0
#   CH3 = 1/sqrt(1·1) + 1/sqrt(1·1) + 1/sqrt(2·1) = 2 + 1/sqrt(2)
#   CH2 = sqrt(3·2)/1 + sqrt(3·3)/1 + sqrt(2·3)/sqrt(2·1) = sqrt(6) + 3 + sqrt(3)
#
# (o3,i0): N(o3) = {i2}; N(i2) ∩ N(i0) = {o1} → path o3–i2–o1–i0, community {i2, o1}
#   i2: N {o1,o2,o3} → di 1 (o1), de = 3 − 1 − 1 = 1      (o2 is outside)
#   o1: N {i0,i1,i2} → di 1 (i2), de = 3 − 1 − 1 = 1      (i1 is outside)
#   CH3 = 1/sqrt(2·2) = 0.5;  CH2 = sqrt(2·2)/sqrt(2·2) = 1
#
# (o3,i1): N(o3) = {i2}; N(i2) ∩ N(i1) = {o1, o2} → paths o3–i2–o1–i1, o3–i2–o2–i1
#   community {i2, o1, o2}
#   i2: N {o1,o2,o3} → di 2 (o1,o2), de = 3 − 2 − 1 = 0
#   o1: N {i0,i1,i2} → di 1 (i2), de = 3 − 1 − 1 = 1      (i0 is outside; i1 is the seed v)
#   o2: N {i1,i2} → di 1 (i2), de = 2 − 1 − 1 = 0
#   CH3 = 1/sqrt(1·2) + 1/sqrt(1·1) = 1/sqrt(2) + 1
#   CH2 = sqrt(3·2)/sqrt(1·2) + sqrt(3·2)/sqrt(1·1) = sqrt(3) + sqrt(6)
#   CH3.1 = 1/sqrt((1/3 + 0)(1/2 + 1)) + 1/sqrt((1/3 + 0)(1/2 + 0)) = sqrt(2) + sqrt(6)
G43 = _mask([[1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1]])
G43_CH3 = {(0, 2): 3.0, (2, 0): 2 + 1 / math.sqrt(2), (3, 0): 0.5, (3, 1): 1 + 1 / math.sqrt(2)}
G43_CH2 = {
    (0, 2): 3 + 2 * math.sqrt(6),
    (2, 0): math.sqrt(6) + 3 + math.sqrt(3),
    (3, 0): 1.0,
    (3, 1): math.sqrt(3) + math.sqrt(6),
}

# Graph H (3×4), a hub o1 linked to every input:
#   o0: {i0}   o1: {i0, i1, i2, i3}   o2: {i1}
# (o0,i1): z1 = i0; N(i0) ∩ N(i1) = {o1} → path o0–i0–o1–i1, community {i0, o1}
#   i0: N {o0,o1} → di 1, de = 2 − 1 − 1 = 0
#   o1: N {i0,i1,i2,i3} → di 1 (i0), de = 4 − 1 − 1 = 2   (i2, i3 are outside)
#   CH3 = 1/sqrt(1·3) = 1/sqrt(3);  CH2 = sqrt(2·2)/sqrt(1·3) = 2/sqrt(3)
#   CH3.1 = 1/sqrt((1/2 + 0)(1/2 + 2)) = 1/sqrt(1.25)
# (o0,i3) has the same structure; (o2,i3): z1 = i1; N(i1) ∩ N(i3) = {o1} → path o2–i1–o1–i3
#   i1: N {o1,o2} → di 1, de 0;  o1: di 1 (i1), de = 4 − 1 − 1 = 2 → CH3 1/sqrt(3).
HUB = _mask([[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]])


@pytest.mark.parametrize("method", ["sparse", "enumerate"])
def test_hand_worked_chain(method: str) -> None:
    for variant, expected in (("CH3", CHAIN_CH3), ("CH2", CHAIN_CH2), ("CH3.1", CHAIN_CH2)):
        got = ch_l3_exact(CHAIN, variant, method=method)
        assert got.flatten().tolist() == pytest.approx(sum(expected, []))
    got = ch_l3(CHAIN, "CH3", exact=True)
    assert got[0, 2].item() == 0.0  # candidate without an L3 path
    assert (got[CHAIN] == 0).all()  # existing links


@pytest.mark.parametrize("method", ["sparse", "enumerate"])
def test_hand_worked_4x3(method: str) -> None:
    for variant, expected in (("CH3", G43_CH3), ("CH2", G43_CH2)):
        got = ch_l3_exact(G43, variant, method=method)
        assert got.dtype == torch.float32 and got.shape == (4, 3)
        for (u, v), value in expected.items():
            assert got[u, v].item() == pytest.approx(value, rel=1e-6)
        assert (got[G43] == 0).all()
        assert int((got != 0).sum()) == len(expected)  # the four candidates all have paths
    got31 = ch_l3(G43, "CH3.1", exact=True)
    assert got31[3, 1].item() == pytest.approx(math.sqrt(2) + math.sqrt(6), rel=1e-6)


def test_hand_worked_hub() -> None:
    ch3 = ch_l3(HUB, "CH3")
    ch2 = ch_l3(HUB, "ch2")
    ch31 = ch_l3(HUB, "ch3.1")
    for u, v in ((0, 1), (0, 3), (2, 3)):
        assert ch3[u, v].item() == pytest.approx(1 / math.sqrt(3), rel=1e-6)
    assert ch2[0, 1].item() == pytest.approx(2 / math.sqrt(3), rel=1e-6)
    assert ch31[0, 1].item() == pytest.approx(1 / math.sqrt(1.25), rel=1e-6)
    assert (ch3[HUB] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mask", [CHAIN, G43, HUB])
def test_reference_agrees_with_hand_values(mask: torch.Tensor, variant: str) -> None:
    torch.testing.assert_close(ch_l3_reference(mask, variant), ch_l3_exact(mask, variant))


# --------------------------------------------------------------------------------------------
# 2. exact vectorised == slow reference on random graphs
# --------------------------------------------------------------------------------------------
@st.composite
def masks(draw, max_side: int = 12) -> torch.Tensor:
    n_out = draw(st.integers(1, max_side))
    n_in = draw(st.integers(1, max_side))
    density = draw(st.floats(0.0, 0.8))
    seed = draw(st.integers(0, 2**31 - 1))
    return _random_mask(n_out, n_in, density, seed)


@settings(max_examples=60, deadline=None)
@given(mask=masks(), variant=st.sampled_from(VARIANTS))
def test_exact_matches_reference(mask: torch.Tensor, variant: str) -> None:
    ref = ch_l3_reference(mask, variant)
    for method in ("auto", "sparse", "enumerate"):
        got = ch_l3_exact(mask, variant, method=method)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ch_l3(mask, variant, exact=True), ch_l3_exact(mask, variant))


@settings(max_examples=25, deadline=None)
@given(mask=masks(max_side=20), variant=st.sampled_from(VARIANTS))
def test_scores_symmetric_under_transpose(mask: torch.Tensor, variant: str) -> None:
    # swapping the roles of inputs and outputs reverses every path u–z1–z2–v
    torch.testing.assert_close(ch_l3_exact(mask.t(), variant), ch_l3_exact(mask, variant).t())
    torch.testing.assert_close(ch_l3_matrix(mask.t(), variant), ch_l3_matrix(mask, variant).t())


def test_sparse_and_enumerate_agree_on_larger_graph() -> None:
    mask = _random_mask(150, 110, 0.06, seed=3)
    for variant in VARIANTS:
        a = ch_l3_exact(mask, variant, method="sparse")
        b = ch_l3_exact(mask, variant, method="enumerate")
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert (a > 0).any()


# --------------------------------------------------------------------------------------------
# 3. matrix form == node-based definition; literal spec steps on a hand-computed case
# --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(mask=masks(), variant=st.sampled_from(VARIANTS))
def test_matrix_matches_node_reference(mask: torch.Tensor, variant: str) -> None:
    ref = ch_l3_node_reference(mask, variant)
    # dense matmuls, the sparse route (compiled when available), sparse CSR × dense (torch)
    for use_sparse, impl in ((False, "auto"), (True, "auto"), (True, "torch")):
        got = ch_l3_matrix(mask, variant, use_sparse=use_sparse, backend=impl)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(ch_l3(mask, variant, exact=False), ch_l3_matrix(mask, variant))


def test_matrix_literal_steps_hand_computed() -> None:
    a = G43.to(torch.float32)
    deg_o = a.sum(1)  # [2, 3, 2, 1]
    deg_i = a.sum(0)  # [2, 3, 3]

    # step 1, output side: C = A·Aᵀ, B = (C ≠ 0)
    c = a @ a.t()
    assert c.tolist() == [[2, 2, 1, 0], [2, 3, 2, 1], [1, 2, 2, 1], [0, 1, 1, 1]]
    b = (c != 0).float()
    # step 2: E_ab = (deg(b) − C_ab)·B_ab = [[0,1,1,0],[0,0,0,0],[1,1,0,0],[0,2,1,0]];
    # max(E − 1, 0) keeps only E[o3,o1] = 1 (= de(o1) for seed o3, as worked out above)
    e = ((deg_o[None, :] - c) * b - 1).clamp_min(0)
    assert e.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    # step 3 (CH3): Wt = B/(E+1); step 4: S_out = Wt·A
    s_out = (b / (e + 1)) @ a
    assert s_out.tolist() == [[2, 3, 2], [2, 3, 3], [2, 3, 3], [0.5, 1.5, 2.5]]

    # step 5, input side: C' = Aᵀ·A = [[2,2,1],[2,3,2],[1,2,3]], deg_i = [2,3,3];
    # E' = [[0,1,2],[0,0,1],[1,1,0]] → max(E'−1, 0) keeps only E'[i0,i2] = 1
    c_in = a.t() @ a
    assert c_in.tolist() == [[2, 2, 1], [2, 3, 2], [1, 2, 3]]
    b_in = (c_in != 0).float()
    e_in = ((deg_i[None, :] - c_in) * b_in - 1).clamp_min(0)
    assert e_in.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    s_in = (b_in / (e_in + 1)) @ a.t()
    assert s_in.tolist() == [[2, 2.5, 1.5, 0.5], [2, 3, 2, 1], [2, 3, 2, 1]]

    # step 6: S = S_out + S_inᵀ, zero at existing links
    expected_ch3 = [[0, 0, 4], [0, 0, 0], [3.5, 0, 0], [1, 2.5, 0]]
    assert ((s_out + s_in.t()) * (1 - a)).tolist() == expected_ch3
    for use_sparse in (False, True):
        assert ch_l3_matrix(G43, "CH3", use_sparse=use_sparse).tolist() == expected_ch3
    # node-based reading of (o3,i1): i2 (de 0) → 1, o1 (de 1) → 1/2, o2 (de 0) → 1 → 2.5

    # CH2: Wt = (C + B)/(E + 1): output side [[3,3,2,0],[3,4,3,2],[2,3,3,2],[0,1,2,2]],
    # input side [[3,3,1],[3,4,3],[2,3,4]]. (o0,i2): S_out 5 + S_in 5 = 10 = node sum
    # (1+1)/1 [i0] + (1+2)/1 [i1] + (1+2)/1 [o1] + (1+1)/1 [o2]; (o2,i0) = 5 + 4 = 9;
    # (o3,i0) = 1 + 1 = 2; (o3,i1) = 3 + 3 = 6.
    for use_sparse in (False, True):
        got = ch_l3_matrix(G43, "CH2", use_sparse=use_sparse)
        assert got.tolist() == [[0, 0, 10], [0, 0, 0], [9, 0, 0], [2, 6, 0]]


def test_matrix_ch31_node_weight() -> None:
    # CH3.1 node weight (1+di)/(1+de)^(1+de/(1+de)); on HUB candidate (o0,i1):
    # i0: di 1, de 0 → 2;  o1: di 1, de 2 → 2 / 3^(1 + 2/3)
    got = ch_l3_matrix(HUB, "CH3.1")[0, 1].item()
    assert got == pytest.approx(2 + 2 / 3 ** (5 / 3), rel=1e-6)


# --------------------------------------------------------------------------------------------
# 4. exact vs matrix form: same support, similar ranking
# --------------------------------------------------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


@settings(max_examples=40, deadline=None)
@given(mask=masks(max_side=16), variant=st.sampled_from(VARIANTS))
def test_same_support(mask: torch.Tensor, variant: str) -> None:
    assert torch.equal(ch_l3_exact(mask, variant) != 0, ch_l3_matrix(mask, variant) != 0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_exact_vs_matrix(variant: str, seed: int) -> None:
    mask = _random_mask(60, 60, 0.10, seed)
    exact = ch_l3_exact(mask, variant)
    approx = ch_l3_matrix(mask, variant)
    assert torch.equal(exact != 0, approx != 0)
    cand = (~mask).numpy()
    x, y = exact.numpy()[cand], approx.numpy()[cand]
    assert _spearman(x, y) > 0.8
    pos = x > 0
    assert pos.sum() > 100 and _spearman(x[pos], y[pos]) > 0.8


# --------------------------------------------------------------------------------------------
# 5. inputs, chunking, edge cases
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        torch.ones(4, dtype=torch.bool),
        torch.ones(2, 3, 4, dtype=torch.bool),
        torch.tensor([[0, 2], [1, 0]]),
        torch.tensor([[0.5, 1.0], [1.0, 0.0]]),
        torch.tensor([[float("nan"), 1.0], [1.0, 0.0]]),
        "not a mask",
    ],
)
@pytest.mark.parametrize("fn", [ch_l3, ch_l3_exact, ch_l3_matrix, ch_l3_reference, ch_l3_node_reference])
def test_bad_mask_raises(bad, fn) -> None:
    with pytest.raises(BrainsparseError):
        fn(bad)


def test_bad_arguments_raise() -> None:
    with pytest.raises(BrainsparseError, match=r"^unknown variant 'X'; allowed: CH2, CH3, CH3\.1$"):
        ch_l3(G43, "X")
    with pytest.raises(BrainsparseError, match="unknown variant"):
        ch_l3(G43, "CH4", exact=False)
    with pytest.raises(BrainsparseError, match="unknown variant"):
        ch_l3_reference(G43, "RA")
    with pytest.raises(BrainsparseError, match="exact"):
        ch_l3(G43, "CH3", exact="yes")  # type: ignore[arg-type]
    with pytest.raises(BrainsparseError, match="method"):
        ch_l3_exact(G43, method="dense")
    for size in (0, -1, 1.5, True):
        with pytest.raises(BrainsparseError, match="chunk_size"):
            ch_l3_exact(G43, chunk_size=size)  # type: ignore[arg-type]


def test_numeric_masks_and_case_insensitive_variants() -> None:
    ref = ch_l3(G43, "CH2")
    assert torch.equal(ch_l3(G43.to(torch.int64), "ch2"), ref)
    assert torch.equal(ch_l3(G43.to(torch.float32), "Ch2"), ref)
    assert torch.equal(ch_l3(G43.numpy(), "CH2"), ref)
    assert torch.equal(ch_l3(G43.t(), "CH3"), ch_l3(G43.t().contiguous(), "CH3"))


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0), (3, 4), (1, 1)])
def test_empty_and_trivial_masks(shape) -> None:
    for mask in (torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)):
        for got in (
            ch_l3(mask, "CH3", exact=True),
            ch_l3_exact(mask, "CH2", method="enumerate"),
            ch_l3_matrix(mask, "CH3", use_sparse=True),
            ch_l3_matrix(mask, "CH3", use_sparse=False),
        ):
            assert got.shape == shape and got.dtype == torch.float32
            assert not got.any()  # no links → no paths; all links → no candidates


@pytest.mark.parametrize("method", ["sparse", "enumerate"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunking_does_not_change_result(method: str, variant: str) -> None:
    mask = _random_mask(37, 29, 0.15, seed=11)
    whole = ch_l3_exact(mask, variant, method=method)
    assert (whole > 0).sum() > 50
    for size in (1, 7, 500):
        chunked = ch_l3_exact(mask, variant, method=method, chunk_size=size)
        torch.testing.assert_close(chunked, whole, rtol=1e-7, atol=0.0)


def test_one_row_per_chunk_many_chunks_match_reference() -> None:
    mask = _random_mask(9, 11, 0.35, seed=5)
    for variant in VARIANTS:
        torch.testing.assert_close(
            ch_l3_exact(mask, variant, method="enumerate", chunk_size=1), ch_l3_reference(mask, variant)
        )


# --------------------------------------------------------------------------------------------
# 6. compiled (C++) scorers == PyTorch forms; both backends
# --------------------------------------------------------------------------------------------
def _cpp_available() -> bool:
    return available()


needs_cpp = pytest.mark.skipif(not _cpp_available(), reason="C++ kernels unavailable here")
SCORER_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]


@st.composite
def holey_masks(draw, max_side: int = 16) -> torch.Tensor:
    """Random rectangular masks with some rows and columns emptied (isolated neurons)."""
    mask = draw(masks(max_side=max_side)).clone()
    n_out, n_in = mask.shape
    rows = draw(st.lists(st.integers(0, n_out - 1), max_size=n_out))
    cols = draw(st.lists(st.integers(0, n_in - 1), max_size=n_in))
    mask[rows, :] = False
    mask[:, cols] = False
    return mask


@needs_cpp
@settings(max_examples=80, deadline=None)
@given(mask=holey_masks(), variant=st.sampled_from(VARIANTS))
def test_compiled_matrix_equals_dense_matrix_form(mask: torch.Tensor, variant: str) -> None:
    dense = ch_l3_matrix(mask, variant, use_sparse=False)
    fused = ch_l3_matrix(mask, variant, use_sparse=True, backend="cpp")
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused != 0, dense != 0)


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(mask=holey_masks(max_side=12), variant=st.sampled_from(VARIANTS))
def test_compiled_exact_equals_reference(mask: torch.Tensor, variant: str) -> None:
    got = ch_l3_exact(mask, variant, method="compiled", backend="cpp")
    assert torch.equal(ch_l3_exact(mask, variant), got)  # "auto" picks it
    torch.testing.assert_close(got, ch_l3_reference(mask, variant), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, ch_l3_exact(mask, variant, method="sparse"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", SCORER_BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_backends_agree_on_larger_layer(impl: str, variant: str) -> None:
    mask = _random_mask(210, 140, 0.05, seed=7)
    mask[3] = False  # an isolated output and input
    mask[:, 5] = False
    exact = ch_l3_exact(mask, variant, method="sparse")
    dense = ch_l3_matrix(mask, variant, use_sparse=False)
    torch.testing.assert_close(ch_l3_exact(mask, variant, backend=impl), exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ch_l3_matrix(mask, variant, use_sparse=True, backend=impl), dense, rtol=1e-5,
                               atol=1e-5)
    assert torch.equal(ch_l3(mask, variant, backend=impl), ch_l3_exact(mask, variant, backend=impl))
    if impl == "torch":
        assert torch.equal(ch_l3_exact(mask, variant, backend=impl), exact)
    assert (exact > 0).sum() > 1000


def test_compiled_method_unavailable_on_torch_backend() -> None:
    with pytest.raises(BrainsparseError, match="compiled"):
        ch_l3_exact(G43, method="compiled", backend="torch")
    # "auto" falls back to the PyTorch sparse form
    assert torch.equal(ch_l3_exact(G43, "CH2", backend="torch"), ch_l3_exact(G43, "CH2", method="sparse"))
    with pytest.raises(BrainsparseError, match="allowed"):
        ch_l3_exact(G43, backend="gpu")


@needs_cpp
def test_compiled_scores_independent_of_thread_count() -> None:
    mask = _random_mask(300, 260, 0.04, seed=2)
    kernels = _cpu_ext.load()
    threads = torch.get_num_threads()
    results = []
    try:
        kernels.set_parallel_min(0)  # the parallel code path even for this small layer
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((ch_l3_exact(mask, "CH3", backend="cpp"),
                            ch_l3_matrix(mask, "CH2", use_sparse=True, backend="cpp")))
    finally:
        kernels.set_parallel_min(_cpu_ext.PARALLEL_MIN)
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", SCORER_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0), (1, 1), (1, 7), (7, 1)])
def test_backends_on_empty_and_thin_masks(impl: str, shape) -> None:
    for mask in (torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)):
        for got in (ch_l3_exact(mask, "CH3", backend=impl),
                    ch_l3_matrix(mask, "CH3.1", use_sparse=True, backend=impl)):
            assert got.shape == shape and got.dtype == torch.float32
            assert not got.any()


@needs_cpp
def test_compiled_scorers_not_used_when_their_check_fails(monkeypatch) -> None:
    """The compiled scorers are checked against the PyTorch forms before first use; on a
    mismatch the scorers use the PyTorch forms (and method="compiled" says why it cannot)."""
    from brainsparse.scoring import _ch_compiled

    assert _ch_compiled.compiled_available(G43, "cpp")  # the real check passes here
    monkeypatch.setattr(_ch_compiled, "_checked", {"ok": False})
    assert not _ch_compiled.compiled_available(G43, "auto")
    assert torch.equal(ch_l3_exact(G43, "CH3"), ch_l3_exact(G43, "CH3", method="sparse"))
    with pytest.raises(BrainsparseError, match="check"):
        ch_l3_exact(G43, method="compiled", backend="cpp")
