"""FSDP2 (two CPU processes, gloo): every rank holds row shards of the weights, masks and optimizer
state; after every topology update the masks are bit-identical across ranks and equal to one
process trained on the same global batches (float64), weights equal up to summation order."""

from __future__ import annotations

import os

import pytest
import torch
from test_distributed import BATCH, EVERY, STEPS, VOCAB, _free_port, _train, assert_same_on_ranks, spawn_two
from torch.nn import functional as F

from brainsparse.distributed.fsdp import (
    ShardedSparseEngine,
    row_range,
    shard_model,
    sparsify_sharded,
)
from brainsparse.errors import BrainsparseError
from brainsparse.models.llama import LlamaLM, llama_config
from brainsparse.train import distributed as dd
from brainsparse.train.language_model import adamw, sparsify_llama

METHODS = ("chtss", "rigl", "mest")  # CH regrowth + relative-importance pruning; gradient regrowth; |W|+λ|∇W| removal


def _model() -> LlamaLM:
    torch.manual_seed(0)
    # hidden_dim 45: rows not divisible by 2 (uneven FSDP shards)
    return LlamaLM(llama_config("llama-tiny", vocab_size=VOCAB, dim=32, hidden_dim=48, n_heads=4)).double()


def _train_fsdp(method: str, ctx: dd.DistContext) -> list[dict[str, torch.Tensor]]:
    model = shard_model(_model())
    opt = adamw(model, 1e-2, 0.1)
    engine = sparsify_sharded(model, opt, sparsify_fn=sparsify_llama, method=method, density=0.3,
                              update_every=EVERY, total_steps=STEPS + 1, seed=0, t_end_fraction=1.0)
    assert isinstance(engine, ShardedSparseEngine)
    for layer in engine.layers.values():  # only this rank's rows are kept
        start, stop = row_range(layer.module.out_features, ctx.rank, ctx.world_size)
        assert layer.mask.shape[0] == stop - start < layer.module.out_features
    g = torch.Generator().manual_seed(1)
    snapshots = []
    for _ in range(STEPS):
        batch = dd.shard(torch.randint(0, VOCAB, (BATCH, 10), generator=g), ctx)
        opt.zero_grad()
        logits = model(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
        engine.mask_gradients()
        opt.step()
        if engine.step() is None:
            continue
        snap = {f"mask:{n}": m for n, m in engine.full_masks().items()}
        snap.update({f"param:{n}": p.detach().full_tensor() for n, p in model.named_parameters()})
        snap.update({f"adam:{n}": opt.state[l.weight]["exp_avg"].full_tensor() for n, l in engine.layers.items()})
        assert_same_on_ranks(snap, ctx)  # masks bit for bit
        snapshots.append(snap)
    assert len(snapshots) == STEPS // EVERY
    return snapshots


def test_fsdp_matches_one_process(tmp_path):
    runs = spawn_two(_train_fsdp, METHODS, tmp_path / "fsdp.pt")
    for method in METHODS:
        sharded, single = runs[method], _train(method, dd.DistContext(), check_ranks=False)
        assert len(sharded) == len(single) == STEPS // EVERY
        for update, (a, b) in enumerate(zip(sharded, single)):
            assert set(a) == set(b)
            for key in a:
                if key.startswith("mask:"):
                    assert torch.equal(a[key], b[key]), f"{method} update {update}: {key}"
                else:
                    assert torch.allclose(a[key], b[key], rtol=0, atol=1e-10), f"{method} update {update}: {key}"


def test_sparsify_sharded_refuses_unsharded_model():
    with pytest.raises(BrainsparseError, match="fully_shard"):
        sparsify_sharded(_model(), None, method="set", density=0.3, update_every=2, total_steps=4)


# ---------------------------------------------------------------------------------- the lm task
PARTIAL = """
import json, sys
from brainsparse.train.common import with_task_defaults
from brainsparse.train.language_model import LMConfig, train_language_model
config = with_task_defaults(LMConfig(**json.loads(sys.argv[1])))
train_language_model(config, sys.argv[2], progress=False, stop_after_evals=1)
"""


def _lm_setup(tmp_path):
    from test_lm import make_fake_ptb

    data = make_fake_ptb(tmp_path / "ptb")
    common = ["--task", "lm", "--dataset", "ptb", "--data-dir", str(data), "--method", "chtss", "--density", "0.3",
              "--steps", "6", "--eval-every", "3", "--update-every", "2", "--batch-size", "4", "--seq-len", "8",
              "--dropout", "0", "--threads", "1", "--no-progress", "--kernel", "dense"]
    # one-process runs on the masked path, as FSDP runs are (auto may take tiny layers sparse)
    config = {"dataset": "ptb", "data_dir": str(data), "method": "chtss", "density": 0.3, "steps": 6, "eval_every": 3,
              "update_every": 2, "batch_size": 4, "seq_len": 8, "dropout": 0.0, "kernel": "dense"}
    return common, config


def _torchrun(args: list[str], script: bool = False) -> None:
    import subprocess
    import sys

    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd = head + (args if script else ["-m", "brainsparse", "train", *args])
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _summary(folder) -> dict:
    import json

    return json.loads((folder / "summary.json").read_text())


def _close(a: dict, b: dict) -> None:
    assert abs(a["final_valid_ppl"] / b["final_valid_ppl"] - 1) < 1e-4, (a["final_valid_ppl"], b["final_valid_ppl"])
    assert a["links"] == b["links"]


@pytest.mark.slow
def test_torchrun_fsdp_lm_equals_one_process_and_resumes_on_one_process(tmp_path):
    """CHTss on llama-tiny (dropout 0): 2-process FSDP equals one process (validation perplexity
    within 1e-4 relative); an FSDP run stopped after its first checkpoint (sharded) finishes on
    one process with the same perplexity."""
    import json

    from brainsparse.cli import main

    common, config = _lm_setup(tmp_path)
    _torchrun([*common, "--parallel", "fsdp", "--out", str(tmp_path / "fsdp")])
    fsdp = _summary(tmp_path / "fsdp")
    assert fsdp["processes"] == 2 and fsdp["parallel"] == "fsdp"
    assert any(p.suffix == ".dcp" for p in (tmp_path / "fsdp").iterdir())
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    one = _summary(tmp_path / "one")
    _close(fsdp, one)
    # the sharded checkpoint's masks are one process's, bit for bit; analyze reads them
    from brainsparse.distributed.checkpoint import load_sharded_masks

    sharded = load_sharded_masks(next((tmp_path / "fsdp").glob("*.dcp")))
    from brainsparse.engine.state import checkpoint_masks

    saved = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    plain = checkpoint_masks(saved["model"], saved["engine"])  # the one-process masks: the model's weight_mask buffers
    assert plain
    assert set(sharded) == set(plain) and all(torch.equal(sharded[n], plain[n]) for n in plain)
    assert main(["analyze", str(tmp_path / "fsdp")]) == 0
    # 2 → 1: stopped after the checkpoint of step 3, resumed in one process
    script = tmp_path / "partial.py"
    script.write_text(PARTIAL)
    _torchrun([str(script), json.dumps({**config, "parallel": "fsdp"}), str(tmp_path / "cut")], script=True)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--no-progress", "--threads", "1"]) == 0
    _close(_summary(tmp_path / "cut"), one)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_fsdp(tmp_path):
    """1 → 2: a one-process run stopped after its first checkpoint finishes under torchrun with
    --parallel fsdp, equal to the uninterrupted one-process run."""
    from brainsparse.cli import main
    from brainsparse.train.common import with_task_defaults
    from brainsparse.train.language_model import LMConfig, train_language_model

    common, config = _lm_setup(tmp_path)
    train_language_model(with_task_defaults(LMConfig(**config)), tmp_path / "cut", progress=False, stop_after_evals=1)
    _torchrun(["--resume", "--out", str(tmp_path / "cut"), "--parallel", "fsdp", "--no-progress", "--threads", "1"])
    resumed = _summary(tmp_path / "cut")
    assert resumed["parallel"] == "fsdp"
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    _close(resumed, _summary(tmp_path / "one"))


def test_fsdp_without_torchrun_or_with_unsupported_options_is_refused(tmp_path, monkeypatch, capsys):
    from brainsparse.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    common, _ = _lm_setup(tmp_path)
    cases = [
        ([*common, "--parallel", "fsdp"], "needs several processes: run under torchrun"),
        ([*common, "--parallel", "fsdp", "--kernel", "sparse"], "--kernel sparse is not supported with --parallel fsdp"),
        ([*[c if c != "chtss" else "ctre" for c in common], "--parallel", "fsdp"], "does not support method 'ctre'"),
        (["--task", "classification", "--parallel", "fsdp"], "--parallel does not apply to task 'classification'"),
    ]
    for i, (args, message) in enumerate(cases):
        assert main(["train", *args, "--out", str(tmp_path / f"run{i}")]) != 0
        assert message in capsys.readouterr().err
        assert not (tmp_path / f"run{i}").exists()


def test_row_forms_of_builtin_scores_equal_their_scores():
    """Scores with a row form (what FSDP computes on each rank's rows) give exactly their plain
    scores when the rows are scored in uneven blocks, gathered and finished."""
    from brainsparse.registry import REGROWTH_SCORES, REMOVAL_SCORES, ScoreInput

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 5, generator=g, dtype=torch.float64)
    grad = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(7, 5, generator=g) < 0.5
    scores = [s for s in [*REMOVAL_SCORES.values(), *REGROWTH_SCORES.values()] if s is not None and s.rows]
    assert len(scores) >= 4  # magnitude, relative importance, MEST, gradient
    for score in scores:
        full = ScoreInput("l", mask, lambda: weight, grad=grad)
        parts = [score.rows.part(ScoreInput("l", mask[a:b], lambda a=a, b=b: weight[a:b], grad=grad[a:b]))
                 for a, b in (row_range(7, r, 2) for r in range(2))]
        joined = torch.cat(parts)
        if score.rows.finish is not None:
            joined = score.rows.finish(joined, full)
        assert torch.equal(joined, score.fn(full))
