"""Language-model data (PTB, Tiny Shakespeare), the lm task's run folder, resume, CLI and compare."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from brainsparse.cli import main
from brainsparse.compare import compare
from brainsparse.data.text import eval_windows, lm_batch, load_corpus, pack_windows
from brainsparse.errors import BrainsparseError, DataNotFoundError
from brainsparse.train import config_for, task_entry
from brainsparse.train.language_model import LMConfig, train_language_model

WORDS = "the cat dog sat on a mat and ran to house N <unk> big small red".split()


def make_fake_ptb(folder: Path, lines: tuple[int, int, int] = (300, 30, 30), seed: int = 0) -> Path:
    """PTB-format files (a leading space, words, " \\n") from a small random grammar."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        rows = []
        for _ in range(n):
            length = int(torch.randint(3, 9, (1,), generator=g))
            idx = torch.randint(0, len(WORDS), (length,), generator=g)
            rows.append(" " + " ".join(WORDS[int(i)] for i in idx) + " \n")
        (folder / f"ptb.{split}.txt").write_text("".join(rows))
    return folder


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory) -> Path:
    return make_fake_ptb(tmp_path_factory.mktemp("fake-ptb"))


@pytest.fixture(scope="module")
def real_text_root() -> Path | None:
    root = os.environ.get("BRAINSPARSE_TEST_DATA")
    return Path(root) if root and (Path(root) / "ptb").is_dir() else None


def small_config(ptb_dir: Path, **kw) -> LMConfig:
    values = dict(dataset="ptb", data_dir=str(ptb_dir), method="chtss", density=0.3, steps=12, batch_size=4,
                  seq_len=16, eval_every=4, update_every=4, warmup=2, lr=3e-3, eval_batch_size=8, dropout=0.1)
    values.update(kw)
    return LMConfig(**values)


def test_fake_ptb_corpus(ptb_dir):
    corpus = load_corpus("ptb", ptb_dir)
    assert corpus.level == "word" and "<eos>" in corpus.vocab
    assert corpus.splits["train"].dtype == torch.long
    text = (ptb_dir / "ptb.valid.txt").read_text()
    assert corpus.words["valid"] == len(text.split()) + text.count("\n") == corpus.splits["valid"].numel()
    assert corpus.decode(corpus.splits["valid"][:3]) == " ".join(text.split()[:3])


def test_real_ptb_and_shakespeare(real_text_root):
    if real_text_root is None:
        pytest.skip("BRAINSPARSE_TEST_DATA does not hold ptb/")
    ptb = load_corpus("ptb", real_text_root)
    assert ptb.vocab_size == 10000
    assert {k: v.numel() for k, v in ptb.splits.items()} == {"train": 929589, "valid": 73760, "test": 82430}
    if (real_text_root / "tinyshakespeare").is_dir():
        shakespeare = load_corpus("tiny-shakespeare", real_text_root)
        assert shakespeare.vocab_size == 65 and shakespeare.level == "char"
        assert sum(v.numel() for v in shakespeare.splits.values()) == 1115394
        assert shakespeare.splits["train"].numel() == int(0.9 * 1115394)


def test_missing_corpus_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINSPARSE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("brainsparse.data.locate.SYSTEM_ROOTS", [])
    with pytest.raises(DataNotFoundError, match="ptb.train.txt.*To get it: the three files"):
        load_corpus("ptb", tmp_path)
    with pytest.raises(BrainsparseError, match="unknown lm dataset 'wiki'; allowed: ptb, tinyshakespeare"):
        load_corpus("wiki", tmp_path)


def test_packing_and_batches():
    tokens = torch.arange(101)
    windows = pack_windows(tokens, 10)
    assert windows.shape == (10, 11) and torch.equal(windows[1], torch.arange(10, 21))
    first_epoch = torch.cat([lm_batch(windows, s, 5, seed=3) for s in range(2)])
    assert sorted(first_epoch[:, 0].tolist()) == list(range(0, 100, 10))  # each window once per epoch
    assert torch.equal(lm_batch(windows, 7, 5, seed=3), lm_batch(windows, 7, 5, seed=3))
    assert not torch.equal(lm_batch(windows, 0, 5, seed=3), lm_batch(windows, 0, 5, seed=4))
    parts = eval_windows(torch.arange(25), 10)
    assert [p.numel() for p in parts] == [11, 11, 5]  # every token but the first predicted once
    with pytest.raises(BrainsparseError, match="batch size 11 exceeds the 10 training windows"):
        lm_batch(windows, 0, 11, seed=0)


