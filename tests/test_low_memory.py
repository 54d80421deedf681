"""The low-memory forms make the same choices as the whole-array ones they replace.

Regrowth scored a block of rows at a time, soft selection a block of candidates at a time,
RigL's gradient kept as its factors, CSTI correlation and masks in blocks, in-place SWI and
percolation: each is compared with a plain reference (the whole-array formula) on small layers
with blocks made tiny, so that a wrong merge between blocks would show.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse._validation import link_count
import brainsparse.selection as selection
from brainsparse import registry
from brainsparse._random import randperm
from brainsparse.data.images import PixelImages
from brainsparse.engine.storage import mul_by_mask_
from brainsparse.percolation import percolate
from brainsparse.scoring.regrowth import GradFactors, add_gradients, factored_gradient, random_score_rows, random_scores
from brainsparse.selection import gumbel_keys, row_blocks, row_col_counts, select_index, select_index_rows
from brainsparse.topology import correlated, feature_correlation, sparse_weight_init


# the module (the package's attribute of that name is the function)
correlated_module = importlib.import_module("brainsparse.topology.correlated")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ selection
def _ranked_reference(scores, k, cand, generator):
    """Top-k among the positive candidates, ties broken by one permutation of them (the rule
    :func:`select_index` documents), written the plain way: permute all, sort all."""
    flat = scores.reshape(-1)
    pos = (cand.reshape(-1) & (flat > 0) & torch.isfinite(flat)).nonzero().squeeze(1)
    perm = torch.randperm(pos.numel(), generator=generator)
    pos = pos[perm]
    return pos[torch.argsort(flat[pos].double(), descending=True, stable=True)[:k]]


@pytest.mark.parametrize("levels", [0, 3])  # 0: continuous scores; 3: many ties
@pytest.mark.parametrize("entries", [16, 200, 1 << 16])
def test_block_topk_selection_is_the_whole_array_selection(levels, entries):
    g = gen(1)
    scores = torch.rand(37, 23, generator=g)
    if levels:
        scores = (scores * levels).floor() / levels  # ties, and zeros
    scores[3, 4] = float("inf")  # non-finite scores count as zero
    scores[5, 6] = float("nan")
    cand = torch.rand(37, 23, generator=g) > 0.3
    for k in (1, 40, 200):
        chosen = select_index_rows(lambda a, b: scores[a:b], k, cand, generator=gen(7), entries=entries)
        whole = select_index(scores, k, cand, generator=gen(7))
        assert torch.equal(chosen, whole)  # same choice, same order
        assert set(chosen.tolist()) == set(_ranked_reference(scores, k, cand, gen(7)).tolist())
        # and the generator is left where the whole-array selection leaves it
        ga, gb = gen(7), gen(7)
        select_index_rows(lambda a, b: scores[a:b], k, cand, generator=ga, entries=entries)
        select_index(scores, k, cand, generator=gb)
        assert torch.equal(torch.rand(3, generator=ga), torch.rand(3, generator=gb))


def test_block_topk_selection_falls_back_to_zero_scores_like_the_whole_array():
    scores = torch.zeros(20, 10)
    scores[2, :3] = 1.0  # 3 positive candidates, k = 8: 5 come from the fallback, then anywhere
    cand = torch.ones(20, 10, dtype=torch.bool)
    fallback = torch.zeros(20, 10, dtype=torch.bool)
    fallback[5, :2] = True
    got = select_index_rows(lambda a, b: scores[a:b], 8, cand, generator=gen(2), fallback=fallback, entries=16)
    assert torch.equal(got, select_index(scores, 8, cand, generator=gen(2), fallback=fallback))


def test_block_random_scores_draw_the_whole_arrays_numbers():
    mask = torch.rand(50, 30, generator=gen(3)) < 0.2
    g = gen(4)
    rows = torch.cat([random_score_rows(mask, a, b, generator=g) for a, b in row_blocks(50, 30, entries=64)])
    assert torch.equal(rows, random_scores(mask, generator=gen(4)))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_selection_in_blocks_is_the_one_gumbel_sample_of_all_candidates(monkeypatch, temperature):
    g = gen(5)
    scores = torch.rand(40, 30, generator=g) * (torch.rand(40, 30, generator=g) > 0.4)
    cand = torch.rand(40, 30, generator=g) > 0.2
    k = 50
    # the whole-array formula: keys of all positive candidates from one draw, top k
    flat = scores.reshape(-1)
    pos = (cand.reshape(-1) & (flat > 0)).nonzero().squeeze(1)
    keys = gumbel_keys(flat[pos].double().log() * temperature, gen(9))
    expected = pos[torch.topk(keys, k).indices]
    monkeypatch.setattr(selection, "SOFT_BLOCK_ENTRIES", 64)  # 19 blocks
    got = select_index(scores, k, cand, rule="soft", temperature=temperature, generator=gen(9))
    assert torch.equal(got, expected)


def test_int32_permutations_are_the_int64_ones():
    g32, g64 = gen(6), gen(6)
    perm = randperm(100_003, generator=g32, device=torch.device("cpu"))
    assert perm.dtype == torch.int32
    assert torch.equal(perm.long(), torch.randperm(100_003, generator=g64))
    assert torch.equal(torch.rand(2, generator=g32), torch.rand(2, generator=g64))


def test_row_and_column_counts_and_blockwise_mask_multiply():
    mask = torch.rand(70, 11, generator=gen(7)) < 0.3
    rows, cols = row_col_counts(mask)
    assert torch.equal(rows, torch.count_nonzero(mask, dim=1)) and torch.equal(cols, torch.count_nonzero(mask, dim=0))
    w = torch.randn(70, 11, generator=gen(8))
    expected = w * mask
    mul_by_mask_(w, mask)
    assert torch.equal(w, expected)  # -0.0 where a negative weight leaves the mask, as mul_ gives


# ------------------------------------------------------------------ gradients
def test_factored_gradient_rows_are_the_dense_gradient():
    g = gen(9)
    gy1, x1, gy2, x2 = (torch.randn(*s, generator=g) for s in ((4, 40), (4, 30), (4, 40), (4, 30)))
    grad = factored_gradient(gy1, x1)
    assert isinstance(grad, GradFactors)
    total = add_gradients(grad, factored_gradient(gy2, x2))
    dense = gy1.T @ x1 + gy2.T @ x2  # summed in the order of the micro-batches
    assert torch.equal(total.dense(), dense)
    assert torch.equal(torch.cat([total.rows(a, b) for a, b in row_blocks(40, 30, entries=16 * 30)]), dense)
    # a batch larger than the layer: the dense product itself
    big = factored_gradient(torch.randn(100, 8, generator=g), torch.randn(100, 6, generator=g))
    assert torch.is_tensor(big) and big.shape == (8, 6)


# ------------------------------------------------------------------ the engine
def _run(method, kernel, blocks):
    torch.manual_seed(0)
    model = bs.models.MLP([30, 64, 48, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = bs.sparsify(model, opt, method=method, density=0.1, update_every=2, total_steps=50, seed=4,
                         kernel=kernel)
    if not blocks:  # the whole-array regrowth: the score without its block form
        engine.components = dataclasses.replace(
            engine.components, regrowth=dataclasses.replace(engine.components.regrowth, blocks=None))
    g = gen(11)
    for _ in range(6):
        x, y = torch.randn(16, 30, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    assert len(engine.history) == 3
    return [(layer.mask.clone(), layer.dense_weight()) for layer in engine.layers.values()]


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_block_regrowth_in_the_engine_matches_whole_array_regrowth(monkeypatch, method, kernel):
    assert registry.REGROWTH_SCORES["random"].blocks is not None
    assert registry.REGROWTH_SCORES["gradient"].blocks is not None
    monkeypatch.setattr(selection.select_index_rows, "__kwdefaults__", {"generator": None, "fallback": None,
                                                                         "entries": 16 * 64})
    whole = _run(method, kernel, blocks=False)
    blocked = _run(method, kernel, blocks=True)
    for (m1, w1), (m2, w2) in zip(whole, blocked):
        assert torch.equal(m1, m2) and torch.equal(w1, w2)


def test_sparse_path_records_rigl_gradient_as_factors():
    torch.manual_seed(0)
    model = bs.models.MLP([30, 64, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = bs.sparsify(model, opt, method="rigl", density=0.1, update_every=2, total_steps=50, seed=0,
                         kernel="sparse")
    layer = engine.layers["layers.0"]
    x = torch.randn(8, 30)
    for step in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
        if step == 1:  # the batch before the update: 8 × (30 + 64) numbers, not 64 × 30
            assert isinstance(layer.grad_record, GradFactors)
            assert layer.dense_grad.shape == (64, 30)  # formed on read
        opt.step()
        engine.step()
    assert layer.grad_record is None and len(engine.history) == 1


def test_inference_forward_uses_a_scratch_and_training_still_gets_its_gradient():
    torch.manual_seed(0)
    layer = bs.kernels.SparseLinear.from_linear(nn.Linear(30, 20), torch.rand(20, 30) < 0.3)
    x = torch.randn(7, 30, requires_grad=True)
    with torch.no_grad():
        y0 = layer(x)
    y = layer(x)
    with torch.no_grad():
        layer(torch.randn(7, 30))  # an inference call between forward and backward
    y.sum().backward()
    dense = layer.dense_weight().requires_grad_()
    ref = x.detach().requires_grad_()
    (ref @ dense.T + layer.bias).sum().backward()
    assert torch.equal(y0, y.detach())
    torch.testing.assert_close(x.grad, ref.grad)
    torch.testing.assert_close(layer.structure.gather(dense.grad), layer.values.grad)


# ------------------------------------------------------------------ initialisation
def _correlation_reference(x):
    xd = x.double()
    centred = xd - xd.mean(dim=0, keepdim=True)
    cov = centred.T @ centred
    std = cov.diagonal().clamp_min(0).sqrt()
    denom = std[:, None] * std[None, :]
    alive = xd.amax(0) != xd.amin(0)
    corr = torch.where(alive[:, None] & alive[None, :], cov / torch.where(denom > 0, denom, 1.0), 0.0)
    return torch.nan_to_num(corr, nan=0.0).clamp(-1, 1).fill_diagonal_(0.0).float()


def test_feature_correlation_in_blocks_and_from_pixels():
    pixels = torch.randint(0, 256, (300, 12), dtype=torch.uint8, generator=gen(12))
    pixels[:, 3] = 7  # a constant feature
    images = PixelImages(pixels, 1 / 255.0, 0.1)
    x = images[:]
    one_block = feature_correlation(x, block_rows=1000)
    assert torch.equal(one_block, _correlation_reference(x))  # one block: the textbook formula
    blocks = feature_correlation(x, block_rows=7)
    torch.testing.assert_close(blocks, one_block, rtol=0, atol=1e-6)  # float64 sums, other order
    assert torch.equal(feature_correlation(images, block_rows=7), blocks)  # no float copy needed
    assert blocks[3].abs().sum() == 0


def test_pixel_batches_by_index_select_equal_indexing():
    images = PixelImages(torch.randint(0, 256, (50, 9), dtype=torch.uint8, generator=gen(4)), 1 / 77.0, 0.3)
    idx = torch.randperm(50, generator=gen(5))[:17]
    assert torch.equal(images.batch(idx), images[idx])
    assert images.batch(idx).dtype == torch.float32


@pytest.mark.parametrize("n, batch", [(200, 3), (64 * 3 + 5, 3), (10, 32)])
def test_epoch_batches_gathered_in_blocks_equal_one_gather_per_step(n, batch):
    from brainsparse.train.classification import epoch_batches

    images = PixelImages(torch.randint(0, 256, (n, 9), dtype=torch.uint8, generator=gen(6)), 1 / 255.0, 0.13)
    labels = torch.randint(0, 10, (n,), generator=gen(7))
    order = torch.randperm(n, generator=gen(8))
    got = list(epoch_batches(images, labels, order, batch))
    assert len(got) == -(-n // batch)
    for b, (x, y) in enumerate(got):
        idx = order[b * batch : (b + 1) * batch]
        assert torch.equal(x, images.batch(idx)) and torch.equal(y, labels[idx])
        assert x.is_contiguous()


def test_clear_grads_drops_every_gradient():
    from brainsparse.train.common import clear_grads

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    clear_grads(opt)
    assert all(p.grad is None for p in model.parameters())


def _csti_reference(out_f, in_f, density, correlation, generator):
    c = torch.nan_to_num(correlation.double(), nan=0.0).abs()
    score = c[(torch.arange(out_f) % c.shape[0])[:, None], (torch.arange(in_f) % c.shape[1])[None, :]].flatten()
    k = link_count(density, out_f, in_f)
    tau = torch.topk(score, k).values.min()
    above = (score > tau).nonzero().flatten()
    tied = (score == tau).nonzero().flatten()
    chosen = tied[torch.randperm(tied.numel(), generator=generator)[: k - above.numel()]]
    mask = torch.zeros(out_f * in_f, dtype=torch.bool)
    mask[torch.cat([above, chosen])] = True
    return mask.view(out_f, in_f)


@pytest.mark.parametrize("flat", [False, True])  # True: every score tied
def test_csti_mask_in_blocks_is_the_whole_array_mask(monkeypatch, flat):
    corr = torch.full((9, 9), 0.5) if flat else feature_correlation(torch.randn(50, 9, generator=gen(13)))
    monkeypatch.setattr(correlated_module, "CSTI_BLOCK_ENTRIES", 40)
    for shape in ((30, 20), (7, 9)):
        got = correlated(*shape, 0.15, correlation=corr, generator=gen(14))
        assert torch.equal(got, _csti_reference(*shape, 0.15, corr, gen(14)))


@pytest.mark.parametrize("contiguous", [True, False])
def test_sparse_weight_init_in_place_draws_randn(contiguous):
    mask = torch.rand(20, 16, generator=gen(15)) < 0.25
    weight = torch.empty(20, 16) if contiguous else torch.empty(16, 20).T
    sparse_weight_init(weight, mask, 0.25, generator=gen(16))
    expected = (torch.randn(20, 16, generator=gen(16)) * (2.0 / (0.25 * 16)) ** 0.5).masked_fill_(~mask, 0.0)
    assert torch.equal(weight, expected)


def test_percolation_in_place_matches_the_copying_fixed_point():
    def reference(masks, chains):  # sweeps on fresh copies until nothing changes
        out = {n: m.clone() for n, m in masks.items()}
        changed = True
        while changed:
            changed = False
            for chain in chains:
                for a, b in zip(chain[:-1], chain[1:]):
                    for new_a, new_b in ((out[a] & out[b].any(0)[:, None], out[b] & out[a].any(1)[None, :]),):
                        if not (torch.equal(new_a, out[a]) and torch.equal(new_b, out[b])):
                            out[a], out[b], changed = new_a, new_b, True
        return out

    g = gen(17)
    for _ in range(30):
        sizes = torch.randint(2, 9, (4,), generator=g).tolist()
        masks = {f"l{i}": torch.rand(sizes[i + 1], sizes[i], generator=g) < 0.25 for i in range(3)}
        chains = [["l0", "l1", "l2"]]
        before = {n: m.clone() for n, m in masks.items()}
        got, expected = percolate(masks, chains), reference(masks, chains)
        assert all(torch.equal(got[n], expected[n]) for n in masks)
        assert all(torch.equal(masks[n], before[n]) for n in masks)  # the inputs are left alone


# ------------------------------------------------------------------ no dense float temporaries
@pytest.mark.parametrize("method", ["set", "rigl", "chts"])
def test_sparse_path_updates_allocate_nothing_larger_than_a_dense_float_layer(method):
    """On the sparse path a SET or RigL update allocates nothing as large as a float32 array of a
    512 × 512 layer (the largest is the permutation of the candidates, int32); CHTs at most its
    one float32 CH score array. (The whole-array forms allocated two to five such arrays.)"""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = bs.models.MLP([64, 512, 512, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = bs.sparsify(model, opt, method=method, density=0.02, update_every=2, total_steps=50, seed=0,
                         kernel="sparse", **({"init": "uniform"} if method == "chts" else {}))
    g = gen(1)
    x, y = torch.randn(16, 64, generator=g), torch.randint(0, 5, (16,), generator=g)
    for step in (1, 2):  # the engine.step() of step 2 runs the update
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 1:
            engine.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        engine.step()
    assert len(engine.history) == 1
    dense_float = 512 * 512 * 4
    largest = max(prof.events(), key=lambda e: e.cpu_memory_usage)
    if method == "chts":
        assert largest.cpu_memory_usage <= dense_float, largest.name
    else:
        assert largest.cpu_memory_usage < dense_float, largest.name


@pytest.mark.parametrize("n", [0, 1, 2, 5, 999, 70_003])
def test_skipping_a_permutation_leaves_the_generator_where_drawing_it_does(n):
    from brainsparse._random import skip_randperm

    drawn, skipped = gen(n), gen(n)
    randperm(n, generator=drawn, device=torch.device("cpu"))
    assert skip_randperm(n, generator=skipped)
    assert torch.equal(drawn.get_state(), skipped.get_state())


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_without_a_tie_at_the_boundary_skips_the_tie_break_permutation(monkeypatch, ties):
    """Distinct scores: the tie-break permutation cannot matter, so it is skipped (the generator
    moves past it); equal scores at the k-th score still draw it. Either way the choice, its order
    (distinct scores; with ties the permuted order as before) and the generator's state equal
    those of always drawing it."""
    g = gen(11)
    scores = torch.rand(60, 50, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 8).floor() + 1  # eight distinct values: ties everywhere
    cand = torch.rand(60, 50, generator=g) > 0.3
    index = cand.reshape(-1).nonzero().squeeze(1)
    calls: list[int] = []
    real_perm, real_skip = selection.randperm, selection.skip_randperm
    allow_skip = [True]
    monkeypatch.setattr(selection, "randperm", lambda *a, **kw: calls.append(a[0]) or real_perm(*a, **kw))
    monkeypatch.setattr(selection, "skip_randperm", lambda n, generator: allow_skip[0] and real_skip(n, generator=generator))

    def run(skip):
        allow_skip[0] = skip
        calls.clear()
        ga, gb = gen(3), gen(3)
        rows = select_index_rows(lambda a, b: scores[a:b], 400, cand, generator=ga, entries=200)
        ranked = selection._ranked(index, scores.reshape(-1)[index], 300, gb)
        return (rows, ranked, ga.get_state(), gb.get_state()), list(calls)

    fast, drawn_fast = run(skip=True)
    reference, drawn_reference = run(skip=False)
    assert len(drawn_reference) == 2 and drawn_fast == (drawn_reference if ties else [])
    for a, b in zip(fast, reference):
        assert torch.equal(a, b)
