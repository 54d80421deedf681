import json

import pytest
import torch

from brainsparse.bench import bench_layers, bench_memory, bench_scoring, markdown


def test_bench_parts_produce_consistent_rows():
    layers = bench_layers(shapes=((32, 16),), batches=(4,), densities=(1.0, 0.1), repeats=2)
    assert len(layers) == 2 and all(r["sparse_s"] > 0 and r["dense_masked_s"] > 0 for r in layers)
    scoring = bench_scoring(sizes=(40,), densities=(0.1,), repeats=1)
    assert scoring[0]["exact_s"] > 0 and scoring[0]["matrix_sparse_s"] > 0 and "matrix_speedup" in scoring[0]
    memory = bench_memory(shape=(64, 64), density=0.05)
    assert all(r["ratio"] < 0.2 for r in memory)  # links + their state only
    text = markdown({"machine": {"platform": "x", "torch": "t", "threads": 1, "sparse_backend": "torch"},
                     "layers": layers, "scoring": scoring, "memory": memory})
    assert "| 32×16 |" in text and "CH3-L3" in text
    json.dumps(layers)


def test_scoring_rows_time_both_implementations_and_parts_carry_over(tmp_path):
    from brainsparse.bench import run_benchmarks
    from brainsparse.kernels import backend

    rows = bench_scoring(sizes=(40,), densities=(0.1,), repeats=1)
    if backend() == "cpp":  # the PyTorch scorers are timed beside the compiled ones
        assert rows[0]["exact_torch_s"] > 0 and rows[0]["matrix_torch_s"] > 0
        assert "(" in markdown({"machine": {"platform": "x", "torch": "t", "threads": 1, "sparse_backend": "cpp"},
                                "scoring": rows})
    first = run_benchmarks(tmp_path, parts=("memory",), quick=True)
    assert "memory" in first and "carried_over" not in first
    (tmp_path / "bench.json").write_text(json.dumps(dict(first, scoring=rows)))
    second = run_benchmarks(tmp_path, parts=("memory",), quick=True)
    assert second["scoring"] == rows and second["carried_over"]["parts"] == ["scoring"]
    assert "Parts kept from an earlier run: scoring" in (tmp_path / "bench.md").read_text()
    full = run_benchmarks(tmp_path, parts=("memory",), quick=False)  # a quick file is not merged into a full one
    assert "carried_over" not in full


def test_epoch_part_reports_the_median_of_several_sparse_runs(mnist_dir):
    from brainsparse.bench import bench_epoch

    dense, sparse = bench_epoch(data_dir=str(mnist_dir), train_subset=320, sparse_repeats=3, hidden=(64, 64))
    assert dense["kernel"] == "dense" and dense["epoch_s_all"] == [dense["epoch_s"]]
    assert sparse["kernel"] == "sparse" and len(sparse["epoch_s_all"]) == 3
    assert sparse["epoch_s"] == sorted(sparse["epoch_s_all"])[1]  # the median run's row
    assert sparse["speedup_vs_dense_masked"] == pytest.approx(dense["epoch_s"] / sparse["epoch_s"])
    text = markdown({"machine": {"platform": "x", "torch": "t", "threads": 1, "sparse_backend": "cpp"},
                     "epoch": [dense, sparse]})
    assert "median of 3 fresh runs" in text and "faster than dense-masked" in text


def test_decay_part_times_decayed_methods_on_the_sparse_path(mnist_dir):
    from brainsparse.bench import bench_decay

    rows = bench_decay(data_dir=str(mnist_dir), density=0.05, methods=("chts", "chtss", "granet"), repeats=2,
                       hidden=(64, 64), train_subset=640, chunk=7)
    by = {(r["method"], r["kernel"]): r for r in rows}
    assert set(by) == {("chts", "auto"), ("chtss", "auto"), ("granet", "auto"), ("chtss", "dense")}
    for (_method, kernel), r in by.items():
        assert r["epoch_s"] > 0 and len(r["epoch_s_all"]) == (1 if kernel == "dense" else 2)
        assert r["density"] == pytest.approx(0.05, abs=0.002)  # the schedules have finished
        assert r["layers"] == 2 and r["sparse_layers"] == (0 if kernel == "dense" else 2)
        assert r["vs_chts"] == pytest.approx(r["epoch_s"] / by[("chts", "auto")]["epoch_s"])
    # the decaying methods update at a tenth of their decay window, CHTs once per epoch
    assert by[("chts", "auto")]["updates"] == 1 and by[("chtss", "auto")]["updates"] > 1
    text = markdown({"machine": {"platform": "x", "torch": "t", "threads": 1, "sparse_backend": "cpp"}, "decay": rows})
    assert "once the density schedule has finished" in text and "| chtss | dense |" in text
    json.dumps(rows)