def _strip_times(rows):
    drop = ("time_s", "update_time_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_run_folder_and_resume(ptb_dir, tmp_path):
    config = small_config(ptb_dir)
    full = train_language_model(config, tmp_path / "full", progress=False)
    for name in ("config.json", "metrics.jsonl", "updates.jsonl", "checkpoint.pt", "summary.json", "curves.png"):
        assert (tmp_path / "full" / name).exists(), name
    assert full["steps_completed"] == 12 and full["unit"] == "word"
    assert 1.0 < full["test_ppl"] < 100 and full["best_valid_ppl"] <= full["final_valid_ppl"]
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12] and all("valid_ppl" in r and "layers" in r for r in rows)
    assert rows[0]["updates"] == 1 and rows[-1]["density"] < rows[0]["density"]  # CHTss decays 0.5 → 0.3

    part = train_language_model(dataclasses.replace(config), tmp_path / "part", progress=False, stop_after_evals=1)
    assert part["steps_completed"] == 4 and not (tmp_path / "part" / "summary.json").exists()
    resumed = train_language_model(config, tmp_path / "part", resume=True, progress=False)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert _strip_times(a) == _strip_times(b)
    assert resumed["test_ppl"] == full["test_ppl"]
    with pytest.raises(BrainsparseError, match="already holds a run"):
        train_language_model(config, tmp_path / "full", progress=False)


def test_registry_and_config_roundtrip(ptb_dir):
    cls, train = task_entry("lm")
    assert cls is LMConfig and train is train_language_model
    config = small_config(ptb_dir)
    assert config_for(dataclasses.asdict(config)) == config
    assert (cls.SCORE, cls.CURVE, cls.HIGHER_IS_BETTER) == ("test_ppl", "valid_ppl", False)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "gpt2"}, "unknown model 'gpt2' for task lm"),
        ({"density": 1.5}, "density"),
        ({"dataset": "c4"}, "unknown lm dataset 'c4'"),
        ({"init": "csti"}, "init 'csti' needs input features"),
        ({"kernel": "gpu"}, "unknown kernel 'gpu'"),
        ({"lr": -1.0}, "lr -1.0 is invalid"),
        ({"device": "tpu"}, "device 'tpu' is invalid"),
        ({"method": "magic"}, "magic"),
    ],
)
def test_bad_config(ptb_dir, changes, message):
    with pytest.raises(BrainsparseError, match=message):
        small_config(ptb_dir, **changes).validate()


def test_cli(ptb_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--task", "lm", "--dataset", "ptb", "--data-dir", str(ptb_dir), "--model", "llama-tiny",
            "--method", "set", "--density", "0.3", "--steps", "4", "--eval-every", "2", "--batch-size", "4",
            "--seq-len", "8", "--update-every", "2", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "set" and summary["steps_completed"] == 4
    assert 0 < summary["train_time_s"] <= summary["wall_time_s"]
    assert main(["train", "--task", "lm", "--epochs", "3", "--out", str(tmp_path / "x")]) == 2
    assert "option --epochs does not apply to task 'lm'" in capsys.readouterr().err
    assert main(["train", "--task", "lm", "--model", "llama-7b", "--out", str(tmp_path / "y")]) == 2
    assert "unknown model 'llama-7b'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_compare_lm(ptb_dir, tmp_path):
    base = small_config(ptb_dir, steps=4, eval_every=2, update_every=2)
    result = compare(["dense", "set"], [0], base, tmp_path / "cmp", progress=False)
    assert result["score"] == "test_ppl" and result["higher_is_better"] is False
    assert set(result["table"]) == {"dense", "set"}
    assert (tmp_path / "cmp" / "compare.md").exists()


def test_hf_model_trains_in_the_task(ptb_dir, tmp_path):
    pytest.importorskip("transformers")
    summary = train_language_model(small_config(ptb_dir, model="hf-llama-tiny", steps=4, eval_every=4, update_every=2),
                                   tmp_path / "hf", progress=False)
    assert summary["steps_completed"] == 4 and len(summary["links"]) == 14


def test_character_corpus_trains(tmp_path):
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    letters = "abcdefgh \n"
    (folder / "input.txt").write_text("".join(letters[int(i)] for i in torch.randint(0, 10, (4000,), generator=g)))
    corpus = load_corpus("shakespeare", tmp_path)
    assert corpus.level == "char" and corpus.vocab_size == 10
    assert [corpus.splits[s].numel() for s in ("train", "valid", "test")] == [3600, 200, 200]
    config = LMConfig(dataset="tinyshakespeare", data_dir=str(tmp_path), method="set", steps=2, eval_every=2,
                      update_every=1, batch_size=4, seq_len=16)
    summary = train_language_model(config, tmp_path / "run", progress=False)
    assert summary["unit"] == "char" and summary["test_bpc"] > 0 and "test_word_ppl" in summary
