"""Recipes as data, task-aware defaults, `brainsparse reproduce` and the method × task grid."""

from __future__ import annotations

import json

import pytest

from brainsparse.cli import main
from brainsparse.errors import BrainsparseError
from brainsparse.methods import PRESETS, resolve_method
from brainsparse.recipes import load_recipe, recipe_for, recipe_names, task_method_options
from brainsparse.reproduce import plan_runs, report_markdown, reproduce
from brainsparse.train import TrainConfig, task_entry
from brainsparse.train.common import with_task_defaults
from brainsparse.train.language_model import LMConfig
from brainsparse.train.translation import TranslationConfig
from conftest import make_fake_mnist
from test_lm import make_fake_ptb
from test_translation import write_corpus


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    return make_fake_mnist(tmp_path_factory.mktemp("small-mnist"), n_train=96, n_test=64)


def test_shipped_recipes_load_and_carry_their_settings():
    assert {"mlp-mnist", "mlp-fashion-mnist", "transformer-multi30k", "llama-ptb"} <= set(recipe_names())
    for name in recipe_names():
        r = load_recipe(name)
        assert r.citation and r.title and r.sparsities
        for m in r.all_methods():
            base, options = r.method_and_options(m)
            resolve_method(base, **options)
    mlp = load_recipe("mlp-mnist")
    assert mlp.sparsities == [0.99, 0.999] and mlp.task_settings()["epochs"] == 100
    assert {"dense", "static", "set", "rigl", "mest", "granet", "ctre", "cht", "chts", "chtss"} <= set(mlp.methods)
    assert mlp.method_and_options("chts")[1]["init"] == "csti"
    # the official command's denser path is a named variant, never the default
    assert "chts-ems" in mlp.variants and "chts-ems" not in mlp.methods
    base, options = mlp.method_and_options("chts-ems")
    assert base == "chts" and options["density_schedule"] == "ems" and options["init"] == "csti"
    assert load_recipe("mlp-fashion-mnist").method_and_options("chts")[1]["removal"] == "relative_importance"
    mt = load_recipe("transformer-multi30k")
    assert mt.sparsities == [0.9, 0.95] and set(mt.profiles) == {"small", "paper"}
    assert mt.task_settings("paper")["model"] == "multi30k" and mt.task_settings()["model"] == "small"
    assert mt.paper_score("chts", 0.9)["score"] == 29.97 and mt.paper_score("dense", 0.9)["score"] == 31.51
    assert mt.paper_score("chts", 0.95) is None
    lm = load_recipe("llama-ptb")
    assert lm.sparsities == [0.7, 0.3] and lm.task_settings()["model"] == "llama-tiny"
    with pytest.raises(BrainsparseError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(BrainsparseError, match="unknown method 'magic' for recipe"):
        mlp.method_and_options("magic")


def test_task_aware_defaults_apply_unless_overridden():
    assert recipe_for("classification", "fashion-mnist").name == "mlp-fashion-mnist"
    assert recipe_for("classification", "emnist-balanced").name == "mlp-mnist"  # the task's default recipe
    assert task_method_options("lm", "tinyshakespeare", "cht")[1]["init"] == "brf"
    config = with_task_defaults(TrainConfig(method="chts", dataset="mnist"))
    assert config.recipe == "mlp-mnist" and resolve_method(config.method, **config.method_overrides()).init == "csti"
    assert PRESETS["chts"].init == "bsw"  # the preset stays the method
    mine = with_task_defaults(TrainConfig(method="chts", dataset="mnist", init="bsw", beta=0.5))
    method = resolve_method(mine.method, **mine.method_overrides())
    assert method.init == "bsw" and method.init_params == {"beta": 0.5} and method.removal_rule == "soft"
    bare = with_task_defaults(TrainConfig(method="chts", dataset="mnist", recipe="none"))
    assert bare.method_options == {} and resolve_method("chts", **bare.method_overrides()).init == "bsw"
    with pytest.raises(BrainsparseError, match="is for task 'lm'"):
        with_task_defaults(TrainConfig(method="chts", recipe="llama-ptb"))


def test_cli_train_records_the_recipe_choices(small_mnist, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(small_mnist), "--method", "chts",
                 "--hidden", "16,16", "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress"])
    assert code == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["recipe"] == "mlp-mnist" and stored["method_options"]["init"] == "csti"


def _classification(data, method):
    return TrainConfig(dataset="mnist", data_dir=str(data), method=method, density=0.2, epochs=2,
                       hidden=[16, 16], batch_size=16, csti_samples=64, eval_batch_size=64)


def _translation(corpus, method):
    return TranslationConfig(model="tiny", method=method, density=0.2, steps=6, eval_every=6, batch_tokens=300,
                             warmup=2, lr=2.0, vocab_size=60, update_every=2, data_dir=str(corpus), beam=1)


def _lm(ptb, method):
    return LMConfig(dataset="ptb", data_dir=str(ptb), method=method, density=0.3, steps=6, batch_size=4, seq_len=16,
                    eval_every=6, update_every=2, warmup=1, eval_batch_size=8, dropout=0.0)


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, small_mnist):
    root = tmp_path_factory.mktemp("grid")
    return {"classification": small_mnist, "translation": write_corpus(root / "mt", n_train=60, n_eval=6),
            "lm": make_fake_ptb(root / "ptb", lines=(60, 8, 8))}


