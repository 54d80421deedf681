"""Fused chains of sparse layers + ReLU (kernels/chain.py) equal the module-by-module path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsparse.errors import BrainsparseError
from brainsparse.kernels import SparseLinear, available
from brainsparse.kernels.chain import chain_eligible, sequential_forward
from brainsparse.models.mlp import MLP
from brainsparse.topology import uniform

pytestmark = pytest.mark.skipif(not available(), reason="the C++ kernel is unavailable")


def _sparse_mlp(sizes, density, dtype=torch.float32, seed=0, bias=True, empty_layer=None):
    torch.manual_seed(seed)
    model = MLP(sizes).to(dtype)
    g = torch.Generator().manual_seed(seed)
    for i, module in enumerate(model.layers):
        if isinstance(module, nn.Linear) and i < len(model.layers) - 1:
            mask = uniform(module.out_features, module.in_features, density, generator=g)
            if i == empty_layer:
                mask.zero_()
            layer = SparseLinear.from_linear(module, mask)
            if not bias:
                layer.bias = None
            model.layers[i] = layer
    return model


def _run(model, x, y, fused, full_head=False):
    """Output, parameter gradients and input gradient of ``model`` on ``(x, y)``: fused (the MLP's
    forward) or module by module; ``full_head``: module by module with the dense head computed as
    a SparseLinear holding every link (what the fused chain computes, bit for bit)."""
    model.zero_grad(set_to_none=True)
    if fused:
        out = model(x)
    elif full_head:
        head = model.layers[-1]
        full = SparseLinear.from_linear(head, torch.ones_like(head.weight, dtype=torch.bool))
        full.values = nn.Parameter(head.weight.detach().reshape(-1).clone())  # row-major = link order
        out = full(model.layers[:-1](x))
    else:
        out = model.layers(x)
    nn.functional.cross_entropy(out, y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    if full_head:
        grads[f"layers.{len(model.layers) - 1}.weight"] = full.values.grad.view_as(head.weight).clone()
    return out.detach().clone(), grads, None if x.grad is None else x.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 32, 45, 300])
def test_chain_equals_layer_by_layer_bit_for_bit(dtype, batch):
    """The sparse layers and the dense head (a layer with every link) equal the module-by-module
    path bit for bit; against nn.Linear's own head only the last bits differ."""
    model = _sparse_mlp([50, 70, 60, 40, 5], 0.1, dtype)
    x = torch.randn(batch, 50, dtype=dtype)
    y = torch.randint(0, 5, (batch,))
    out_f, grads_f, _ = _run(model, x, y, fused=True)
    out_l, grads_l, _ = _run(model, x, y, fused=False, full_head=True)
    assert torch.equal(out_f, out_l)
    assert grads_f.keys() == grads_l.keys() and len(grads_f) == 8
    for name in grads_f:
        assert torch.equal(grads_f[name], grads_l[name]), name
    out_m, grads_m, _ = _run(model, x, y, fused=False)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(out_f, out_m, **tol)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_m[name], **tol)


