"""Extension points: registered removal/regrowth scores, density schedules and methods; the engine
resolves them once and its update compares no method names."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse import methods, registry
from brainsparse.errors import BrainsparseError
from brainsparse.models import MLP

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "src" / "brainsparse" / "engine"


@pytest.fixture(autouse=True)
def _clean_registries():
    saved = [(table, dict(table)) for table in (registry.REMOVAL_SCORES, registry.REGROWTH_SCORES,
                                               registry.DENSITY_SCHEDULES, methods.PRESETS)]
    yield
    for table, content in saved:
        table.clear()
        table.update(content)


def _train(engine, model, opt, steps=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()


def test_registered_scores_are_used_and_get_what_they_need():
    seen = {"removal": 0, "regrowth": 0}

    @bs.register_removal_score("test_negative", needs=("gradient",))
    def negative(layer: bs.ScoreInput) -> torch.Tensor:
        seen["removal"] += 1
        assert layer.grad is not None and layer.grad.shape == layer.mask.shape  # recorded because needed
        return -layer.weight.abs().float() * layer.mask  # removes the largest weights

    @bs.register_regrowth_score("test_first")
    def first(layer: bs.ScoreInput) -> torch.Tensor:
        seen["regrowth"] += 1
        assert layer.grad is None  # not asked for
        scores = torch.arange(layer.mask.numel(), 0, -1, dtype=torch.float32).reshape(layer.mask.shape)
        return scores * ~layer.mask  # the first absent positions in row-major order

    torch.manual_seed(0)
    model = MLP([20, 16, 16, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = bs.sparsify(model, opt, method="set", removal="test_negative", regrowth="test_first",
                         density=0.3, update_every=4, total_steps=100, seed=0)
    before = {n: l.dense_weight().abs().clone() for n, l in engine.layers.items()}
    masks = {n: l.mask.clone() for n, l in engine.layers.items()}
    _train(engine, model, opt, steps=4)
    assert seen == {"removal": 2, "regrowth": 2}
    for name, layer in engine.layers.items():
        assert layer.links == masks[name].sum()
        grown = layer.mask & ~masks[name]
        absent = (~masks[name]).view(-1).nonzero().squeeze(1)
        assert grown.view(-1).nonzero().squeeze(1).tolist() == absent[: int(grown.sum())].tolist()
        assert before[name][masks[name] & ~layer.mask].numel() > 0


def test_registered_density_schedule_and_method():
    @bs.register_density_schedule("test_two_step")
    class TwoStep(bs.DensitySchedule):
        def at(self, step):
            d = 0.5 if step < 8 else self.target
            return d, d

    config = bs.register_method("test-method", regrowth="random", density_schedule="test_two_step")
    assert bs.resolve_method("test-method") is config and "test-method" in bs.method_names()
    torch.manual_seed(0)
    model = MLP([20, 16, 16, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = bs.sparsify(model, opt, method="test-method", density=0.2, update_every=4, total_steps=40, seed=0)
    assert isinstance(engine.density_schedule, TwoStep)
    assert engine.report()["density"] == pytest.approx(0.5, abs=0.01)
    _train(engine, model, opt, steps=8)
    assert engine.report()["density"] == pytest.approx(0.2, abs=0.01)
    assert engine.state_dict()["density_schedule"] == {"last_step": 8}


def test_unknown_and_builtin_names():
    with pytest.raises(BrainsparseError, match="unknown regrowth score 'nope'"):
        bs.resolve_method("set", regrowth="nope")
    with pytest.raises(BrainsparseError, match="built in"):
        bs.register_removal_score("magnitude", lambda layer: layer.weight)
    with pytest.raises(BrainsparseError, match="built in"):
        bs.register_method("rigl", regrowth="random")
    with pytest.raises(BrainsparseError, match="unknown score need"):
        bs.register_regrowth_score("x", lambda layer: layer.mask.float(), needs=("hessian",))


def test_density_schedules_step_like_lr_schedulers():
    config = bs.resolve_method("chtss")
    schedule = registry.DENSITY_SCHEDULES["sigmoid"](0.05, config, 100, 5, 100)
    first = schedule.step()
    assert schedule.last_step == 1 and first == schedule.at(1)
    schedule.step(50)
    other = registry.DENSITY_SCHEDULES["sigmoid"](0.05, config, 100, 5, 100)
    other.load_state_dict(schedule.state_dict())
    assert other.last_step == 50 and other.step() == schedule.at(51)
    assert schedule.at(0)[1] == pytest.approx(0.5) and schedule.at(100)[1] == pytest.approx(0.05)


def test_docs_example_runs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(ROOT / "docs" / "examples" / "custom_method.py"), run_name="__main__")
    assert out.getvalue().startswith("my-method ")


def test_engine_modules_are_small_and_compare_no_method_names():
    names = "|".join(re.escape(n) for n in [*methods.PRESETS, *registry.REMOVAL_SCORES, *registry.REGROWTH_SCORES,
                                             *registry.DENSITY_SCHEDULES])
    compare = re.compile(rf"(==|!=|\bin\b)\s*\(?\s*[\"']({names})[\"']|[\"']({names})[\"']\s*(==|!=)")
    for path in sorted(ENGINE.glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 450, path.name
        assert "method.name ==" not in text and "method.name !=" not in text, path.name
        hits = [line for line in text.splitlines() if compare.search(line)]
        assert not hits, f"{path.name}: {hits}"
