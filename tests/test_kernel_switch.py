"""``kernel="auto"`` re-decides a layer's path after every topology update (density schedules)."""

import copy

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse.engine import SWITCH_BACK_FACTOR
from brainsparse.kernels import SparseLinear, crossover_density
from brainsparse.methods import resolve_method
from brainsparse.models import MLP

SIZES = (20, 48, 48, 3)


def _engine(method, kernel, optimizer="sgd", seed=0, density=0.05, total_steps=60, update_every=3, **kw):
    torch.manual_seed(seed)
    model = MLP(list(SIZES)).double()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if method in ("chtss", "granet"):  # start above every measured crossover (tiny layers: ~70 %)
        kw.setdefault("initial_density", 0.9)
    engine = bs.sparsify(model, opt, method=method, density=density, update_every=update_every,
                         total_steps=total_steps, seed=seed, kernel=kernel, batch_size=8, **kw)
    return model, opt, engine


def _batches(steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, SIZES[0], generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(steps)]


def _step(model, opt, engine, batch):
    x, y = batch
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    record = engine.step()
    return loss.item(), record


def _per_link_state(opt, layer):
    """The layer's optimizer state tensors as dense (out, in) tensors, on either path."""
    state = opt.state[layer.param]
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() >= 1:
            out[key] = layer.module.structure.to_dense(value) if layer.sparse_kernel else value.clone()
    return out


def _paths(engine):
    return {n: isinstance(l.module, SparseLinear) for n, l in engine.layers.items()}


@pytest.mark.parametrize("method, optimizer", [("chtss", "sgd"), ("granet", "adam"), ("neuroprune", "sgd")])
def test_decaying_method_moves_to_sparse_path_with_identical_state(method, optimizer):
    """Masked nn.Linear while the density is above the crossover, SparseLinear once below it; at
    the switch weights, masks and optimizer state carry over exactly, and the run stays the
    run of the dense-masked path (same masks, same weights in float64)."""
    auto = _engine(method, "auto", optimizer)
    dense = _engine(method, "dense", optimizer)
    assert not any(_paths(auto[2]).values())  # starts at 90 % (100 % for NeuroPrune): masked
    switched_at = None
    for step, batch in enumerate(_batches(60), start=1):
        loss_a, record = _step(*auto, batch)
        loss_d, _ = _step(*dense, batch)
        assert loss_a == pytest.approx(loss_d, rel=1e-9, abs=1e-12)
        if record is not None and "kernel_switch" in record:
            if switched_at is None:
                # before the switch both engines ran the same arithmetic: equal to the last bit
                switched_at = step
                assert set(record["kernel_switch"].values()) == {"sparse"}
                for name in record["kernel_switch"]:
                    a, d = auto[2].layers[name], dense[2].layers[name]
                    assert isinstance(a.module, SparseLinear) and a.module.values is a.param
                    assert torch.equal(a.mask, d.mask) and torch.equal(a.module.mask, d.mask)
                    assert torch.equal(a.dense_weight(), d.weight.detach())
                    sa, sd = _per_link_state(auto[1], a), _per_link_state(dense[1], d)
                    assert sa.keys() == sd.keys() and sa
                    for key in sa:
                        assert torch.equal(sa[key], sd[key]), key
                    # the optimizer updates the link values now, and nothing of the old weight
                    params = [p for g in auto[1].param_groups for p in g["params"]]
                    assert any(p is a.param for p in params) and not any(p is d.weight for p in params)
        if record is not None:
            density = {n: l.links / l.mask.numel() for n, l in auto[2].layers.items()}
            for name, sparse in _paths(auto[2]).items():
                limit = crossover_density(8, shape=tuple(auto[2].layers[name].mask.shape))
                assert sparse == (density[name] < limit), (step, name, density[name])
    assert switched_at is not None and all(_paths(auto[2]).values())
    for name, layer in dense[2].layers.items():
        other = auto[2].layers[name]
        assert torch.equal(layer.mask, other.mask), name
        assert torch.allclose(layer.dense_weight(), other.dense_weight(), atol=1e-10)