def test_peak_part_runs_each_run_in_its_own_process(mnist_dir):
    from brainsparse.bench import markdown
    from brainsparse.bench_peak import _child, bench_peak_memory

    ballast = torch.ones(400_000_000)  # 1.6 GB resident here: the child process must not report it
    rows = bench_peak_memory(data_dir=str(mnist_dir), runs=("set",), steps=4, density=0.1, hidden=(64, 64))
    del ballast
    assert [r["run"] for r in rows] == ["set"] and rows[0]["updates"] >= 1
    assert rows[0]["peak_rss_mib"] > 50  # PyTorch alone takes more
    phases = rows[0]["phases"]
    assert list(phases) == ["start", "data", "model", "sparsify", "training", "evaluation"]
    if phases["evaluation"]["peak_so_far_mib"] is not None:  # Linux: /proc/self/status
        assert phases["data"]["peak_so_far_mib"] <= phases["evaluation"]["peak_so_far_mib"]
        # the child's own peak (ru_maxrss would carry this process's 1.6 GB over fork and exec)
        assert abs(rows[0]["peak_rss_mib"] - phases["evaluation"]["peak_so_far_mib"]) < 16
    # a plain run, here in this process (the same code the child process runs)
    plain = _child("plain-dense", "mnist", str(mnist_dir), 4, 0.1, hidden=(64, 64))
    assert plain["density"] == 1.0 and plain["updates"] == 0 and "sparsify" not in plain["phases"]
    text = markdown({"machine": {"platform": "x", "torch": "t", "threads": 1, "sparse_backend": "cpp"},
                     "peak": [plain, *rows]})
    assert "| plain-dense | 1 |" in text and "| set | 0.1 |" in text


def test_peers_part_times_ours_beside_installed_peers():
    from brainsparse.bench_peers import bench_peers, installed_peers, markdown_rows

    rows = bench_peers(shapes=((48, 40),), densities=(0.1,), batches=(8,), repeats=2)
    assert len(rows) == 1 and rows[0]["brainsparse_s"] > 0
    for peer in installed_peers():
        assert rows[0][f"{peer}_s"] > 0
    if installed_peers():
        assert rows[0]["speedup_vs_best_peer"] > 0
    assert "| 48×40 | 0.1 | 8 |" in "\n".join(markdown_rows(rows))


def test_bench_peers_without_peers_names_the_extra(monkeypatch, tmp_path, capsys):
    import brainsparse.bench_peers as bp
    from brainsparse.cli import main

    monkeypatch.setattr(bp, "installed_peers", lambda: [])
    assert main(["bench", "--peers", "--parts", "memory", "--out", str(tmp_path / "b")]) == 2
    assert "brainsparse[peers]" in capsys.readouterr().err


def test_models_part_times_both_paths_of_the_presets():
    from brainsparse.bench_models import bench_models, markdown_rows

    rows = bench_models(cells=(("llama-tiny", 0.1),), repeats=1, updates=1)
    r = rows[0]
    assert r["dense_step_s"] > 0 and r["sparse_step_s"] > 0 and r["step_speedup"] > 0
    assert r["dense_sparse_layers"] == 0 and r["sparse_sparse_layers"] == r["layers"] == 14
    assert r["rows_per_step"] == 1024 and 0 <= r["auto_sparse_layers"] <= 14
    assert set(r["auto_by_shape"]) == {"128x128", "384x128", "128x384"}
    assert r["dense_peak_mib"] > r["dense_growth_mib"] > 0 and r["sparse_peak_mib"] > 0
    assert "| llama-tiny | 0.1 |" in "\n".join(markdown_rows(rows))


def test_peak_part_takes_medians_over_repeats_and_compares_with_the_better_plain_run(monkeypatch):
    import subprocess

    from brainsparse import bench_peak

    peaks = {"plain-dense": [600, 650, 640], "plain-dense-uint8": [500, 480, 490], "set": [400, 420, 410]}
    calls = []

    def fake_run(cmd, **kwargs):
        run = cmd[3]
        calls.append(run)
        peak = peaks[run][sum(c == run for c in calls) - 1]
        row = {"run": run, "steps": 4, "density": 1.0 if run.startswith("plain") else 0.01, "updates": 0,
               "seconds": 1.0, "test_accuracy": 0.5, "peak_rss_mib": peak,
               "phases": {"data": {"rss_mib": 100.0, "peak_so_far_mib": 110.0}}}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(row) + "\n", stderr="")

    monkeypatch.setattr(bench_peak.subprocess, "run", fake_run)
    rows = bench_peak.bench_peak_memory(runs=tuple(peaks), steps=4, repeats=3)
    assert calls == list(peaks) * 3  # rounds over all runs, interleaved
    by = {r["run"]: r for r in rows}
    assert [by[r]["peak_rss_mib"] for r in peaks] == [640, 490, 410]
    assert by["set"]["peak_rss_mib_all"] == [400, 420, 410]
    assert by["set"]["vs_best_plain"] == pytest.approx(410 / 490)
    assert by["set"]["vs_plain_dense"] == pytest.approx(410 / 640)
    text = "\n".join(bench_peak.markdown_rows(rows))
    assert "median of 3 runs" in text and "| set | 0.01 | 410 MiB | 0.64× | 0.84× |" in text
    assert "| set | 110 | – | – | – | – |" in text  # the phases table
