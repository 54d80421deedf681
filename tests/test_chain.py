"""Fused chains of sparse layers + ReLU (kernels/chain.py) equal the module-by-module path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


def _run(model, x, y, fused):
    model.zero_grad(set_to_none=True)
    out = model(x) if fused else model.layers(x)
    nn.functional.cross_entropy(out, y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach().clone(), grads, None if x.grad is None else x.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 32, 45, 300])
def test_chain_equals_layer_by_layer_bit_for_bit(dtype, batch):
    model = _sparse_mlp([50, 70, 60, 40, 5], 0.1, dtype)
    x = torch.randn(batch, 50, dtype=dtype)
    y = torch.randint(0, 5, (batch,))
    out_f, grads_f, _ = _run(model, x, y, fused=True)
    out_l, grads_l, _ = _run(model, x, y, fused=False)
    assert torch.equal(out_f, out_l)
    assert grads_f.keys() == grads_l.keys() and len(grads_f) == 8
    for name in grads_f:
        assert torch.equal(grads_f[name], grads_l[name]), name


def test_chain_input_gradient_no_bias_empty_layer_and_many_threads():
    model = _sparse_mlp([40, 64, 64, 3], 0.2, torch.float64, bias=False, empty_layer=2)
    x = torch.randn(700, 40, dtype=torch.float64, requires_grad=True)  # big enough to go parallel
    y = torch.randint(0, 3, (700,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out_f, grads_f, gx_f = _run(model, x, y, fused=True)
        x.grad = None
        out_l, grads_l, gx_l = _run(model, x, y, fused=False)
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
    before = model(x)
    layer = model.layers[0]
    layer.set_structure(uniform(30, 20, 0.6, generator=torch.Generator().manual_seed(5)))
    after_fused = model(x)
    after_layers = model.layers(x)
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
    # steps 1 and 2 fused both hidden layers; step 3 (before the update) ran them as modules
    assert calls == [2, 2]
    assert len(engine.history) == 1 and engine.history[0]["layers"]
