"""End-to-end: training runs, run folders, resume, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainsparse.cli import main
from brainsparse.train import TrainConfig, train_classifier

SMALL = {"hidden": [64, 64], "train_subset": 1500, "batch_size": 32}


def _config(mnist_dir, **kw) -> TrainConfig:
    args = {"dataset": "mnist", "method": "chts", "density": 0.1, "epochs": 2, "seed": 0, "data_dir": str(mnist_dir)}
    args.update(SMALL)
    args.update(kw)
    return TrainConfig(**args)


def _metrics(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("epoch_time_s")
        row.pop("train_time_s")
        row.pop("update_time_s")
    return rows


@pytest.mark.parametrize(
    "method", ["chts", "cht", "set", "rigl", "static", "dense", "chtss", "granet", "mest", "ctre", "neuroprune"]
)
def test_every_method_learns_and_keeps_exact_counts(tmp_path, mnist_dir, method):
    summary = train_classifier(_config(mnist_dir, method=method), tmp_path / method, progress=False)
    assert summary["epochs_completed"] == 2
    assert 0 < summary["train_time_s"] < summary["wall_time_s"]  # optimizer steps and updates, no evaluation
    assert summary["final_test_accuracy"] > 0.5  # chance is 0.1
    for row in _metrics(tmp_path / method):
        for name, layer in row["layers"].items():
            assert layer["links"] == layer["target"], (method, row["epoch"], name)
    files = {p.name for p in (tmp_path / method).iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt"} <= files


def test_dynamic_methods_update_topology(tmp_path, mnist_dir):
    train_classifier(_config(mnist_dir, epochs=3), tmp_path / "run", progress=False)
    rows = _metrics(tmp_path / "run")
    assert [r["updates"] for r in rows] == [1, 1, 0]  # end of epochs 1 and 2; none at the end
    assert all(0 <= v <= 1 for v in rows[0]["overlap"].values())
    assert rows[-1]["itop"] > rows[0]["density"]  # links moved: more positions were ever used


@pytest.mark.parametrize("init", ["bsw", "bsf", "brf", "csti", "erk", "uniform"])
def test_initialisers_train(tmp_path, mnist_dir, init):
    cfg = _config(mnist_dir, init=init, epochs=1, density=0.2, method="set")
    summary = train_classifier(cfg, tmp_path / init, progress=False)
    assert summary["final_test_accuracy"] > 0.3


def test_resume_reproduces_uninterrupted_run(tmp_path, mnist_dir):
    cfg = _config(mnist_dir, epochs=3)
    full = train_classifier(cfg, tmp_path / "full", progress=False)
    partial = train_classifier(cfg, tmp_path / "split", progress=False, stop_after_epochs=1)
    assert partial["epochs_completed"] == 1
    assert not (tmp_path / "split" / "summary.json").exists()
    resumed = train_classifier(TrainConfig(), tmp_path / "split", resume=True, progress=False)
    assert _metrics(tmp_path / "full") == _metrics(tmp_path / "split")
    for key in ("final_test_accuracy", "best_test_accuracy", "final_train_loss", "active_neuron_rate", "links"):
        assert full[key] == resumed[key]


def test_killed_cli_run_resumes_to_same_result(tmp_path, mnist_dir):
    args = [
        "train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--method", "chts", "--density", "0.1",
        "--epochs", "4", "--hidden", "64,64", "--train-subset", "1500", "--no-progress", "--threads", "1",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "brainsparse", *args, "--out", str(full)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "brainsparse", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint.pt").exists()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "brainsparse", "train", "--resume", "--out", str(killed), "--no-progress",
                    "--threads", "1"], check=True, env=env, capture_output=True)
    assert _metrics(full) == _metrics(killed)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["final_test_accuracy"] == b["final_test_accuracy"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--density", "1.5"], "density 1.5 is outside (0, 1]"),
        (["--density", "0"], "density 0.0 is outside (0, 1]"),
        (["--method", "magic"], "unknown method 'magic'; allowed: dense, static, set, rigl, cht, chts"),
        (["--init", "lattice"], "unknown init 'lattice'; allowed:"),
        (["--beta", "1.5"], "beta 1.5 is outside [0, 1]"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    ],
)
def test_invalid_input_one_line_and_run_folder_untouched(tmp_path, mnist_dir, capsys, flags, message):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    code = main(["train", "--data-dir", str(mnist_dir), "--dataset", "mnist", "--out", str(out), "--overwrite",
                 "--no-progress", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("brainsparse: error:")
    assert message in err[0]
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_truncated_data_file_is_a_clear_error(tmp_path, mnist_dir, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in mnist_dir.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.name.startswith("train-images") else data)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(broken), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train-images" in err[0]
    assert not out.exists()


def test_existing_run_is_not_overwritten_without_flag(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    train_classifier(_config(mnist_dir, epochs=1), out, progress=False)
    before = (out / "metrics.jsonl").read_text()
    code = main(["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(out), "--no-progress"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_real_mnist_accuracy(tmp_path, real_mnist_dir):
    if real_mnist_dir is None:
        pytest.skip("set BRAINSPARSE_TEST_DATA to a folder with mnist/ to test on real MNIST")
    cfg = _config(real_mnist_dir, hidden=[256, 256], train_subset=10000, density=0.05, epochs=2)
    summary = train_classifier(cfg, tmp_path / "real", progress=False)
    assert summary["final_test_accuracy"] > 0.85


@pytest.mark.parametrize("method", ["chts", "chtss"])
def test_sparse_kernel_run_resumes_exactly(tmp_path, mnist_dir, method):
    cfg = _config(mnist_dir, epochs=3, kernel="sparse", method=method)
    full = train_classifier(cfg, tmp_path / "full", progress=False)
    train_classifier(cfg, tmp_path / "split", progress=False, stop_after_epochs=1)
    resumed = train_classifier(TrainConfig(), tmp_path / "split", resume=True, progress=False)
    assert _metrics(tmp_path / "full") == _metrics(tmp_path / "split")
    assert full["final_test_accuracy"] == resumed["final_test_accuracy"] > 0.5
