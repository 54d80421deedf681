"""The masks live in the model: ``model.state_dict()`` alone restores a sparse model into a freshly
sparsified one (any seed), and model + engine + optimizer state, loaded in either order, continue
training bit-identically (issue 13)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse.engine import MASK_BUFFER
from brainsparse.models import MLP

SIZES = [20, 24, 24, 5]


def _setup(kernel: str, seed: int):
    torch.manual_seed(seed)
    model = MLP(SIZES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    engine = bs.sparsify(model, opt, method="chts", density=0.2, update_every=3, total_steps=40, seed=seed,
                         kernel=kernel)
    return model, opt, engine


def _batches(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, SIZES[0], generator=gen), torch.randint(0, SIZES[-1], (16,), generator=gen))
            for _ in range(n)]


def _train(model, opt, engine, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()


def _snapshot(model, engine):
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "masks": {n: l.mask.clone() for n, l in engine.layers.items()},
            "history": [{k: v for k, v in r.items() if k != "time_s"} for r in engine.history]}


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_model_state_dict_alone_restores_into_another_seed(kernel):
    model, opt, engine = _setup(kernel, seed=0)
    _train(model, opt, engine, _batches(10, seed=5))
    assert len(engine.history) == 3
    state = model.state_dict()
    if kernel == "dense":
        assert all(f"{n}.{MASK_BUFFER}" in state for n in engine.layers)
    assert "masks" not in engine.state_dict()
    fresh, _, fresh_engine = _setup(kernel, seed=1)
    assert any(not torch.equal(fresh_engine.layers[n].mask, engine.layers[n].mask) for n in engine.layers)
    fresh.load_state_dict(state)
    x = torch.randn(7, SIZES[0])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    for name, layer in engine.layers.items():
        assert torch.equal(fresh_engine.layers[name].mask, layer.mask)  # the engine reads the module's mask


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
@pytest.mark.parametrize("order", ["model-engine-optimizer", "engine-model-optimizer", "optimizer-engine-model"])
def test_training_continues_bit_identically_in_any_order(kernel, order):
    batches = _batches(22, seed=5)
    model, opt, engine = _setup(kernel, seed=0)
    _train(model, opt, engine, batches[:10])
    saved = copy.deepcopy({"model": model.state_dict(), "engine": engine.state_dict(), "optimizer": opt.state_dict()})
    _train(model, opt, engine, batches[10:])
    expected = _snapshot(model, engine)

    fresh, fresh_opt, fresh_engine = _setup(kernel, seed=1)
    loaders = {"model": fresh.load_state_dict, "engine": fresh_engine.load_state_dict,
               "optimizer": fresh_opt.load_state_dict}
    for part in order.split("-"):
        loaders[part](copy.deepcopy(saved[part]))
    _train(fresh, fresh_opt, fresh_engine, batches[10:])
    got = _snapshot(fresh, fresh_engine)
    assert len(got["history"]) > len(saved["engine"]["history"])  # updates happened after the restore
    assert got["history"] == expected["history"]
    for name, mask in expected["masks"].items():
        assert torch.equal(got["masks"][name], mask), name
    assert got["params"].keys() == expected["params"].keys()
    for key, value in expected["params"].items():
        assert torch.equal(got["params"][key], value), key


def test_finalize_removes_the_mask_buffers_and_detaches():
    model, opt, engine = _setup("dense", seed=0)
    _train(model, opt, engine, _batches(4, seed=5))
    masks = {n: l.mask.clone() for n, l in engine.layers.items()}
    bs.finalize(model)
    assert not any(MASK_BUFFER in m._buffers for m in model.modules())
    assert engine._detached
    for name, mask in masks.items():
        assert not model.get_submodule(name).weight[~mask].any()


def test_a_changed_mask_buffer_is_what_the_engine_masks_with():
    model, opt, engine = _setup("dense", seed=0)
    layer = engine.layers["layers.0"]
    with torch.no_grad():
        model.layers[0].weight_mask.fill_(True)  # e.g. written by hand or by load_state_dict
    x, y = _batches(1, seed=5)[0]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert (model.layers[0].weight.grad != 0).float().mean() > 0.5  # the float copy followed the buffer
    assert layer.links == layer.mask.numel()


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_checkpoints_with_engine_masks_still_restore(kernel):
    """A checkpoint from before the masks moved into the model: masks in the engine state, no
    weight_mask entries in the model state."""
    from brainsparse.engine.state import checkpoint_masks
    from brainsparse.train.common import restore_training_state

    batches = _batches(16, seed=5)
    model, opt, engine = _setup(kernel, seed=0)
    _train(model, opt, engine, batches[:8])
    masks = {n: l.mask.clone() for n, l in engine.layers.items()}
    state = copy.deepcopy({"model": model.state_dict(), "engine": engine.state_dict(), "optimizer": opt.state_dict()})
    assert all(torch.equal(checkpoint_masks(state["model"], state["engine"])[n], m) for n, m in masks.items())
    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith(MASK_BUFFER)}
    state["engine"]["masks"] = masks
    _train(model, opt, engine, batches[8:])
    fresh, fresh_opt, fresh_engine = _setup(kernel, seed=1)
    restore_training_state(state, fresh_engine, fresh, fresh_opt)
    _train(fresh, fresh_opt, fresh_engine, batches[8:])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
