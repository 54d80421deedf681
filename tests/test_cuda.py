"""The engine on a CUDA device (skipped without one; run by scripts/gpu-check.sh)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import brainsparse as bs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("method", ["set", "rigl", "mest", "cht", "chts", "chtss", "granet"])
def test_cuda_engine_updates_keep_density_and_masks(method, kernel):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = bs.models.MLP([64, 96, 96, 10]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(240, 64, generator=gen).to(device)
    engine = bs.sparsify(model, opt, method=method, density=0.1, update_every=3, total_steps=30, seed=0,
                         kernel=kernel, init_data=x[:64])
    y = torch.randint(0, 10, (240,), generator=gen).to(device)
    for step in range(30):
        xb, yb = x[step * 8 : (step + 1) * 8], y[step * 8 : (step + 1) * 8]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        engine.step()
    assert len(engine.history) >= 2  # CHT stops early at its epitopological minimum
    for name, layer in engine.layers.items():
        assert layer.mask.is_cuda, name
        assert layer.links == layer.target, name
    out = model(x[:8])
    assert out.is_cuda and torch.isfinite(out).all()


def test_cuda_topology_matches_cpu_for_a_seed():
    """One seed gives the same initial topology on CPU and on the GPU (the generator stays on CPU)."""
    masks = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = bs.models.MLP([64, 96, 10]).to(device)
        bs.sparsify(model, None, method="static", density=0.1, init="bsw", seed=3)
        masks.append([m.weight.detach().ne(0).cpu() for m in model.modules() if isinstance(m, nn.Linear)])
    for a, b in zip(*masks):
        assert torch.equal(a, b)


def test_cuda_auto_kernel_stays_masked():
    """``kernel="auto"`` keeps GPU layers on the masked path (faster there, gpu-check.json)."""
    model = bs.models.MLP([64, 96, 10]).cuda()
    engine = bs.sparsify(model, None, method="static", density=0.01, init="bsw", seed=0, kernel="auto")
    assert not any(layer.sparse_kernel for layer in engine.layers.values())


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_cuda_compiled_sparse_mlp_trains_like_eager(compile_backend):
    """The registered sparse operators under torch.compile on the GPU (CSR, torch backend)."""
    import copy

    from brainsparse.kernels import SparseLinear

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    layers = []
    for a, b in ((32, 48), (48, 10)):
        linear = nn.Linear(a, b)
        layers += [SparseLinear.from_linear(linear, torch.rand(b, a, generator=gen) < 0.2), nn.ReLU()]
    eager = nn.Sequential(*layers[:-1]).cuda()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=compile_backend)
    x = torch.randn(5, 16, 32, generator=gen).cuda()
    y = torch.randint(0, 10, (5, 16), generator=gen).cuda()
    for model, fwd in ((eager, eager), (compiled_model, compiled)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(fwd(x[step]), y[step]).backward()
            opt.step()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
