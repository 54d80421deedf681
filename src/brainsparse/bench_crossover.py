"""Measure where the sparse path beats the masked one, per layer shape and rows per step.

    python -m brainsparse.bench_crossover --out src/brainsparse/kernels/crossover_cpu.json

writes the table :func:`brainsparse.kernels.crossover_density` interpolates. For every layer
shape and number of rows (samples × tokens multiplied per step) of the grid it times, one
thread, interleaved in rounds, process CPU time (the time this process ran: other jobs on a
shared machine leave it out), median over rounds:

* masked: ``F.linear`` forward and backward (input, weight and bias gradients) with the masked
  path's own work — the gradient hook ``grad * mask`` and the re-masking ``weight *= mask``
  after the optimizer step (:class:`~brainsparse.engine.MaskedStorage`); its time does not
  depend on the density;
* sparse: :class:`~brainsparse.kernels.SparseLinear` forward and backward (input, link and
  bias gradients) at each density of the grid.

The sparse time is linear in the link count (a fixed part for the transposes plus a part per
link and row), so a least-squares line ``t(d) = a + b d`` through the densities gives the
crossover ``(t_masked - a) / b``, clipped to [0, the largest density measured]. The optimizer
step is not timed: it costs the masked path ``out × in`` updates and the sparse path one per
link, so the measured crossovers are conservative (they favour the masked path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: the grid of the packaged table: the papers' MLP layers, the Transformer and LLaMA presets' projections
SHAPES: tuple[tuple[int, int], ...] = ((128, 128), (384, 128), (256, 256), (512, 256), (512, 512), (1376, 512),
                                       (1568, 784), (1568, 1568), (4096, 4096))
ROWS: tuple[int, ...] = (32, 128, 512, 2048)
DENSITIES: tuple[float, ...] = (0.005, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)


def _layer_steps(out_f: int, in_f: int, rows: int, densities: Sequence[float], seed: int = 0) -> dict[str, Callable[[], None]]:
    from .kernels import SparseLinear

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_f, generator=gen).requires_grad_()
    gy = torch.randn(rows, out_f, generator=gen)
    masked = nn.Linear(in_f, out_f)
    mask = torch.rand(out_f, in_f, generator=gen) < 0.1
    mask_float = mask.float()
    masked.weight.register_hook(lambda g: g * mask_float)

    def masked_step() -> None:
        torch.autograd.grad(F.linear(x, masked.weight, masked.bias), (x, masked.weight, masked.bias), gy)
        with torch.no_grad():
            masked.weight.mul_(mask_float)

    steps: dict[str, Callable[[], None]] = {"masked": masked_step}
    for d in densities:
        m = torch.rand(out_f, in_f, generator=gen) < d
        layer = SparseLinear.from_linear(nn.Linear(in_f, out_f), m)

        def sparse_step(layer: SparseLinear = layer) -> None:
            torch.autograd.grad(layer(x), (x, layer.values, layer.bias), gy)

        steps[f"sparse@{d:g}"] = sparse_step
    return steps


def _medians(steps: dict[str, Callable[[], None]], min_rounds: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call, rounds interleaved, at least ``min_rounds``, until ``budget_s``."""
    for f in steps.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    start = time.process_time()
    while True:
        for name, f in steps.items():
            t = time.process_time()
            f()
            times[name].append(time.process_time() - t)
        rounds = len(times["masked"])
        if rounds >= min_rounds and (time.process_time() - start > budget_s or rounds >= 25):
            break
    return {k: statistics.median(v) for k, v in times.items()}


def crossover_from(masked_s: float, densities: Sequence[float], sparse_s: Sequence[float]) -> float:
    """The density where the least-squares line through ``(density, sparse time)`` meets the
    masked time, clipped to the measured densities' range [0, max]: the sparse path is not
    credited beyond what was measured (the top density when it wins everywhere)."""
    n, top = len(densities), max(densities)
    mx, my = sum(densities) / n, sum(sparse_s) / n
    sxx = sum((d - mx) ** 2 for d in densities)
    slope = sum((d - mx) * (t - my) for d, t in zip(densities, sparse_s)) / sxx if sxx else 0.0
    if slope <= 0:
        return top if my < masked_s else 0.0
    return min(top, max(0.0, mx + (masked_s - my) / slope))


def measure(shapes: Sequence[tuple[int, int]] = SHAPES, rows: Sequence[int] = ROWS,
            densities: Sequence[float] = DENSITIES, min_rounds: int = 5, budget_s: float = 2.0,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The crossover table (see the module text) as a JSON-ready dict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table: dict[str, Any] = {"masked_ms": {}, "sparse_ms": {}, "crossover": {}}
        for out_f, in_f in shapes:
            key = f"{out_f}x{in_f}"
            for r in rows:
                med = _medians(_layer_steps(out_f, in_f, r, densities), min_rounds, budget_s)
                sparse = [med[f"sparse@{d:g}"] for d in densities]
                cross = crossover_from(med["masked"], densities, sparse)
                table["masked_ms"].setdefault(key, {})[str(r)] = round(med["masked"] * 1e3, 4)
                table["sparse_ms"].setdefault(key, {})[str(r)] = [round(t * 1e3, 4) for t in sparse]
                table["crossover"].setdefault(key, {})[str(r)] = round(cross, 4)
                if progress is not None:
                    progress(f"{key} rows {r}: masked {med['masked'] * 1e3:.3f} ms, crossover {cross:.3f}")
    finally:
        torch.set_num_threads(threads)
    from .kernels import backend

    return {
        "about": __doc__.split("\n\n", 2)[2].strip() if __doc__ else "",
        "backend": backend(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                    "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
        "shapes": [list(s) for s in shapes], "rows": list(rows), "densities": list(densities),
        **table,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--quick", action="store_true", help="two small shapes, two row counts (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        result = measure(shapes=((128, 128), (256, 256)), rows=(32, 512), min_rounds=3, budget_s=0.2, progress=print)
    else:
        result = measure(progress=print)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
