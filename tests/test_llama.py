"""The LLaMA-style decoder, its percolation layout, and sparsifying Hugging Face's LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from brainsparse._validation import link_count
from brainsparse.errors import BrainsparseError
from brainsparse.models.llama import (
    LLAMA_PRESETS,
    LlamaLM,
    apply_rotary,
    llama_config,
    llama_sparse_layout,
    rotary_tables,
)
from brainsparse.percolation import percolate
from brainsparse.train.language_model import adamw, sparsify_llama


def tiny(vocab: int = 50, **kw) -> LlamaLM:
    torch.manual_seed(0)
    return LlamaLM(llama_config("llama-tiny", vocab_size=vocab, dim=32, hidden_dim=48, n_heads=4, **kw))


def test_shapes_and_tied_embeddings():
    model = tiny()
    logits = model(torch.randint(0, 50, (3, 11)))
    assert logits.shape == (3, 11, 50)
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = tiny(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_grouped_kv_heads_shapes():
    model = tiny(n_kv_heads=2)
    attn = model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (32, 32) and attn.k_proj.weight.shape == (16, 32)
    assert model(torch.randint(0, 50, (2, 7))).shape == (2, 7, 50)


def test_causal():
    model = tiny().eval()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 8] = (x[0, 8] + 1) % 50
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rope_identity_norm_and_relative_position():
    cos, sin = rotary_tables(16, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, dtype=torch.float64, generator=g), torch.randn(8, dtype=torch.float64, generator=g)
    rot = lambda v, p: apply_rotary(v, cos[p], sin[p])  # noqa: E731
    assert torch.allclose(rot(q, 0), q)  # position 0: no rotation
    assert torch.allclose(rot(q, 5).norm(), q.norm())  # a rotation keeps the norm
    # the score depends only on the offset between positions
    assert torch.allclose(rot(q, 7) @ rot(k, 3), rot(q, 12) @ rot(k, 8))
    assert not torch.allclose(rot(q, 7) @ rot(k, 3), rot(q, 7) @ rot(k, 4))


def test_presets_and_bad_sizes():
    assert LLAMA_PRESETS["llama-60m"].dim == 512 and LLAMA_PRESETS["llama-130m"].n_layers == 12
    with pytest.raises(BrainsparseError, match="unknown model 'llama-7b'"):
        llama_config("llama-7b")
    with pytest.raises(BrainsparseError, match="n_kv_heads 3"):
        llama_config("llama-tiny", n_kv_heads=3)
    with pytest.raises(BrainsparseError, match="max_seq_len"):
        tiny()(torch.zeros(1, 300, dtype=torch.long))


def test_layout_pairs_and_chains():
    chains, pairs = llama_sparse_layout(tiny())
    assert ["layers.0.self_attn.v_proj", "layers.0.self_attn.o_proj"] in chains
    assert ["layers.1.mlp.gate_proj", "layers.1.mlp.down_proj"] in chains
    assert ("layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj") in pairs
    assert ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj") in pairs
    names = [n for c in chains for n in c]
    assert len(names) == len(set(names)) == 14  # every projection in exactly one chain
    # grouped heads: q and k (and v and o) differ in width, so no pair and no v → o chain
    chains, pairs = llama_sparse_layout(tiny(n_kv_heads=2))
    assert all("q_proj" not in a for a, _ in pairs)
    assert ["layers.0.self_attn.v_proj"] in chains and ["layers.0.self_attn.o_proj"] in chains


def test_percolation_on_hand_built_masks():
    model = tiny()
    chains, pairs = llama_sparse_layout(model)
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in model.named_modules()
             if n.endswith("_proj") and n.startswith("layers.0")}
    p = "layers.0."
    masks[p + "self_attn.q_proj"][3] = False  # q dim 3 without links → k dim 3 is useless
    masks[p + "self_attn.v_proj"][2] = False  # v dim 2 without links → column 2 of o dangles
    masks[p + "mlp.gate_proj"][5] = False  # gate unit 5 dead → up unit 5 and down column 5
    masks[p + "mlp.down_proj"][:, 7] = False  # down reads nothing from unit 7 → gate 7 and up 7
    masks[p + "mlp.up_proj"][9] = False  # up unit 9 dead → gate 9 and down column 9
    chains = [[n for n in c if n.startswith(p)] for c in chains]
    out = percolate(masks, [c for c in chains if c], [q for q in pairs if q[0].startswith(p)])
    assert not out[p + "self_attn.k_proj"][3].any() and out[p + "self_attn.k_proj"][4].all()
    assert not out[p + "self_attn.o_proj"][:, 2].any() and out[p + "self_attn.o_proj"][:, 1].all()
    for unit in (5, 7, 9):
        assert not out[p + "mlp.gate_proj"][unit].any()
        assert not out[p + "mlp.up_proj"][unit].any()
        assert not out[p + "mlp.down_proj"][:, unit].any()
    assert out[p + "mlp.up_proj"][6].all() and out[p + "mlp.down_proj"][:, 6].all()


def test_engine_on_llama_keeps_pairs_after_percolation():
    model = tiny()
    opt = adamw(model, 1e-3, 0.0)
    dst = sparsify_llama(model, opt, method="chts", density=0.3, update_every=1, total_steps=100, seed=0)
    assert set(dst.layers) == {n for n, _ in model.named_modules() if n.endswith("_proj")}
    assert ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj") in dst.pairs
    x = torch.randint(0, 50, (2, 9))
    F.cross_entropy(model(x[:, :-1]).reshape(-1, 50), x[:, 1:].reshape(-1)).backward()
    opt.step()
    record = dst.step()
    assert record is not None and sum(v["removed"] for v in record["layers"].values()) > 0  # an update ran
    for name, layer in dst.layers.items():
        assert layer.links == link_count(0.3, *layer.mask.shape), name


def hf_model(n_kv_heads: int = 4):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=n_kv_heads, max_position_embeddings=32,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def test_hf_layout_names():
    chains, pairs = llama_sparse_layout(hf_model())
    assert ["model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"] in chains
    assert ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj") in pairs
    _, pairs = llama_sparse_layout(hf_model(n_kv_heads=2))
    assert [p for p in pairs if "q_proj" in p[0]] == []


@pytest.mark.parametrize("method", ["chtss", "rigl"])
def test_hf_llama_sparsified_and_trained(method):
    model = hf_model()
    opt = adamw(model, 3e-3, 0.1)
    steps = 8
    dst = sparsify_llama(model, opt, method=method, density=0.3, update_every=2, total_steps=steps, seed=0)
    names = set(dst.layers)
    assert len(names) == 14 and not any("embed" in n or "lm_head" in n for n in names)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 12), generator=g)
        opt.zero_grad()
        out = model(input_ids=x[:, :-1])
        F.cross_entropy(out.logits.reshape(-1, 64), x[:, 1:].reshape(-1)).backward()
        opt.step()
        dst.step()
        for name, layer in dst.layers.items():
            w = layer.weight
            assert layer.links == layer.target == int(layer.mask.sum()), name
            assert int(w.count_nonzero()) <= layer.links
            assert not w[~layer.mask].any(), name
            state = opt.state[w]
            assert not state["exp_avg"][~layer.mask].any() and not state["exp_avg_sq"][~layer.mask].any(), name
    assert len(dst.history) == (2 if method == "rigl" else 3)  # steps 2, 4(, 6): T_end = 0.75·8 (RigL) or 8
    if method == "rigl":  # no density schedule: exactly the target density
        for layer in dst.layers.values():
            assert layer.links == link_count(0.3, *layer.mask.shape)
    assert torch.count_nonzero(model.model.embed_tokens.weight) == model.model.embed_tokens.weight.numel()
