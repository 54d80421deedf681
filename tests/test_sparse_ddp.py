"""Data parallelism on the sparse kernel path (two CPU processes, gloo): gradients averaged by
hand after backward, rank 0's topology broadcast; masks and link values identical on every rank
and equal to one process on the same global batches (float64); the lm task under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from brainsparse.distributed.data_parallel import average_gradients, broadcast_parameters
from brainsparse.kernels import SparseLinear
from brainsparse.models.llama import LlamaLM, llama_config
from brainsparse.train import distributed as dd
from brainsparse.train.language_model import adamw, sparsify_llama
from test_distributed import BATCH, EVERY, STEPS, VOCAB, _free_port, assert_same_on_ranks, spawn_two

METHODS = ("chtss", "rigl")  # CH regrowth (link count changes with the density schedule); dense-gradient regrowth


def _train(method: str, ctx: dd.DistContext) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = LlamaLM(llama_config("llama-tiny", vocab_size=VOCAB, dim=32, hidden_dim=48, n_heads=4)).double()
    opt = adamw(model, 1e-2, 0.1)
    engine = sparsify_llama(model, opt, method=method, density=0.3, update_every=EVERY, total_steps=STEPS + 1, seed=0,
                            t_end_fraction=1.0, kernel="sparse")
    assert all(isinstance(layer.module, SparseLinear) for layer in engine.layers.values())
    broadcast_parameters(model)
    g = torch.Generator().manual_seed(1)
    snapshots = []
    for _ in range(STEPS):
        batch = dd.shard(torch.randint(0, VOCAB, (BATCH, 10), generator=g), ctx)
        opt.zero_grad()
        logits = model(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
        average_gradients(model)
        opt.step()
        if engine.is_update_step(engine.step_count + 1):
            dd.allreduce_dense_grads(engine, ctx)
        record = engine.step()
        if record is None:
            continue
        dd.broadcast_engine(engine, ctx)
        snap = {f"mask:{n}": l.mask.clone() for n, l in engine.layers.items()}
        snap.update({f"param:{n}": p.detach().clone() for n, p in model.named_parameters()})
        snap.update({f"adam:{n}": opt.state[l.param]["exp_avg"].clone() for n, l in engine.layers.items()})
        if ctx.distributed:
            assert_same_on_ranks(snap, ctx)
        snapshots.append(snap)
    assert len(snapshots) == STEPS // EVERY
    return snapshots


def test_sparse_path_two_processes_match_one_process(tmp_path):
    runs = spawn_two(_train, METHODS, tmp_path / "sparse-ddp.pt")
    for method in METHODS:
        two, one = runs[method], _train(method, dd.DistContext())
        for update, (a, b) in enumerate(zip(two, one)):
            assert set(a) == set(b)
            for key in a:
                if key.startswith("mask:"):
                    assert torch.equal(a[key], b[key]), f"{method} update {update}: {key}"
                else:  # the same global batch; only the order of float64 sums differs
                    assert torch.allclose(a[key], b[key], rtol=0, atol=1e-10), f"{method} update {update}: {key}"


@pytest.mark.slow
def test_torchrun_lm_sparse_kernel_equals_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m brainsparse train --task lm --kernel sparse`` (DDP
    semantics) reaches the one-process validation perplexity within 1e-4 relative."""
    from test_lm import make_fake_ptb

    from brainsparse.cli import main

    data = make_fake_ptb(tmp_path / "ptb")
    common = ["--task", "lm", "--dataset", "ptb", "--data-dir", str(data), "--method", "chtss", "--density", "0.3",
              "--steps", "6", "--eval-every", "6", "--update-every", "2", "--batch-size", "4", "--seq-len", "8",
              "--dropout", "0", "--threads", "1", "--no-progress", "--kernel", "sparse"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "brainsparse", "train", *common, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["processes"] == 2 and two["parallel"] == "ddp"
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert abs(two["final_valid_ppl"] / one["final_valid_ppl"] - 1) < 1e-4
    assert two["links"] == one["links"]