def test_switch_round_trip_is_exact_for_sgd_and_adam():
    for optimizer in ("sgd", "adam"):
        model, opt, engine = _engine("set", "dense", optimizer, density=0.3)
        for batch in _batches(4):
            _step(model, opt, engine, batch)
        layer = engine.layers["layers.0"]
        weight, mask, state = layer.weight.detach().clone(), layer.mask.clone(), _per_link_state(opt, layer)
        assert state and all(v.abs().sum() > 0 for v in state.values())
        engine._switch_kernel(layer, "sparse")
        assert layer.sparse_kernel and torch.equal(layer.dense_weight(), weight) and torch.equal(layer.mask, mask)
        assert opt.state[layer.param]["step" if optimizer == "adam" else "momentum_buffer"] is not None
        for key, value in _per_link_state(opt, layer).items():
            assert torch.equal(value, state[key]), key
        assert len(layer.hooks) == 0  # SET on the sparse path needs no gradient capture
        engine._switch_kernel(layer, "dense")
        assert not layer.sparse_kernel and type(layer.module) is nn.Linear
        assert torch.equal(layer.weight.detach(), weight) and torch.equal(layer.mask_float, mask.double())
        assert model.layers[0] is layer.module and model.layers[0].bias is layer.module.bias
        for key, value in _per_link_state(opt, layer).items():
            assert torch.equal(value, state[key]), key
        assert len(layer.hooks) == 1  # the gradient mask is back on the dense weight
        # and training goes on masked: gradients and weights stay zero off-mask
        _step(model, opt, engine, _batches(1, seed=7)[0])
        assert not layer.weight.detach()[~layer.mask].any()


def test_switch_reinstalls_path_specific_hooks():
    """RigL needs the dense gradient before an update: from the weight's gradient hook on the
    masked path, from a forward hook on the sparse path; the old path's hook must go."""
    model, opt, engine = _engine("rigl", "dense", density=0.3, update_every=2)
    layer = engine.layers["layers.2"]
    engine._switch_kernel(layer, "sparse")
    assert len(layer.hooks) == 1
    first, second = _batches(2)
    _step(model, opt, engine, first)
    assert layer.dense_grad is None
    x, y = second  # step 2 ends with an update: its batch leaves the dense gradient
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert layer.dense_grad is not None and layer.dense_grad.shape == layer.mask.shape
    assert engine.layers["layers.0"].dense_grad.shape == (48, 20)  # still on the masked path
    opt.step()
    record = engine.step()
    assert record is not None and record["layers"]["layers.2"]["regrown"] > 0
    engine.detach()
    assert not layer.hooks
    engine._switch_kernel(layer, "dense")
    assert not layer.hooks  # a detached engine installs none


def test_density_rising_past_the_crossover_goes_back_with_hysteresis():
    c = crossover_density(8, shape=(48, 20))
    assert c == crossover_density(8, shape=(48, 48))  # both below the table's smallest layer
    hi = min(0.95, SWITCH_BACK_FACTOR * c + 0.2)
    method = resolve_method("set", density_schedule="linear", initial_density=0.5 * c, prune_end_fraction=0.5)
    model, opt, engine = _engine(method, "auto", density=hi, total_steps=120, update_every=3)
    assert all(_paths(engine).values())
    seen = []
    for batch in _batches(60):
        record = _step(model, opt, engine, batch)[1]
        if record is None:
            continue
        for layer in engine.layers.values():
            d = layer.links / layer.mask.numel()
            if d < c:
                assert layer.sparse_kernel
            elif d >= SWITCH_BACK_FACTOR * c:
                assert not layer.sparse_kernel
            seen.append((d, layer.sparse_kernel))
    # between the crossover and the switch-back density the layers stayed sparse
    assert any(c <= d < SWITCH_BACK_FACTOR * c and sparse for d, sparse in seen)
    assert not any(_paths(engine).values())


