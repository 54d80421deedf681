import json

import pytest

from brainsparse.cli import main
from brainsparse.compare import compare
from brainsparse.errors import BrainsparseError
from brainsparse.train import TrainConfig


def _base(mnist_dir):
    return TrainConfig(dataset="mnist", data_dir=str(mnist_dir), density=0.1, epochs=1, hidden=[48, 48],
                       train_subset=800)


def test_compare_writes_table_and_figure_and_reuses_runs(tmp_path, mnist_dir):
    out = tmp_path / "cmp"
    result = compare(["dense", "set", "chts"], [0, 1], _base(mnist_dir), out, progress=False)
    assert set(result["table"]) == {"dense", "set", "chts"}
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (out / name).exists()
    md = (out / "compare.md").read_text()
    assert "| chts |" in md and "±" in md
    row = result["table"]["set"]
    assert 0 <= row["final_score"]["mean"] <= 1 and row["final_score"]["std"] >= 0
    assert "score_vs_dense_pct" in row
    assert all(r["status"] == "trained" for runs in result["runs"].values() for r in runs)
    stamp = (out / "set-s0" / "metrics.jsonl").stat().st_mtime_ns

    again = compare(["dense", "set", "chts"], [0, 1], _base(mnist_dir), out, progress=False)
    assert all(r["status"] == "reused" for runs in again["runs"].values() for r in runs)
    assert (out / "set-s0" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert again["table"] == json.loads((out / "compare.json").read_text())["table"]


def test_compare_refuses_folder_with_other_settings(tmp_path, mnist_dir):
    out = tmp_path / "cmp"
    compare(["set"], [0], _base(mnist_dir), out, progress=False)
    other = _base(mnist_dir)
    other.density = 0.2
    with pytest.raises(BrainsparseError, match="other settings"):
        compare(["set"], [0], other, out, progress=False)


def test_compare_cli_rejects_unknown_method_before_running(tmp_path, mnist_dir, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--methods", "set,magic",
                 "--seeds", "0", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert not out.exists()
