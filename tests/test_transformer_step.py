"""The Transformer training step's faster pieces: CPU dropout, written-out attention, the one-pass
label-smoothed loss, grouped sparse projections — and that both paths still compute the same."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import brainsparse as bs
from brainsparse.kernels import SparseLinear
from brainsparse.kernels.grouped import grouped_linear
from brainsparse.models import functional as bf
from brainsparse.models.transformer import Seq2SeqTransformer, transformer_config


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_smoothed_cross_entropy_equals_torch(smoothing, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 13, generator=gen, dtype=dtype).requires_grad_()
    target = torch.randint(0, 13, (40,), generator=gen)
    target[:7] = 0  # ignored rows
    ref = F.cross_entropy(logits, target, ignore_index=0, label_smoothing=smoothing)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    got = bf.label_smoothed_cross_entropy(logits, target, smoothing, ignore_index=0)
    (g_got,) = torch.autograd.grad(got * 3.0, logits)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.item() == pytest.approx(ref.item(), rel=tol, abs=tol)
    assert torch.allclose(g_got, g_ref, rtol=tol, atol=tol)
    with pytest.raises(IndexError):
        bf.label_smoothed_cross_entropy(logits, torch.full((40,), 13), smoothing, ignore_index=0)


def test_dropout_law_determinism_and_gradient():
    x = torch.randn(400, 500, requires_grad=True)
    torch.manual_seed(3)
    y = bf.dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(bf.dropout(x, 0.3), y)  # the seed fixes the mask
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.005
    assert torch.allclose(y[kept], x[kept] / 0.7)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, kept.float() / 0.7)
    assert bf.dropout(x, 0.3, training=False) is x and bf.dropout(x, 0.0) is x
    module = bf.Dropout(0.2)
    assert isinstance(module, nn.Dropout) and module.eval()(x) is x


def test_written_out_attention_equals_sdpa_apart_from_dropout(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    monkeypatch.setattr(bf, "dropout", lambda x, p, training=True: x)  # the weights' dropout aside
    for m in (mask, causal, None):
        got = bf.attention(q, k, v, m, 0.1)
        assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=m), atol=1e-12)


def _layers(seed, density=0.3, shapes=((12, 10), (12, 10), (7, 10))):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for o, i in shapes:
        lin = nn.Linear(i, o).double()
        out.append(SparseLinear.from_linear(lin, torch.rand(o, i, generator=gen) < density))
    return out


def test_grouped_linear_equals_the_separate_layers():
    layers = _layers(0)
    x = torch.randn(4, 6, 10, dtype=torch.float64, requires_grad=True)
    grouped = grouped_linear(x, layers)
    separate = [m(x) for m in layers]
    for a, b in zip(grouped, separate):
        assert a.shape == b.shape and torch.equal(a, b)  # same links, same order: the same sums
    gys = [torch.randn_like(y) for y in separate]
    params = [x] + [p for m in layers for p in (m.values, m.bias)]
    g_grouped = torch.autograd.grad(grouped, params, gys)
    g_separate = torch.autograd.grad(separate, params, gys)
    for a, b in zip(g_grouped, g_separate):
        assert torch.allclose(a, b, atol=1e-12)
    # a new structure (a topology update) invalidates the stacked one
    layers[1].set_structure(torch.rand(12, 10, generator=torch.Generator().manual_seed(9)) < 0.5)
    assert torch.equal(grouped_linear(x, layers)[1], layers[1](x))


def test_grouped_linear_falls_back_where_it_must():
    layers = _layers(1)
    x = torch.randn(5, 10, dtype=torch.float64)
    calls = []
    handle = layers[0].register_forward_hook(lambda *a: calls.append(1))
    grouped_linear(x, layers)
    assert calls == [1]  # hooks (the engine's gradient capture) see their call
    handle.remove()
    mixed = [layers[0], nn.Linear(10, 4).double()]
    ys = grouped_linear(x, mixed)
    assert torch.equal(ys[1], mixed[1](x)) and torch.equal(ys[0], layers[0](x))


def _transformer(kernel, seed=0):
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(transformer_config("tiny", 40, layers=2, d_model=16, heads=2, ffn=24, dropout=0.1))
    model.double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = bs.sparsify(model, opt, method="set", density=0.3, update_every=10**6, total_steps=10**6,
                         pairs=model.sparse_pairs(), seed=seed, kernel=kernel, batch_size=64)
    return model, opt, engine


def test_masked_and_sparse_transformer_steps_agree():
    """Dropout, attention, grouped projections and the loss: the two paths train the same model."""
    gen = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(1, 40, (4, 7), generator=gen), torch.randint(1, 40, (4, 6), generator=gen)
    src[0, 5:] = 0  # padding
    losses = {}
    for kernel in ("dense", "sparse"):
        model, opt, engine = _transformer(kernel)
        assert all(layer.sparse_kernel == (kernel == "sparse") for layer in engine.layers.values())
        torch.manual_seed(11)
        run = []
        for _ in range(3):
            opt.zero_grad()
            logits = model(src, tgt[:, :-1])
            loss = bf.label_smoothed_cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), 0.1, 0)
            loss.backward()
            opt.step()
            engine.step()
            run.append(loss.item())
        losses[kernel] = (run, {n: l.dense_weight() for n, l in engine.layers.items()})
    (ld, wd), (ls, ws) = losses["dense"], losses["sparse"]
    assert ls == pytest.approx(ld, rel=1e-10)
    for name in wd:
        assert torch.allclose(wd[name], ws[name], atol=1e-10), name
    assert all(math.isfinite(v) for v in ld)
