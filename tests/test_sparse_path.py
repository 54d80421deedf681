"""The engine on the sparse kernel path: same training as the dense-masked path."""

import copy

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse.kernels import SparseLinear
from brainsparse.models import MLP


def _pair(method, kernel, optimizer="sgd", seed=0, density=0.2, sizes=(20, 16, 16, 3), **kw):
    torch.manual_seed(seed)
    model = MLP(list(sizes)).double()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = bs.sparsify(model, opt, method=method, density=density, update_every=3, total_steps=100, seed=seed,
                         kernel=kernel, init="uniform", **kw)
    return model, opt, engine


def _train(model, opt, engine, steps, seed=1, n_in=20):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, n_in, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method, optimizer", [("set", "sgd"), ("chts", "sgd"), ("rigl", "adam"), ("mest", "sgd"),
                                               ("ctre", "adam"), ("chtss", "sgd")])
def test_sparse_path_matches_dense_masked_path(method, optimizer):
    dense = _pair(method, "dense", optimizer)
    sparse = _pair(method, "sparse", optimizer)
    assert all(isinstance(l.module, SparseLinear) for l in sparse[2].layers.values())
    ld = _train(*dense, steps=10)
    ls = _train(*sparse, steps=10)
    assert ld == pytest.approx(ls, rel=1e-9, abs=1e-12)
    for name, layer in dense[2].layers.items():
        other = sparse[2].layers[name]
        assert torch.equal(layer.mask, other.mask), name
        assert torch.allclose(layer.dense_weight(), other.dense_weight(), atol=1e-10)
        assert other.module.values.numel() == other.links == layer.links
    assert len(dense[2].history) == len(sparse[2].history) == 3


def test_optimizer_state_follows_links_through_updates():
    model, opt, engine = _pair("set", "sparse")
    _train(model, opt, engine, 2)
    layer = engine.layers["layers.0"]
    values = layer.module.values
    before_mask = layer.mask.clone()
    momentum_dense = layer.module.structure.to_dense(opt.state[values]["momentum_buffer"])
    _train(model, opt, engine, 1)  # step 3: optimizer step then topology update
    after = layer.module.structure.to_dense(opt.state[values]["momentum_buffer"])
    new = layer.mask & ~before_mask
    kept = layer.mask & before_mask
    assert (after[new] == 0).all() and (layer.dense_weight()[new] == 0).all()
    assert opt.state[values]["momentum_buffer"].shape == values.shape == (layer.links,)
    assert (after[kept] != 0).float().mean() > 0.9  # kept links carry their momentum
    del momentum_dense


def test_sparse_resume_round_trip():
    m1, o1, e1 = _pair("chts", "sparse", seed=3)
    _train(m1, o1, e1, 4)
    # deep copy: a loaded optimizer state would otherwise share o1's live momentum tensors
    state = copy.deepcopy({"model": m1.state_dict(), "opt": o1.state_dict(), "engine": e1.state_dict()})
    m2, o2, e2 = _pair("chts", "sparse", seed=9)
    e2.load_state_dict(state["engine"])
    m2.load_state_dict(state["model"])
    o2.load_state_dict(state["opt"])
    l1 = _train(m1, o1, e1, 5, seed=5)
    l2 = _train(m2, o2, e2, 5, seed=5)
    assert l1 == l2
    for n in e1.layers:
        assert torch.equal(e1.layers[n].mask, e2.layers[n].mask)


def test_auto_kernel_picks_sparse_at_low_density():
    torch.manual_seed(0)
    model = MLP([64, 64, 3])
    engine = bs.sparsify(model, None, method="static", density=0.01, kernel="auto", batch_size=32)
    assert engine.layers["layers.0"].sparse_kernel
    engine = bs.sparsify(MLP([64, 64, 3]), None, method="static", density=0.9, kernel="auto")
    assert not engine.layers["layers.0"].sparse_kernel


def test_updates_after_the_decay_remove_on_the_links_and_choose_as_the_dense_scores(monkeypatch):
    """Once CHTss has reached its density, an update's layers are not shrunk copies: soft
    magnitude removal reads the link values (no dense score array) and picks the links, with the
    same random numbers, that the dense scores pick."""
    from brainsparse.engine import update as update_module

    def after_decay(dense_removal):
        model, opt, engine = _pair("chtss", "sparse", sizes=(20, 48, 48, 3), density=0.1)
        if dense_removal:  # what the layers' removal does without link values: the dense scores
            for layer in engine.layers.values():
                monkeypatch.setattr(layer.storage, "link_values", lambda: None)
        _train(model, opt, engine, 2)
        engine.step_count = 90  # past the decay window (80 % of 100 steps)
        engine.update()  # the update that prunes to the target
        dense_selections = []
        original = update_module.select
        monkeypatch.setattr(update_module, "select", lambda *a, **k: dense_selections.append(1) or original(*a, **k))
        engine.step_count = 93
        record = engine.update()
        monkeypatch.setattr(update_module, "select", original)
        assert all(layer["pruned"] == 0 and layer["removed"] > 0 for layer in record["layers"].values())
        return {n: layer.mask.clone() for n, layer in engine.layers.items()}, len(dense_selections)

    on_links, dense_calls = after_decay(dense_removal=False)
    assert dense_calls == 0
    dense, dense_calls = after_decay(dense_removal=True)
    assert dense_calls == len(dense)
    assert on_links.keys() == dense.keys()
    for name in dense:
        assert torch.equal(on_links[name], dense[name]), name
