"""Translation task: data, vocabulary, attention percolation, noam, decoding, training, resume, CLI."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
import torch

from brainsparse.cli import main
from brainsparse.data.translation import EOS, load_parallel, make_batch, token_batches
from brainsparse.errors import BrainsparseError, DataNotFoundError
from brainsparse.models.decoding import beam_search, greedy_decode
from brainsparse.models.transformer import Seq2SeqTransformer, transformer_config
from brainsparse.percolation import percolate
from brainsparse.train.lr import iterative_noam, noam, rewarm_factor
from brainsparse.train.translation import TranslationConfig, train_translation, translate_lines

WORDS = {"a": "ein", "dog": "hund", "cat": "katze", "runs": "rennt", "sleeps": "schläft", "big": "großer",
         "small": "kleiner", "red": "roter", "man": "mann", "sees": "sieht", "the": "der", "ball": "ball"}


def write_corpus(folder: Path, n_train: int = 400, n_eval: int = 30, seed: int = 0) -> Path:
    """A Multi30k-layout word-by-word 'translation' corpus (train / val / test_2016_flickr)."""
    rng = random.Random(seed)
    keys = sorted(WORDS)
    root = folder / "multi30k"
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("val", n_eval), ("test_2016_flickr", n_eval)):
        en = [" ".join(rng.choice(keys) for _ in range(rng.randint(2, 6))) for _ in range(n)]
        de = [" ".join(WORDS[w] for w in s.split()) for s in en]
        for lang, lines in (("en", en), ("de", de)):
            with gzip.open(root / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("mt"))


def tiny_config(corpus: Path, **kw) -> TranslationConfig:
    base = dict(model="tiny", method="chts", density=0.2, steps=12, eval_every=6, batch_tokens=300,
                warmup=4, lr=2.0, vocab_size=60, update_every=3, data_dir=str(corpus), beam=2)
    base.update(kw)
    return TranslationConfig(**base)


# ------------------------------------------------------------------------------------ data
def test_load_parallel_reads_multi30k_layout(corpus):
    splits = load_parallel("multi30k", str(corpus))
    assert set(splits) == {"train", "valid", "test"}
    src, tgt = splits["train"]
    assert len(src) == len(tgt) == 400
    assert " ".join(WORDS[w] for w in src[0].split()) == tgt[0]
    back = load_parallel("multi30k", str(corpus), source="de", target="en")
    assert back["valid"][0] == splits["valid"][1]


def test_missing_corpus_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="multi30k"):
        load_parallel("multi30k", str(tmp_path / "nothing"))
    with pytest.raises(BrainsparseError, match="allowed: multi30k"):
        load_parallel("europarl", str(tmp_path))


def test_token_batches_respect_the_budget_and_cover_everything():
    rng = random.Random(1)
    src = [[5] * rng.randint(1, 30) for _ in range(300)]
    tgt = [[6] * rng.randint(1, 30) for _ in range(300)]
    batches = token_batches(src, tgt, 200)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        batch = make_batch([src[i] for i in b], [tgt[i] for i in b])
        assert batch.src.numel() + batch.tgt_in.numel() <= 200 or len(b) == 1
        assert batch.n_tokens == sum(len(tgt[i]) + 1 for i in b)
        assert (batch.tgt_out == EOS).sum() == len(b)
    assert token_batches(src, tgt, 200, max_len=10) and all(
        len(src[i]) + 1 <= 10 and len(tgt[i]) + 1 <= 10 for b in token_batches(src, tgt, 200, max_len=10) for i in b
    )


# ------------------------------------------------------------------------------------ schedules
def test_noam_values():
    # lr = scale · d^-0.5 · min(t^-0.5, t · w^-1.5)
    assert noam(1, 512, 4000) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert noam(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)  # the peak
    assert noam(16384, 512, 4000, scale=2.0) == pytest.approx(2 * 512**-0.5 / 128)
    assert noam(3999, 512, 4000) < noam(4000, 512, 4000) > noam(4001, 512, 4000)
    with pytest.raises(BrainsparseError):
        noam(1, 512, 0)


def test_iterative_noam_rewarms_after_each_update():
    assert rewarm_factor(100, None, 20) == 1.0
    assert rewarm_factor(200, 200, 20) == 0.0
    assert rewarm_factor(210, 200, 20) == pytest.approx(0.5)
    assert rewarm_factor(230, 200, 20) == 1.0
    assert iterative_noam(210, 256, 100, 1.0, 200, 20) == pytest.approx(0.5 * noam(210, 256, 100))
    assert iterative_noam(250, 256, 100, 1.0, 200, 20) == pytest.approx(noam(250, 256, 100))


# ------------------------------------------------------------------------------------ percolation
def small_model() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(transformer_config("tiny", 20, layers=1, d_model=4, heads=2, ffn=6))


def test_attention_percolation_on_hand_built_masks():
    model = small_model()
    names = [n for c in model.sparse_chains() for n in c]
    masks = {n: torch.ones_like(dict(model.named_modules())[n].weight, dtype=torch.bool) for n in names}
    a = "encoder.0.self_attn"
    masks[f"{a}.q_proj"][1] = False  # query dim 1 has no links → key dim 1 is inactive
    masks[f"{a}.k_proj"][3] = False  # key dim 3 has no links → query dim 3 is inactive
    masks[f"{a}.v_proj"][2] = False  # value dim 2 has no inputs → column 2 of out_proj dangles
    masks[f"{a}.out_proj"][:, 0] = False  # nothing reads value dim 0 → its links dangle
    f = "encoder.0.ffn"
    masks[f"{f}.fc2"][:, 4] = False  # hidden unit 4 feeds nothing → its input links dangle
    out = percolate(masks, model.sparse_chains(), model.sparse_pairs())
    q, k, v, o = (out[f"{a}.{p}"] for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    assert not k[1].any() and not q[1].any() and not q[3].any() and not k[3].any()
    assert q[0].all() and q[2].all() and k[0].all() and k[2].all()
    assert not o[:, 2].any() and not v[0].any()
    assert v[1].all() and v[3].all() and o[:, 1].all() and o[:, 3].all()
    assert not out[f"{f}.fc1"][4].any() and out[f"{f}.fc1"][5].all()
    # the decoder's cross-attention pairs its own q/k, untouched here
    assert out["decoder.0.cross_attn.q_proj"].all() and out["decoder.0.cross_attn.k_proj"].all()
    assert ("decoder.0.cross_attn.q_proj", "decoder.0.cross_attn.k_proj") in model.sparse_pairs()


# ------------------------------------------------------------------------------------ decoding
def random_model(seed: int) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(transformer_config("tiny", 30, layers=2, d_model=16, heads=2, ffn=32)).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_decoding_equals_full_decoding(seed):
    model = random_model(seed)
    src = torch.randint(4, 30, (3, 7))
    src[0, 4:] = 0
    tgt = torch.randint(4, 30, (3, 6))
    memory, mask = model.encode(src)
    full = model.decode(tgt, memory, mask)
    caches = model.start_decoding(memory)
    steps = torch.stack([model.decode_next(tgt[:, t], caches, mask, t) for t in range(6)], 1)
    assert torch.allclose(full, steps, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_one_equals_greedy(seed):
    model = random_model(seed)
    src = torch.randint(4, 30, (6, 8))
    src[2, 5:] = 0
    assert beam_search(model, src, 1, bos=2, eos=3, max_len=15) == greedy_decode(model, src, bos=2, eos=3, max_len=15)


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    model = random_model(5)
    src = torch.randint(4, 30, (4, 6))

    def logprob(i: int, hyp: list[int]) -> float:
        tgt = torch.tensor([[2, *hyp]])
        logits = model(src[i : i + 1], tgt)
        logp = torch.log_softmax(logits.float(), -1)[0]
        target = [*hyp, 3]
        return float(sum(logp[t, target[t]] for t in range(len(target))))

    greedy = greedy_decode(model, src, 2, 3, max_len=40)
    beam = beam_search(model, src, 4, 2, 3, max_len=40, length_penalty=0.0)
    for i in range(4):
        if 3 in [*greedy[i], 3] and len(greedy[i]) < 40 and len(beam[i]) < 40:
            assert logprob(i, beam[i]) >= logprob(i, greedy[i]) - 1e-4


# ------------------------------------------------------------------------------------ training
def test_translation_run_end_to_end(corpus, tmp_path):
    out = tmp_path / "run"
    summary = train_translation(tiny_config(corpus), out, progress=False)
    for name in ("config.json", "vocab.model", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png", "test.hyp.de"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [6, 12]
    for r in rows:
        assert 0 <= r["valid_bleu"] <= 100 and r["valid_ppl"] > 1
        for name, layer in r["layers"].items():
            assert layer["links"] == layer["target"], name
    assert [r["updates"] for r in rows] == [2, 1]  # steps 3, 6 | 9 (none at T_end = 12)
    updates = [json.loads(line) for line in (out / "updates.jsonl").read_text().splitlines()]
    assert [u["step"] for u in updates] == [3, 6, 9]
    assert all(v["removed"] == v["regrown"] for u in updates for v in u["layers"].values())
    assert summary["test_bleu"] >= 0 and summary["density"] == 0.2
    assert 0 < summary["train_time_s"] <= summary["wall_time_s"]
    assert len((out / "test.hyp.de").read_text().splitlines()) == 30
    assert not any("generator" in n or "embed" in n for n in rows[0]["layers"])
    assert len(rows[0]["layers"]) == 4 + 8 + 4  # enc self-attn + dec self/cross-attn + two FFNs


def test_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    config = tiny_config(corpus, steps=12, eval_every=4)
    full = train_translation(config, tmp_path / "full", progress=False)
    part = train_translation(tiny_config(corpus, steps=12, eval_every=4), tmp_path / "part", progress=False, stop_after_evals=1)
    assert part == {"steps_completed": 4}
    resumed = train_translation(tiny_config(corpus), tmp_path / "part", resume=True, progress=False)

    def rows(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "update_time_s")}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    assert resumed["test_bleu"] == full["test_bleu"]
    assert (tmp_path / "full" / "test.hyp.de").read_text() == (tmp_path / "part" / "test.hyp.de").read_text()


def test_cli_train_translate_and_errors(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--task", "translation", "--data-dir", str(corpus), "--model", "tiny", "--method", "set",
            "--density", "0.3", "--steps", "6", "--eval-every", "3", "--batch-tokens", "300", "--warmup", "3",
            "--vocab-size", "60", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "set" and summary["steps"] == 6
    src = tmp_path / "in.txt"
    src.write_text("a big dog runs\nthe cat sleeps\n")
    dst = tmp_path / "out.txt"
    assert main(["translate", str(out), "--input", str(src), "--output", str(dst)]) == 0
    assert len(dst.read_text().splitlines()) == 2
    assert translate_lines(out, ["a big dog runs", "the cat sleeps"]) == dst.read_text().splitlines()
    capsys.readouterr()
    # errors: one line, exit 2, the finished run untouched
    before = (out / "metrics.jsonl").read_text()
    assert main([*args[:-3], "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--task", "translation", "--epochs", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--epochs does not apply to task 'translation'" in capsys.readouterr().err
    assert main(["train", "--task", "translation", "--model", "huge", "--data-dir", str(corpus), "--out", str(tmp_path / "y")]) == 2
    assert "allowed: " in capsys.readouterr().err
    assert main(["translate", str(tmp_path / "nothing"), "--input", str(src)]) == 2
    assert "not a translation run folder" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_compare_runs_translation_methods(corpus, tmp_path):
    from brainsparse.compare import compare

    result = compare(["dense", "chts"], [0], tiny_config(corpus, steps=6, eval_every=3), tmp_path / "cmp", progress=False)
    assert result["score"] == "test_bleu" and set(result["table"]) == {"dense", "chts"}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "test bleu" in md and "| chts |" in md
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_bad_translation_settings_are_named(corpus):
    for kw, text in ((dict(density=0.0), "density"), (dict(beam=0), "beam"), (dict(label_smoothing=1.0), "label_smoothing"),
                     (dict(kernel="gpu"), "kernel"), (dict(method="nope"), "nope")):
        with pytest.raises(BrainsparseError, match=text):
            tiny_config(corpus, **kw).validate()
    assert math.isfinite(noam(10, 32, 4))


def test_iwslt_layout_and_presets(tmp_path):
    root = tmp_path / "iwslt14"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.de").write_text("ein hund\nder ball\n")
        (root / f"{split}.en").write_text("a dog\nthe ball\n")
    splits = load_parallel("iwslt14", str(tmp_path))
    assert splits["test"] == (["ein hund", "der ball"], ["a dog", "the ball"])  # de → en by default
    (root / "valid.en").write_text("a dog\n")
    with pytest.raises(BrainsparseError, match="1 target lines"):
        load_parallel("iwslt14", str(tmp_path))
    cfg = transformer_config("multi30k", 100)
    assert (cfg.layers, cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout) == (6, 512, 8, 1024, 0.1)  # algorithms.md §9
    assert transformer_config("base", 100).ffn == 2048
    with pytest.raises(BrainsparseError, match="not divisible"):
        transformer_config("tiny", 100, heads=3)
