"""Training steps of the Transformer and LLaMA presets, masked vs sparse (``bench --parts models``).

For each (model, density) cell both paths are built from one seed and timed side by side: one
training step each in turn (forward, backward, optimizer step, ``engine.step()``), ``repeats``
rounds after two warm-ups, medians of process CPU time (one thread: the time this process ran,
so other jobs on a shared machine inflate it less than wall time). Then ``updates`` topology updates of each are timed (median).
Peak memory: each path again in a fresh process (build, three steps, one update, one step), the
process's peak resident memory and its growth over the process before the model was built.
``kernel="auto"`` is built too, and which layers it puts on the sparse path is recorded (per
layer shape, from the measured crossover for the layer's shape and the rows per step).

Shapes follow the tasks' defaults: the ``small`` translation preset at 1024 tokens per batch (32
sentences of 16 + 16 tokens: 512 rows per projection per step; SET; Adam, fused where torch has
it, as the trainer; label-smoothed loss), ``llama-tiny`` at 16 sequences of 64 tokens (1024
rows; CHTs with AdamW); vocabularies of 5000 and 10000 (PTB).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CELLS: tuple[tuple[str, float], ...] = (("transformer-small", 0.1), ("transformer-small", 0.05),
                                        ("llama-tiny", 0.3), ("llama-tiny", 0.1))
#: rows each sparse projection multiplies per step (the engines' ``batch_size``)
ROWS = {"transformer-small": 512, "llama-tiny": 16 * 64}


def _translation(kernel: str, density: float, seed: int) -> tuple[nn.Module, Any, Callable[[], Tensor]]:
    from .engine import sparsify
    from .models.functional import label_smoothed_cross_entropy
    from .models.transformer import Seq2SeqTransformer, transformer_config
    from .train.common import fused_optimizer_options

    torch.manual_seed(seed)
    model = Seq2SeqTransformer(transformer_config("small", 5000))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, **fused_optimizer_options("cpu"))
    engine = sparsify(model, opt, method="set", density=density, update_every=10**9, total_steps=10**9,
                      pairs=model.sparse_pairs(), seed=seed, kernel=kernel, batch_size=ROWS["transformer-small"])
    gen = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(4, 5000, (32, 16), generator=gen), torch.randint(4, 5000, (32, 17), generator=gen)

    def loss() -> Tensor:
        return label_smoothed_cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten(), 0.1, 0)

    return engine, opt, loss


def _llama(kernel: str, density: float, seed: int) -> tuple[nn.Module, Any, Callable[[], Tensor]]:
    from .models.llama import LlamaLM, llama_config
    from .train.language_model import adamw, sparsify_llama

    torch.manual_seed(seed)
    model = LlamaLM(llama_config("llama-tiny", vocab_size=10000, dropout=0.0))
    opt = adamw(model, 3e-3, 0.0)
    engine = sparsify_llama(model, opt, method="chts", density=density, update_every=10**9, total_steps=10**9,
                            seed=seed, kernel=kernel, batch_size=ROWS["llama-tiny"])
    tokens = torch.randint(0, 10000, (16, 65), generator=torch.Generator().manual_seed(seed))

    def loss() -> Tensor:
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return engine, opt, loss


_BUILD = {"transformer-small": _translation, "llama-tiny": _llama}


def _step(engine: Any, opt: torch.optim.Optimizer, loss: Callable[[], Tensor]) -> float:
    start = time.process_time()
    opt.zero_grad(set_to_none=True)
    loss().backward()
    opt.step()
    engine.step()
    return time.process_time() - start


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of this process's memory map in MiB (``getrusage``'s peak would
    carry the parent's resident size into a child started by fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(name: str, density: float, kernel: str, seed: int = 0) -> dict[str, float]:
    """In this process (a fresh one): build one path, three steps, an update, a step; peak RSS."""
    torch.set_num_threads(1)
    before = _status_mib("VmRSS")
    engine, opt, loss = _BUILD[name](kernel, density, seed)
    for _ in range(3):
        _step(engine, opt, loss)
    engine.update()
    _step(engine, opt, loss)
    peak = _status_mib("VmHWM")
    return {"peak_mib": peak, "growth_mib": peak - before}


def _peak_in_child(name: str, density: float, kernel: str, seed: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "brainsparse.bench_models", name, str(density), kernel, str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory run {name} {density} {kernel} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _auto_choice(name: str, density: float, seed: int) -> dict[str, Any]:
    """Which layers ``kernel="auto"`` runs sparse: their count, and the path per layer shape."""
    engine = _BUILD[name]("auto", density, seed)[0]
    by_shape: dict[str, str] = {}
    for layer in engine.layers.values():
        out_f, in_f = layer.mask.shape
        by_shape[f"{out_f}x{in_f}"] = "sparse" if layer.sparse_kernel else "masked"
    return {"auto_sparse_layers": sum(layer.sparse_kernel for layer in engine.layers.values()),
            "auto_by_shape": by_shape}


def bench_models(cells: Sequence[tuple[str, float]] = CELLS, repeats: int = 10, seed: int = 0, updates: int = 3,
                 memory: bool = True) -> list[dict[str, Any]]:
    """Median training-step and topology-update times, peak memory (``memory``: fresh processes)
    and ``kernel="auto"``'s choice, masked vs sparse, per (model, density)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, density in cells:
            runs = {kernel: _BUILD[name](kernel, density, seed) for kernel in ("dense", "sparse")}
            times: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(repeats + 2):
                for kernel, (engine, opt, loss) in runs.items():
                    t = _step(engine, opt, loss)
                    if r >= 2:
                        times[kernel].append(t)
            row: dict[str, Any] = {"model": name, "density": density, "repeats": repeats, "rows_per_step": ROWS[name],
                                   "threads": 1}
            for kernel, (engine, _, _) in runs.items():
                row[f"{kernel}_step_s"] = statistics.median(times[kernel])
                spent = []
                for _ in range(updates):
                    start = time.process_time()
                    engine.update()
                    spent.append(time.process_time() - start)
                row[f"{kernel}_update_s"] = statistics.median(spent)
                row[f"{kernel}_sparse_layers"] = sum(layer.sparse_kernel for layer in engine.layers.values())
            row["layers"] = len(runs["dense"][0].layers)
            row["step_speedup"] = row["dense_step_s"] / row["sparse_step_s"]
            del runs
            row.update(_auto_choice(name, density, seed))
            if memory:
                for kernel in ("dense", "sparse"):
                    peak = _peak_in_child(name, density, kernel, seed)
                    row[f"{kernel}_peak_mib"], row[f"{kernel}_growth_mib"] = peak["peak_mib"], peak["growth_mib"]
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The models table."""
    lines = ["### Training steps of the Transformer and LLaMA presets, masked vs sparse (median, 1 thread)", "",
             "| model | density | masked step | sparse step | sparse vs masked | masked update | sparse update | "
             "peak memory masked / sparse | auto: sparse layers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = (f"{r['dense_peak_mib']:.0f} / {r['sparse_peak_mib']:.0f} MiB" if "dense_peak_mib" in r else "–")
        auto = f"{r['auto_sparse_layers']} of {r['layers']}" if "auto_sparse_layers" in r else "–"
        lines.append(f"| {r['model']} | {r['density']:g} | {r['dense_step_s'] * 1e3:.1f} ms | "
                     f"{r['sparse_step_s'] * 1e3:.1f} ms | {r['step_speedup']:.2f}× | "
                     f"{r['dense_update_s'] * 1e3:.1f} ms | {r['sparse_update_s'] * 1e3:.1f} ms | {peak} | {auto} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    name_, density_, kernel_, seed_ = sys.argv[1:5]
    print(json.dumps(peak_memory(name_, float(density_), kernel_, int(seed_))))
