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
    assert len(engine.history) >= 5
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