@pytest.mark.parametrize("engine_first", [True, False])
@pytest.mark.parametrize("split, optimizer", [(9, "sgd"), (30, "sgd"), (30, "adam")])
def test_resume_of_a_switched_run_reproduces_it(split, optimizer, engine_first):
    """A checkpoint before (step 9) or after (step 30) the layers went sparse resumes into a
    fresh engine (which starts masked) and continues exactly as the uninterrupted run."""
    batches = _batches(60)
    m1, o1, e1 = _engine("chtss", "auto", optimizer)
    for batch in batches[:split]:
        _step(m1, o1, e1, batch)
    state = copy.deepcopy({"model": m1.state_dict(), "opt": o1.state_dict(), "engine": e1.state_dict()})
    assert state["engine"]["kernels"] == {n: "sparse" if s else "dense" for n, s in _paths(e1).items()}
    m2, o2, e2 = _engine("chtss", "auto", optimizer, seed=5)
    if engine_first:  # the order of the training loop: engine, model, optimizer
        e2.load_state_dict(state["engine"])
        m2.load_state_dict(state["model"])
    else:  # the model's state dict moves the layers to its paths itself
        m2.load_state_dict(state["model"])
        e2.load_state_dict(state["engine"])
    o2.load_state_dict(state["opt"])
    assert _paths(e2) == _paths(e1)
    l1 = [_step(m1, o1, e1, b)[0] for b in batches[split:]]
    l2 = [_step(m2, o2, e2, b)[0] for b in batches[split:]]
    assert l1 == l2
    assert all(_paths(e2).values())
    for name, layer in e1.layers.items():
        other = e2.layers[name]
        assert torch.equal(layer.mask, other.mask)
        assert torch.equal(layer.dense_weight(), other.dense_weight())
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(e1.history) == strip(e2.history)


def test_checkpoint_without_kernel_record_keeps_built_paths():
    """Checkpoints from before kernel switching have no "kernels": the built paths stay."""
    model, opt, engine = _engine("chtss", "auto")
    state = engine.state_dict()
    del state["kernels"]
    _, _, other = _engine("chtss", "auto", seed=3)
    other.load_state_dict(state)
    assert not any(_paths(other).values())


def test_fixed_kernels_never_switch():
    for kernel in ("dense", "sparse"):
        model, opt, engine = _engine("chtss", kernel)
        for batch in _batches(60):
            record = _step(model, opt, engine, batch)[1]
            assert record is None or "kernel_switch" not in record
        assert set(_paths(engine).values()) == {kernel == "sparse"}


def test_auto_kernel_classifier_run_switches_and_resumes_exactly(tmp_path, mnist_dir):
    """A CHTss run with --kernel auto goes sparse once decayed; resumed from a checkpoint taken
    after the switch (fresh model built masked at 50 %) it ends exactly as the uninterrupted run."""
    import json

    from brainsparse.train import TrainConfig, train_classifier
    from brainsparse.train.checkpoint import load_checkpoint

    cfg = TrainConfig(dataset="mnist", data_dir=str(mnist_dir), method="chtss", density=0.05, epochs=3, seed=0,
                      kernel="auto", hidden=[64, 64], train_subset=1500, batch_size=32)
    full = train_classifier(cfg, tmp_path / "full", progress=False)
    train_classifier(cfg, tmp_path / "split", progress=False, stop_after_epochs=2)
    kernels = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["engine"]["kernels"]
    assert set(kernels.values()) == {"sparse"}  # decayed below the crossover within two epochs
    resumed = train_classifier(TrainConfig(), tmp_path / "split", resume=True, progress=False)

    def metrics(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "update_time_s", "train_time_s")} for r in rows]

    assert metrics(tmp_path / "full") == metrics(tmp_path / "split")
    assert full["final_test_accuracy"] == resumed["final_test_accuracy"]


def test_preferential_attachment_shrink_on_links_matches_the_dense_form():
    from brainsparse.kernels import LinkStructure
    from brainsparse.neuroprune import preferential_attachment_shrink, preferential_attachment_shrink_links

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(30, 20, generator=g) < 0.2
    mask[3] = False  # an empty row
    weight = torch.randn(30, 20, generator=g, dtype=torch.float64) * mask
    s = LinkStructure.from_mask(mask)
    links = preferential_attachment_shrink_links(s.gather(weight), s.rows, s.cols, s.shape, step_size=0.3)
    dense = preferential_attachment_shrink(weight, mask, step_size=0.3)
    assert torch.allclose(s.to_dense(links), dense, rtol=1e-12, atol=1e-15)
    assert (links == 0).any() and (links != 0).any()  # some links shrink to zero, others survive
