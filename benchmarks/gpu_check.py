"""The GPU check behind ``scripts/gpu-check.sh``: a few minutes on one GPU, figures as JSON.

1. an MLP epoch (784-1568-1568-1568-10, batch 32, 1875 steps, CHTs at 1 %) on the masked and the
   sparse path, with one topology update, on synthetic MNIST-shaped data;
2. ``llama-60m`` training steps (AdamW, batch 8 × 256 tokens): dense, and CHTs at 30 % density
   on the masked path;
3. the peak GPU memory of each.

Without a GPU it writes ``{"gpu": false, ...}`` and exits 0, so the script can run anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mlp_epoch(kernel: str, steps: int, device: torch.device) -> dict:
    import brainsparse as bs

    torch.manual_seed(0)
    model = bs.models.MLP([784, 1568, 1568, 1568, 10]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    engine = bs.sparsify(model, opt, method="chts", density=0.01, init="bsw", update_every=steps,
                         total_steps=10 * steps, seed=0, kernel=kernel, batch_size=32)
    gen = torch.Generator(device="cpu").manual_seed(0)
    data = torch.rand(steps * 32, 784, generator=gen).to(device)
    labels = torch.randint(0, 10, (steps * 32,), generator=gen).to(device)
    torch.cuda.reset_peak_memory_stats(device)
    _sync()
    start = time.perf_counter()
    for b in range(steps):
        x, y = data[b * 32 : (b + 1) * 32], labels[b * 32 : (b + 1) * 32]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    _sync()
    seconds = time.perf_counter() - start
    update = engine.history[-1]["time_s"] if engine.history else None
    return {"kernel": kernel, "steps": steps, "epoch_s": seconds, "update_s": update,
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def llama_steps(method: str, steps: int, device: torch.device) -> dict:
    from brainsparse.models.llama import LlamaLM, llama_config
    from brainsparse.train.language_model import adamw, sparsify_llama

    torch.manual_seed(0)
    model = LlamaLM(llama_config("llama-60m", vocab_size=32000, dropout=0.0)).to(device)
    opt = adamw(model, 3e-3, 0.0)
    if method != "dense":
        sparsify_llama(model, opt, method=method, density=0.3, update_every=10**6, total_steps=10**6, seed=0,
                       kernel="dense")
    tokens = torch.randint(0, 32000, (8, 257), device=device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        _sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(tokens[:, :-1])
        nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).backward()
        opt.step()
        _sync()
        times.append(time.perf_counter() - start)
    return {"method": method, "density": 0.3 if method != "dense" else 1.0, "steps": steps,
            "step_s_median": statistics.median(times[1:] or times),
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu-check.json")
    parser.add_argument("--mlp-steps", type=int, default=1875, help="steps of the MLP epoch (1875 = MNIST at batch 32)")
    parser.add_argument("--llama-steps", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"gpu": torch.cuda.is_available(), "torch": torch.__version__, "host": platform.node()}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device visible to this torch build"
        out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        print(f"gpu-check: no GPU here; wrote {out}")
        return 0
    device = torch.device("cuda")
    result["device"] = torch.cuda.get_device_name(device)
    result["mlp_epoch"] = [mlp_epoch(k, args.mlp_steps, device) for k in ("dense", "sparse")]
    masked, sparse = (r["epoch_s"] for r in result["mlp_epoch"])
    result["mlp_epoch_ratio_masked_over_sparse"] = masked / sparse
    result["llama_60m"] = [llama_steps(m, args.llama_steps, device) for m in ("dense", "chts")]
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