def test_chain_input_gradient_no_bias_empty_layer_and_many_threads():
    model = _sparse_mlp([40, 64, 64, 3], 0.2, torch.float64, bias=False, empty_layer=2)
    x = torch.randn(700, 40, dtype=torch.float64, requires_grad=True)  # big enough to go parallel
    y = torch.randint(0, 3, (700,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out_f, grads_f, gx_f = _run(model, x, y, fused=True)
        x.grad = None
        out_l, grads_l, gx_l = _run(model, x, y, fused=False, full_head=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out_f, out_l) and torch.equal(gx_f, gx_l)
    for name in grads_l:
        assert torch.equal(grads_f[name], grads_l[name]), name


def test_chain_gradcheck():
    model = _sparse_mlp([6, 8, 7, 2], 0.5, torch.float64)
    layers = [model.layers[0], model.layers[2]]
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def g(x):
        return sequential_forward(nn.Sequential(layers[0], nn.ReLU(), layers[1]), x)

    assert torch.autograd.gradcheck(g, (x,))
    out = sequential_forward(nn.Sequential(layers[0], nn.ReLU(), layers[1]), x)
    out.sum().backward()
    for layer in layers:
        assert layer.values.grad is not None and layer.bias.grad is not None


def test_hooks_and_dtype_mismatch_fall_back_to_modules():
    model = _sparse_mlp([10, 12, 3], 0.5)
    x = torch.randn(4, 10)
    seen = []
    handle = model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not chain_eligible(model.layers[0], x)
    model(x)
    assert seen == [torch.Size([4, 12])]  # the hook ran: the layer ran as a module
    handle.remove()
    assert chain_eligible(model.layers[0], x)
    assert not chain_eligible(model.layers[0], x.double())
    assert not chain_eligible(model.layers[2], x)  # the dense head is not a SparseLinear


def test_chain_follows_changed_structure():
    model = _sparse_mlp([20, 30, 4], 0.3)
    x = torch.randn(8, 20)
    before = model(x).detach()  # no graph kept: a new link count needs a fresh graph (set_structure)
    layer = model.layers[0]
    layer.set_structure(uniform(30, 20, 0.6, generator=torch.Generator().manual_seed(5)))
    y = torch.randint(0, 4, (8,))
    after_fused, _, _ = _run(model, x, y, fused=True)
    after_layers, _, _ = _run(model, x, y, fused=False, full_head=True)
    assert torch.equal(after_fused, after_layers) and not torch.equal(before, after_fused)


def test_idle_engine_recorders_let_the_chain_run_and_act_before_updates():
    """RigL's gradient recorder is idle except on the batch before an update: the chain runs
    then (same numbers), and the recorder still captures the dense gradient when due."""
    from brainsparse import sparsify
    from brainsparse.kernels import chain

    torch.manual_seed(0)
    model = MLP([30, 40, 40, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = sparsify(model, opt, method="rigl", density=0.2, kernel="sparse", update_every=3, total_steps=30)
    calls = []
    original = chain.sparse_relu_chain

    def spy(x, layers, relu):
        calls.append(len(layers))
        return original(x, layers, relu)

    chain.sparse_relu_chain = spy
    try:
        x, y = torch.randn(16, 30), torch.randint(0, 4, (16,))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            engine.step()
    finally:
        chain.sparse_relu_chain = original
    # steps 1 and 2 fused both hidden layers and the head; step 3 (before the update) ran them as modules
    assert calls == [3, 3]
    assert len(engine.history) == 1 and engine.history[0]["layers"]


def test_dense_tail_only_when_small_plain_and_fitting(monkeypatch):
    """A dense nn.Linear closes a run only when small, hook-free and of the right width; widths
    that do not fit are left to the modules, which raise their own error (no kernel call)."""
    from brainsparse.kernels import chain

    calls = []
    original = chain.sparse_relu_chain

    def spy(x, layers, relu):
        calls.append([type(layer).__name__ for layer in layers])
        return original(x, layers, relu)

    monkeypatch.setattr(chain, "sparse_relu_chain", spy)
    model = _sparse_mlp([12, 16, 3], 0.5)
    x = torch.randn(4, 12)
    model(x)
    assert calls == [["SparseLinear", "Linear"]]
    handle = model.layers[2].register_forward_hook(lambda *a: None)
    model(x)
    assert calls[-1] == ["SparseLinear"]
    handle.remove()
    monkeypatch.setattr(chain, "DENSE_TAIL_MAX", 16 * 3 - 1)
    model(x)
    assert calls[-1] == ["SparseLinear"]
    monkeypatch.setattr(chain, "DENSE_TAIL_MAX", 1 << 17)

    # a head whose width does not fit the sparse layer's output is not fused, and errors as unfused
    bad = nn.Sequential(model.layers[0], nn.ReLU(), nn.Linear(17, 3))
    with pytest.raises(RuntimeError):
        sequential_forward(bad, x)
    assert calls[-1] == ["SparseLinear"]
    # neither is a run whose input width is wrong
    n = len(calls)
    with pytest.raises(BrainsparseError, match="13 features"):
        sequential_forward(nn.Sequential(model.layers[0], nn.ReLU()), torch.randn(4, 13))
    assert len(calls) == n
    # two sparse layers whose widths do not fit stay two runs
    other = SparseLinear.from_linear(nn.Linear(20, 5), torch.ones(5, 20, dtype=torch.bool))
    with pytest.raises(BrainsparseError, match="16 features"):
        sequential_forward(nn.Sequential(model.layers[0], nn.ReLU(), other), x)
    assert calls[-1] == ["SparseLinear"]


def test_fused_arguments_follow_replaced_index_buffers_and_models_are_freed():
    import gc

    from brainsparse.kernels import chain

    model = _sparse_mlp([20, 30, 4], 0.3)
    x, y = torch.randn(8, 20), torch.randint(0, 4, (8,))
    model(x)
    first = model.layers[0]
    runs = dict(chain._RUNS[first])
    model.layers[0].set_structure(uniform(30, 20, 0.2, generator=torch.Generator().manual_seed(1)))
    out_f, grads_f, _ = _run(model, x, y, fused=True)
    out_l, grads_l, _ = _run(model, x, y, fused=False, full_head=True)
    assert torch.equal(out_f, out_l)
    assert chain._RUNS[first] != runs  # rebuilt for the new buffers
    before = len(chain._RUNS)
    del model, first, runs
    gc.collect()
    assert len(chain._RUNS) < before


def test_evaluation_batches_fuse_and_equal_the_training_forward(monkeypatch):
    """Without autograd a run fuses while its activations fit NO_GRAD_ACTIVATIONS (the same
    numbers as with autograd); beyond, the modules run one by one."""
    from brainsparse.kernels import chain

    model = _sparse_mlp([50, 70, 60, 40, 5], 0.1)
    x = torch.randn(300, 50)
    trained = model(x).detach()
    with torch.no_grad():
        assert torch.equal(model(x), trained)
    with torch.inference_mode():
        assert torch.equal(model(x), trained)
    calls = []
    original = chain.sparse_relu_chain
    monkeypatch.setattr(chain, "sparse_relu_chain", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(chain, "NO_GRAD_ACTIVATIONS", 300 * (50 + 70 + 60 + 40 + 5) * 4 - 1)
    with torch.no_grad():
        out = model(x)
    assert calls == [] and torch.equal(out, model.layers(x).detach())
    model(x)  # with autograd the budget does not apply
    assert calls == [1]
