"""Per-rank memory and step time of dynamic sparse training, FSDP2 vs DDP, on 2 CPU processes.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py \
        [--model llama-60m] [--steps 4] [--update-every 3] [--mmap-threshold BYTES] \
        [--out benchmarks/results/fsdp-memory.json]

The driver starts ``torchrun --nproc-per-node 2`` once per mode (``ddp``: the model replicated and
wrapped in DDP, as ``brainsparse train --task lm`` does under torchrun; ``fsdp``: the model, masks
and optimizer state sharded with FSDP2, as ``--parallel fsdp`` does). Every rank trains the same
CHTss LLaMA (AdamW, masked path, density 0.3, synthetic tokens) for ``--steps`` steps with one
topology update, and reports:

* ``peak_rss_mb``: the process's peak resident memory (VmHWM) over its whole life;
* ``train_peak_rss_mb``: the peak from the first training step on (the largest phase peak);
* ``baseline_rss_mb``: resident memory after importing torch and brainsparse, before the model;
* ``model_state_mb``: the bytes this rank holds in parameters, gradients, optimizer state and
  masks (a count of the tensors, independent of the allocator);
* ``phase_peak_rss_mb``: the peak of each phase of a step (forward, backward + clipping,
  optimizer, engine step, topology update), the peak being reset before each;
* ``step_s`` (median of the steps without an update) and ``update_s`` (the update step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _tensor_bytes(tensors: Any) -> int:
    from torch.distributed.tensor import DTensor

    total, seen = 0, set()
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def worker(args: argparse.Namespace) -> None:
    """One rank of one mode (run by torchrun)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn import functional as F

    from brainsparse.models.llama import LlamaLM, llama_config
    from brainsparse.train import distributed as dd
    from brainsparse.train.language_model import adamw, sparsify_llama

    baseline = _status_mb("VmRSS")
    torch.set_num_threads(1)
    ctx = dd.init_distributed(cuda=False)
    torch.manual_seed(0)
    config = llama_config(args.model, vocab_size=args.vocab, dropout=0.0)
    model = LlamaLM(config)
    options = {"method": "chtss", "density": args.density, "update_every": args.update_every,
               "total_steps": args.steps + 1, "seed": 0}
    if args.mode == "fsdp":
        from brainsparse.distributed.fsdp import shard_model, sparsify_sharded

        shard_model(model)
        opt = adamw(model, 1e-3, 0.1)
        engine = sparsify_sharded(model, opt, sparsify_fn=sparsify_llama, **options)
        net: nn.Module = model
    else:
        opt = adamw(model, 1e-3, 0.1)
        engine = sparsify_llama(model, opt, kernel="dense", **options)
        net = nn.parallel.DistributedDataParallel(model)
    setup_peak = _status_mb("VmHWM")
    reset = _reset_peak()
    g = torch.Generator().manual_seed(1)
    times, update_times = [], []
    phases: dict[str, float] = {}  # peak RSS of each phase of a step (the peak is reset before each)

    def phase(name: str) -> None:
        if reset:
            phases[name] = max(phases.get(name, 0.0), _status_mb("VmHWM"))
            _reset_peak()

    for _ in range(args.steps):
        batch = dd.shard(torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g), ctx)
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = net(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        phase("forward")
        loss.backward()
        del logits, loss
        if args.mode == "fsdp":
            engine.mask_gradients()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        phase("backward")
        opt.step()
        phase("optimizer")
        if args.mode == "ddp" and engine.is_update_step(engine.step_count + 1):
            dd.allreduce_dense_grads(engine, ctx)
        record = engine.step()
        if record is not None and args.mode == "ddp":
            dd.broadcast_engine(engine, ctx)
        phase("update" if record is not None else "engine")
        dist.barrier()
        (update_times if record is not None else times).append(time.perf_counter() - t0)
    # what this rank holds after the last step (gradients of the last step still there)
    params = list(model.parameters())
    state = [v for p in params for v in opt.state.get(p, {}).values() if torch.is_tensor(v)]
    masks = [t for layer in engine.layers.values() for t in (layer.mask, layer.mask_float, layer.ever_active)]
    row = {
        "rank": ctx.rank,
        "mode": args.mode,
        "baseline_rss_mb": baseline,
        "setup_peak_rss_mb": setup_peak,
        "train_peak_rss_mb": max(phases.values()) if phases else None,
        "phase_peak_rss_mb": phases,
        # the whole life: set-up, then every phase (resetting VmHWM also resets ru_maxrss)
        "peak_rss_mb": max([setup_peak, *phases.values()]) if phases else
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_state_mb": {
            "parameters": _tensor_bytes(params) / 2**20,
            "gradients": _tensor_bytes(p.grad for p in params) / 2**20,
            "optimizer": _tensor_bytes(state) / 2**20,
            "masks": _tensor_bytes(masks) / 2**20,
        },
        "step_s": statistics.median(times) if times else None,
        "update_s": statistics.median(update_times) if update_times else None,
        "parameters": sum(p.numel() for p in params),  # global sizes (a DTensor's numel is the global one)
        "sparse_parameters": sum(layer.module.weight.numel() for layer in engine.layers.values()),
    }
    row["model_state_mb"]["total"] = sum(row["model_state_mb"].values())
    with open(Path(args.result) / f"{args.mode}-{ctx.rank}.json", "w") as fh:
        json.dump(row, fh)
    dd.shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Run both modes and write the comparison JSON."""
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), __file__, "--worker", "--mode", mode, "--result", tmp,
                   "--model", args.model, "--steps", str(args.steps), "--update-every", str(args.update_every),
                   "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--vocab", str(args.vocab),
                   "--density", str(args.density)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            if args.mmap_threshold:
                # a fixed glibc mmap threshold: blocks above it are mmapped and go back to the
                # system when freed, so RSS follows live memory instead of the heap's high-water mark
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            started = time.perf_counter()
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{result.stderr[-4000:]}")
            rows[mode] = [json.loads((Path(tmp) / f"{mode}-{r}.json").read_text()) for r in range(2)]
            print(f"{mode}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    def worst(mode: str, key: str) -> float:
        values = [r[key] if key != "model_state_mb" else r[key]["total"] for r in rows[mode]]
        return max(values)

    summary: dict[str, Any] = {}
    if {"ddp", "fsdp"} <= set(rows):
        for key in ("peak_rss_mb", "train_peak_rss_mb", "model_state_mb"):
            summary[f"fsdp_over_ddp_{key}"] = worst("fsdp", key) / worst("ddp", key)
        above = {m: max(r["train_peak_rss_mb"] - r["baseline_rss_mb"] for r in rows[m]) for m in ("ddp", "fsdp")}
        summary["fsdp_over_ddp_train_peak_above_baseline"] = above["fsdp"] / above["ddp"]
        summary["fsdp_over_ddp_step_time"] = (statistics.mean(r["step_s"] for r in rows["fsdp"])
                                              / statistics.mean(r["step_s"] for r in rows["ddp"]))
    report = {
        "benchmark": "fsdp-vs-ddp memory and step time, 2 CPU processes (gloo)",
        "settings": {k: getattr(args, k) for k in ("model", "vocab", "density", "steps", "update_every", "batch",
                                                    "seq_len", "mmap_threshold")} | {"method": "chtss", "optimizer": "AdamW",
                                                                   "threads_per_process": 1},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": __import__("torch").__version__},
        "ranks": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["ddp", "fsdp"], default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--model", default="llama-60m")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (LLaMA's 32000 makes llama-60m 58M parameters)")
    p.add_argument("--density", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--update-every", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="sequences per global batch")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the workers; 0: glibc's default (dynamic) threshold")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fsdp-memory.json"))
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