@pytest.mark.parametrize("task", ["classification", "translation", "lm"])
@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_method_trains_on_every_task(task, method, task_data, tmp_path):
    make = {"classification": _classification, "translation": _translation, "lm": _lm}[task]
    config = make(task_data[task], method)
    _, train = task_entry(task)
    summary = train(config, tmp_path / "run", progress=False)
    score = {"classification": "final_test_accuracy", "translation": "test_bleu", "lm": "test_ppl"}[task]
    assert summary[score] == summary[score]  # a number, not NaN
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["method_options"] is not None  # the task's recipe was consulted


def test_plan_runs_builds_the_recipe_configs():
    recipe = load_recipe("transformer-multi30k")
    plan = plan_runs(recipe, ["dense", "cht"], [0, 1], 0.95, budget=100, profile="paper", data_dir="/data")
    assert [(label, seed) for label, seed, _ in plan] == [("dense", 0), ("dense", 1), ("cht", 0), ("cht", 1)]
    config = plan[2][2]
    assert config.model == "multi30k" and config.steps == 100 and config.density == pytest.approx(0.05)
    assert config.update_every == 200 and config.data_dir == "/data"
    assert config.method_options["init"] == "bsw" and config.recipe == "transformer-multi30k"


def test_reproduce_writes_report_beside_the_paper(small_mnist, tmp_path):
    out = tmp_path / "rep"
    report = reproduce("mlp-mnist", methods=["dense", "set", "chts-ems"], seeds=[0, 1], epochs=1, out=out,
                       progress=False, data_dir=str(small_mnist), **_tiny_mlp())
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).exists(), name
    stored = json.loads((out / "report.json").read_text())
    assert stored == json.loads(json.dumps(report))
    row = stored["methods"]["set"]
    assert set(row) >= {"final_mean", "final_sd", "best_mean", "seeds", "active_neuron_rate", "wall_time_s", "paper"}
    assert 0 <= row["final_mean"] <= 1 and len(row["seeds"]) == 2 and row["paper"] is None
    assert stored["recipe"]["name"] == "mlp-mnist" and stored["recipe"]["sparsity"] == 0.99
    ems = json.loads((out / "chts-ems-s0" / "config.json").read_text())
    assert ems["method"] == "chts" and ems["method_options"]["density_schedule"] == "ems"
    md = (out / "report.md").read_text()
    assert "| chts-ems |" in md and "paper" in md and "±" in md
    # finished runs are reused
    again = reproduce("mlp-mnist", methods=["dense", "set", "chts-ems"], seeds=[0, 1], epochs=1, out=out,
                      progress=False, data_dir=str(small_mnist), **_tiny_mlp())
    assert all(s["status"] == "reused" for m in again["methods"].values() for s in m["seeds"])
    # --report-only trains nothing and names what is missing
    partial = reproduce("mlp-mnist", methods=["set", "rigl"], seeds=[0, 1], epochs=1, out=out, progress=False,
                        report_only=True, data_dir=str(small_mnist), **_tiny_mlp())
    assert list(partial["methods"]) == ["set"] and partial["missing"] == ["rigl-s0", "rigl-s1"]
    assert not (out / "rigl-s0").exists()
    assert "Not finished yet" in (out / "report.md").read_text()
    single = reproduce("mlp-mnist", methods=["set"], seeds=[1], epochs=1, out=out, progress=False,
                       report_only=True, data_dir=str(small_mnist), **_tiny_mlp())
    assert len(single["methods"]["set"]["seeds"]) == 1
    set_row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| set |"))
    assert "(seed 1)" in set_row and "±" not in set_row  # one seed: no spread shown


def _tiny_mlp():
    # the recipe's paper model is big; tests shrink it through the same settings hook the CLI uses
    return {"hidden": [16, 16], "batch_size": 16, "csti_samples": 64}


def test_report_markdown_sets_paper_numbers_beside_ours():
    report = {
        "recipe": {"title": "t", "name": "transformer-multi30k", "task": "translation", "sparsity": 0.9, "density": 0.1,
                   "budget": "steps", "steps": 10, "seeds": [0], "profile": "small", "citation": "c", "paper_note": ""},
        "unit": "test BLEU", "score": "test_bleu", "higher_is_better": True,
        "methods": {
            "dense": {"final_mean": 30.0, "final_sd": 0.0, "best_mean": 30.0, "active_neuron_rate": 1.0, "wall_time_s": 1,
                      "vs_dense_pct": 0.0, "paper": {"score": 31.51, "source": "Table 1"}},
            "chts": {"final_mean": 27.0, "final_sd": 0.5, "best_mean": 27.5, "active_neuron_rate": 0.9, "wall_time_s": 1,
                     "vs_dense_pct": -10.0, "paper": {"score": 29.97, "source": "Table 1"}},
        },
    }
    md = report_markdown(report)
    assert "| chts | 27.00 ± 0.50 | 27.50 | -10.00 % | 29.97 | -4.89 % |" in md
    assert "Paper numbers: Table 1." in md


def test_reproduce_cli_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["reproduce", "nope"], "unknown recipe 'nope'"),
        (["reproduce", "mlp-mnist", "--methods", "chts,magic"], "unknown method 'magic'"),
        (["reproduce", "mlp-mnist", "--steps", "5"], "--steps does not apply"),
        (["reproduce", "mlp-mnist", "--seeds", "0,0"], "name one seed twice"),
        (["reproduce", "mlp-mnist", "--sparsity", "1.0"], "leaves no links"),
        (["reproduce", "transformer-multi30k", "--profile", "huge"], "unknown profile 'huge'"),
    ]
    for argv, message in cases:
        out = tmp_path / "o"
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("brainsparse: error:") == 1, argv
        assert not out.exists()


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    for name in recipe_names():
        assert name in text
    assert "expected wall time" in text
