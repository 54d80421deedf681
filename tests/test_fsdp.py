"""FSDP2 (two CPU processes, gloo): every rank holds row shards of the weights, masks and optimizer
state; after every topology update the masks are bit-identical across ranks and equal to one
process trained on the same global batches (float64), weights equal up to summation order."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import BATCH, EVERY, STEPS, VOCAB, _free_port, _train
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
        for key, value in snap.items():  # the same on every rank (masks: bit for bit)
            gathered = [torch.empty_like(value) for _ in range(ctx.world_size)]
            dist.all_gather(gathered, value.contiguous())
            assert all(torch.equal(gathered[0], v) for v in gathered[1:]), f"rank mismatch in {key}"
        snapshots.append(snap)
    assert len(snapshots) == STEPS // EVERY
    return snapshots


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = dd.init_distributed()
    try:
        snapshots = {m: _train_fsdp(m, ctx) for m in METHODS}
        if rank == 0:
            torch.save(snapshots, out)
    finally:
        dd.shutdown(ctx)


def test_fsdp_matches_one_process(tmp_path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    runs = torch.load(out, weights_only=False)
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
