"""Two CPU processes (gloo): masks and weights identical on every rank after every topology update,
and equal to one process trained on the same global batches; the lm task under torchrun."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from brainsparse.models.llama import LlamaLM, llama_config
from brainsparse.train import distributed as dd
from brainsparse.train.language_model import adamw, sparsify_llama

VOCAB, STEPS, EVERY, BATCH = 40, 8, 2, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_on_ranks(snap: dict[str, torch.Tensor], ctx: dd.DistContext) -> None:
    """Every tensor of ``snap`` is the same on every rank (bit for bit)."""
    for key, value in snap.items():
        gathered = [torch.empty_like(value) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, value.contiguous())
        assert all(torch.equal(gathered[0], v) for v in gathered[1:]), f"rank mismatch in {key}"


def _run_worker(rank: int, world: int, port: int, out: str, train: Callable, methods: Sequence[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = dd.init_distributed()
    try:
        snapshots = {m: train(m, ctx) for m in methods}
        if rank == 0:
            torch.save(snapshots, out)
    finally:
        dd.shutdown(ctx)


def spawn_two(train: Callable, methods: Sequence[str], out: Path) -> dict:
    """``{method: train(method, ctx)}`` of rank 0 of two gloo processes (``train`` picklable)."""
    mp.spawn(_run_worker, args=(2, _free_port(), str(out), train, tuple(methods)), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _train(method: str, ctx: dd.DistContext, check_ranks: bool) -> list[dict[str, torch.Tensor]]:
    """A few steps of a float64 LLaMA on fixed global batches; returns masks and weights after
    every topology update (and asserts across ranks when ``check_ranks``)."""
    torch.manual_seed(0)
    model = LlamaLM(llama_config("llama-tiny", vocab_size=VOCAB, dim=32, hidden_dim=48, n_heads=4)).double()
    opt = adamw(model, 1e-2, 0.1)
    engine = sparsify_llama(model, opt, method=method, density=0.3, update_every=EVERY, total_steps=STEPS + 1, seed=0,
                            t_end_fraction=1.0)
    net = nn.parallel.DistributedDataParallel(model) if ctx.distributed else model
    g = torch.Generator().manual_seed(1)
    snapshots = []
    for _ in range(STEPS):
        batch = dd.shard(torch.randint(0, VOCAB, (BATCH, 10), generator=g), ctx)
        opt.zero_grad()
        logits = net(batch[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
        opt.step()
        if engine.is_update_step(engine.step_count + 1):
            dd.allreduce_dense_grads(engine, ctx)
        record = engine.step()
        if record is None:
            continue
        dd.broadcast_engine(engine, ctx)
        snap = {f"mask:{n}": l.mask.clone() for n, l in engine.layers.items()}
        snap.update({f"param:{n}": p.detach().clone() for n, p in model.named_parameters()})
        snap.update({f"adam:{n}": opt.state[l.weight]["exp_avg"].clone() for n, l in engine.layers.items()})
        if check_ranks:
            assert_same_on_ranks(snap, ctx)
        snapshots.append(snap)
    assert len(snapshots) == STEPS // EVERY
    return snapshots


METHODS = ("chtss", "rigl")  # CH regrowth with soft sampling; dense-gradient regrowth (all-reduced scores)


def test_two_processes_match_each_other_and_one_process(tmp_path):
    ddp_runs = spawn_two(functools.partial(_train, check_ranks=True), METHODS, tmp_path / "ddp.pt")
    for method in METHODS:
        ddp, single = ddp_runs[method], _train(method, dd.DistContext(), check_ranks=False)
        assert len(ddp) == len(single) == STEPS // EVERY
        for update, (a, b) in enumerate(zip(ddp, single)):
            for key in a:
                if key.startswith("mask:"):
                    assert torch.equal(a[key], b[key]), f"{method} update {update}: {key}"
                else:  # the same global batch; only the order of float64 sums differs
                    assert torch.allclose(a[key], b[key], rtol=0, atol=1e-10), f"{method} update {update}: {key}"


def test_torchrun_lm_task_and_resume_on_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m brainsparse train --task lm``; the checkpoint resumes in
    one process."""
    from test_lm import make_fake_ptb

    data = make_fake_ptb(tmp_path / "ptb")
    out = tmp_path / "run"
    common = ["--task", "lm", "--dataset", "ptb", "--data-dir", str(data), "--method", "set", "--density", "0.3",
              "--steps", "6", "--eval-every", "3", "--update-every", "2", "--batch-size", "4", "--seq-len", "8",
              "--dropout", "0", "--threads", "1", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "brainsparse", "train", *common, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps_completed"] == 6
    # the same run in one process reaches nearly the same perplexity (same global batches)
    from brainsparse.cli import main

    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["processes"] == 1
    assert abs(one["test_ppl"] - summary["test_ppl"]) < 1e-3 * one["test_ppl"]
    assert one["links"] == summary["links"]
    # a checkpoint written by the 2-process run resumes in one process
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    Path(out / "summary.json").unlink()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
