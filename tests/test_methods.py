"""Methods beyond SET/RigL/CHT: CHTss, GraNet, MEST (EM&S), CTRE, NeuroPrune."""

import math

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse.selection import count
from brainsparse._validation import link_count
from brainsparse.errors import BrainsparseError
from brainsparse.models import MLP
from brainsparse.neuroprune import preferential_attachment_shrink, redundant_heads
from brainsparse.schedules import density_at
from brainsparse.scoring.regrowth import cosine_similarity_scores


def _run(method, steps, sizes=(16, 12, 12, 3), density=0.1, update_every=2, total_steps=20, seed=0, **kw):
    torch.manual_seed(seed)
    model = MLP(list(sizes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = bs.sparsify(model, opt, method=method, density=density, update_every=update_every,
                         total_steps=total_steps, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed)
    counts = []
    for _ in range(steps):
        x = torch.randn(8, sizes[0], generator=gen)
        y = torch.randint(0, sizes[-1], (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if engine.step() is not None:
            counts.append({n: l.links for n, l in engine.layers.items()})
    return engine, counts


def test_cosine_similarity_hand_worked():
    # two samples; input neuron 0 = (1, 0), input 1 = (1, 1); output 0 = (2, 0), output 1 = (0, -3)
    x = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    mask = torch.tensor([[False, False], [False, True]])
    s = cosine_similarity_scores(x, y, mask)
    r = 1 / math.sqrt(2)
    # out0·in0 = 1, out0·in1 = 1/√2, out1·in0 = 0, out1·in1 = |−1/√2| (masked: existing link)
    assert torch.allclose(s, torch.tensor([[1.0, r], [0.0, 0.0]]), atol=1e-6)


def test_chtss_link_counts_follow_sigmoid_schedule():
    total, every = 40, 4
    engine, counts = _run("chtss", 36, density=0.1, update_every=every, total_steps=total, init="uniform")
    n_updates = int(0.8 * total) // every
    start = {n: link_count(0.5, *l.mask.shape) for n, l in engine.layers.items()}
    assert start  # built at the initial density 0.5
    for i, row in enumerate(counts, start=1):
        d = density_at(i, n_updates, 0.5, 0.1, "sigmoid")
        for name, links in row.items():
            shape = engine.layers[name].mask.shape
            assert links == link_count(d, *shape), (i, name)
    final = {n: l.links for n, l in engine.layers.items()}
    assert all(final[n] == link_count(0.1, *engine.layers[n].mask.shape) for n in final)


def test_chtss_starts_at_initial_density():
    torch.manual_seed(0)
    engine = bs.sparsify(MLP([16, 12, 3]), None, method="chtss", density=0.1, update_every=1, total_steps=10, init="uniform")
    layer = engine.layers["layers.0"]
    assert layer.links == link_count(0.5, 12, 16)


def test_granet_cubic_schedule_counts_global():
    # GraNet prunes by one magnitude threshold across layers: the network's link count follows
    # the cubic schedule, the layers' shares do not
    engine, counts = _run("granet", 20, density=0.1, update_every=2, total_steps=20)
    n_updates = int(0.8 * 20) // 2
    shapes = {n: l.mask.shape for n, l in engine.layers.items()}
    uneven = False
    for i, row in enumerate(counts, start=1):
        d = density_at(i, n_updates, 0.5, 0.1, "cubic")
        assert sum(row.values()) == sum(link_count(d, *shapes[n]) for n in row), i
        uneven |= any(row[n] != link_count(d, *shapes[n]) for n in row)
    assert uneven  # a global threshold does not cut every layer to the same density


def test_granet_global_prune_keeps_the_largest_weights_of_the_network():
    torch.manual_seed(0)
    model = MLP([8, 8, 8, 2])
    engine = bs.sparsify(model, None, method="granet", density=0.25, update_every=1, total_steps=10,
                         seed=0, drop_fraction=0.0)
    (name_a, a), (name_b, b) = engine.layers.items()
    with torch.no_grad():  # layer 0's weights all larger than layer 1's
        a.weight.copy_(a.mask * (10 + torch.rand(a.mask.shape)))
        b.weight.copy_(b.mask * torch.rand(b.mask.shape))
    target = sum(link_count(d, 8, 8) for d in [0.4, 0.4])
    kept = engine._gradual_prune(0.4)
    assert count(kept[name_a]) == a.links  # nothing of the strong layer is cut
    assert count(kept[name_a]) + count(kept[name_b]) == target
    per_layer = bs.sparsify(MLP([8, 8, 8, 2]), None, method="granet", density=0.25, update_every=1,
                            total_steps=10, seed=0, prune_scope="layer")
    assert all(count(m) == link_count(0.4, 8, 8) for m in per_layer._gradual_prune(0.4).values())


def _mest_layer(seed: int):
    """A MEST engine whose first layer has random weights and gradients that reorder its links,
    with the MEST score |W| + 0.01 |∇W| of every link."""
    torch.manual_seed(0)
    engine = bs.sparsify(MLP([12, 10, 3]), None, method="mest", density=0.2, update_every=1, total_steps=100, seed=0)
    layer = engine.layers["layers.0"]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(layer.mask * torch.rand(layer.mask.shape, generator=gen))
    layer.dense_grad = torch.rand(layer.mask.shape, generator=gen) * 100
    score = (layer.weight.detach().abs() + 0.01 * layer.dense_grad.abs()) * layer.mask
    return engine, layer, score


def test_mest_removes_by_mest_score_at_every_update():
    engine, layer, score = _mest_layer(1)
    before = layer.mask.clone()
    n = count(before)
    engine.step_count = 1  # an update between EM&S density steps (60 % of T_end is step 45)
    record = engine.update()
    n_removed = int(n * 0.3)
    assert record["layers"]["layers.0"]["removed"] == n_removed  # ζ removal happens here too
    removed = before & ~engine.layers["layers.0"].mask
    # the removed links are the ones with the lowest MEST score (not the lowest |W|)
    lowest = torch.topk(score[before], n_removed, largest=False).indices
    expected = torch.zeros(n, dtype=torch.bool)
    expected[lowest] = True
    grown_back = removed.sum() < n_removed  # a removed link may be regrown at random
    assert (removed[before] <= expected).all() and (grown_back or (removed[before] == expected).all())
    by_magnitude = torch.topk(layer.weight.detach().abs()[before], n_removed, largest=False).indices
    assert set(lowest.tolist()) != set(by_magnitude.tolist())  # the test tells the scores apart


def test_mest_ems_shrink_ranks_by_mest_score():
    assert bs.resolve_method("mest").prune_score == "mest"
    engine, layer, score = _mest_layer(2)
    n_target = link_count(0.2 + 0.025, 10, 12)
    kept = engine._gradual_prune(0.2 + 0.025)["layers.0"]
    best = torch.topk(score[layer.mask], n_target).indices
    expected = torch.zeros(count(layer.mask), dtype=torch.bool)
    expected[best] = True
    assert torch.equal(kept[layer.mask], expected)


def test_sparsify_dynamic_method_without_run_length_is_an_error():
    with pytest.raises(BrainsparseError, match="update_every and total_steps"):
        bs.sparsify(MLP([10, 8, 2]), None, method="chts", density=0.3)
    with pytest.raises(BrainsparseError, match="total_steps"):
        bs.sparsify(MLP([10, 8, 2]), None, method="rigl", density=0.3, update_every=5)
    engine = bs.sparsify(MLP([10, 8, 2]), None, method="set", density=0.3, steps_per_epoch=7, epochs=3)
    assert (engine.update_every, engine.total_steps) == (7, 21)
    bs.sparsify(MLP([10, 8, 2]), None, method="static", density=0.3)  # nothing evolves: nothing needed


def test_zero_score_regrowth_respects_elementwise_pairs():
    # q/k-like pair: row i of "a" is useful only if row i of "b" has links, and vice versa
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(16, 8), "b": nn.Linear(16, 8)})
    engine = bs.sparsify(model, None, method="cht", init="uniform", density=0.05, update_every=1,
                         total_steps=100, include=["a", "b"], pairs=[("a", "b")], seed=0, drop_fraction=0.5)
    for _ in range(5):
        engine.step_count += 1
        engine.update()
        rows_a = engine.layers["a"].mask.any(dim=1)
        rows_b = engine.layers["b"].mask.any(dim=1)
        assert torch.equal(rows_a, rows_b)


def test_mest_ems_extra_density_then_target():
    total, every = 40, 4
    engine, counts = _run("mest", 40, density=0.1, update_every=every, total_steps=total)
    t_end = int(0.75 * total)  # 30: updates at steps 4 .. 28
    steps = [r["step"] for r in engine.history]
    assert steps == list(range(4, 30, 4))
    for step, row in zip(steps, counts):
        extra = 0.05 if step <= 0.6 * t_end else (0.025 if step < t_end - every else 0.0)
        for name, links in row.items():
            assert links == link_count(0.1 + extra, *engine.layers[name].mask.shape), (step, name)


def test_ctre_regrows_and_explores():
    engine, counts = _run("ctre", 4, density=0.2)
    assert len(engine.history) == 2
    for row in counts:
        for name, links in row.items():
            assert links == engine.layers[name].target
    for rec in engine.history:
        for layer in rec["layers"].values():
            assert layer["overlap"] == 0.0  # simultaneous exploration never re-adds a removed link


def test_neuroprune_prunes_without_regrowth():
    engine, counts = _run("neuroprune", 20, density=0.1, update_every=2, total_steps=20)
    for rec in engine.history:
        for layer in rec["layers"].values():
            assert layer["regrown"] == 0
    final = {n: l.links for n, l in engine.layers.items()}
    assert all(final[n] == link_count(0.1, *engine.layers[n].mask.shape) for n in final)


def test_preferential_attachment_shrink_spares_hubs():
    w = torch.zeros(3, 3)
    w[0, :] = 1.0  # output 0 is a hub
    w[1, 0] = 0.2
    w[2, 2] = 0.2
    mask = w != 0
    new = preferential_attachment_shrink(w, mask, step_size=0.5)
    # hub link (0, 1): r=3, c=1 -> threshold 0.5/5 = 0.1; link (2, 2): r=0.2, c=1.2 -> 0.5/1.4
    assert new[0, 1] == pytest.approx(1.0 - 0.5 / (1e-3 + 3.0 + 1.0), abs=1e-6)
    assert new[2, 2] == 0.0
    assert (new[~mask] == 0).all()


def test_redundant_heads_dominating_set():
    base = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    heads = torch.stack([base[0], base[0] * 2, base[1], base[2], base[2] + 1e-3, base[3]])
    kept = redundant_heads(heads, threshold=0.95)
    assert kept == [0, 2, 3, 5]


def test_new_presets_validate_and_list():
    assert {"chtss", "granet", "mest", "ctre", "neuroprune"} <= set(bs.method_names())
    with pytest.raises(BrainsparseError, match="density schedule"):
        bs.resolve_method("chts", density_schedule="exponential")
    with pytest.raises(BrainsparseError, match="initial_density"):
        bs.resolve_method("chtss", initial_density=2.0)


class _Block(nn.Module):
    """One attention block and one MLP block, as a Transformer layer has them."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        from brainsparse.models.transformer import MultiHeadAttention

        self.attn = MultiHeadAttention(d, heads, dropout=0.0)
        self.ffn = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.ffn(x + self.attn(x, x)).mean(dim=1))


def _neuroprune_block(seed=0):
    torch.manual_seed(seed)
    model = _Block()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = bs.sparsify(model, opt, method="neuroprune", density=0.5, update_every=1, total_steps=100, seed=seed)
    return model, opt, engine


def test_neuroprune_finds_attention_blocks_and_removes_duplicate_heads():
    from brainsparse.layers import infer_attention_blocks
    from brainsparse.models.llama import LlamaLM, llama_config
    from brainsparse.models.transformer import Seq2SeqTransformer, transformer_config

    mt = Seq2SeqTransformer(transformer_config("tiny", vocab_size=20))
    names = [n for n, m in mt.named_modules() if isinstance(m, nn.Linear)]
    assert len(infer_attention_blocks(mt, names)) == 3  # encoder self, decoder self and cross
    lm = LlamaLM(llama_config("llama-tiny", vocab_size=30))
    blocks = infer_attention_blocks(lm, [n for n, m in lm.named_modules() if isinstance(m, nn.Linear)])
    assert len(blocks) == 2 and blocks[0]["o"].endswith("o_proj") and blocks[0]["heads"] == 4

    model, opt, engine = _neuroprune_block()
    assert [b["name"] for b in engine.attention] == ["attn"]
    attn = model.attn
    with torch.no_grad():  # head 1 a copy of head 0: same queries, keys and values
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[4:] = proj.weight[:4]
            proj.bias[4:] = proj.bias[:4]
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
        engine.layers[name].set_mask(torch.ones(8, 8, dtype=torch.bool))
    x = torch.randn(4, 5, 8)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    record = engine.step()
    assert record["heads_removed"] == {"attn": [1]}
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
        assert not engine.layers[name].mask[4:].any() and engine.layers[name].mask[:4].any()
    assert not engine.layers["attn.out_proj"].mask[:, 4:].any()


def test_neuroprune_penalty_acts_on_mlp_blocks_only():
    model, opt, engine = _neuroprune_block()
    before = {n: l.dense_weight().clone() for n, l in engine.layers.items()}
    for group in opt.param_groups:
        group["lr"] = 10.0  # a strong shrinkage step, no gradient
    engine._after_optimizer_step()
    for name, layer in engine.layers.items():
        changed = not torch.equal(layer.dense_weight(), before[name])
        assert changed == name.startswith("ffn"), name
