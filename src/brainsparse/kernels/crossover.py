"""When the sparse path pays: the measured crossover density against the masked-dense layer,
per layer shape and rows per step.

The compiled kernel's crossovers are a measured table, ``crossover_cpu.json`` beside this module,
made by :mod:`brainsparse.bench_crossover` (its text says how: one thread, forward + backward of
one layer plus the masked path's gradient masking and re-masking, process CPU time, medians of
interleaved rounds; the machine and load are recorded in the file). Its grid: layer shapes from
128×128 to 4096×4096 (the papers' MLP layers, the Transformer and LLaMA presets' projections) ×
32, 128, 512 and 2048 rows per step. :func:`crossover_density` interpolates it bilinearly in
log(out × in) and log(rows), constant outside the grid.

The rows per step are what one call of the layer multiplies: the batch size of an MLP, batch ×
tokens of a sequence model (each projection sees every token of the batch). More rows make the
masked layer's weight-sized work (the dense weight gradient, the masking) a smaller part of its
time, so the crossover falls as the rows grow; small layers pay the sparse call's fixed cost.

The PyTorch CSR fallback (no C++ compiler) keeps the earlier, shape-independent table
``CROSSOVER_TORCH`` (1568×1568 and 784→1568 layers at batch 32 and 256: ~22 % / ~18 %
measured, with a margin). At the papers' 1 % density the sparse path wins everywhere.
"""

from __future__ import annotations

import bisect
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from .backend import resolve

__all__ = ["CROSSOVER_TORCH", "choose_kernel", "crossover_density", "crossover_table"]

#: The PyTorch CSR fallback's crossover: ``(rows, density)`` points, interpolated in log(rows).
CROSSOVER_TORCH = ((32, 0.18), (256, 0.13))
#: the packaged table of the compiled kernel (see the module text)
TABLE_PATH = Path(__file__).with_name("crossover_cpu.json")
#: shape used when a caller gives none (the papers' hidden layer)
DEFAULT_SHAPE = (1568, 1568)


@lru_cache(maxsize=1)
def crossover_table() -> dict[str, Any]:
    """The measured table (``crossover_cpu.json``): shapes, rows, densities, timings, crossovers."""
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _grid() -> tuple[list[float], list[float], list[list[float]]]:
    """(log sizes ascending, log rows ascending, crossover[size][rows]) of the table."""
    t = crossover_table()
    by_size: dict[int, list[tuple[int, int]]] = {}
    for out_f, in_f in t["shapes"]:
        by_size.setdefault(out_f * in_f, []).append((out_f, in_f))
    sizes = sorted(by_size)
    rows = sorted(int(r) for r in t["rows"])
    values = []
    for size in sizes:  # shapes of one size (other aspect ratios): their mean
        shapes = by_size[size]
        values.append([sum(t["crossover"][f"{o}x{i}"][str(r)] for o, i in shapes) / len(shapes) for r in rows])
    return [math.log(s) for s in sizes], [math.log(r) for r in rows], values


def _bracket(axis: list[float], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and the weight of the upper one (clamped)."""
    if x <= axis[0]:
        return 0, 0, 0.0
    if x >= axis[-1]:
        return len(axis) - 1, len(axis) - 1, 0.0
    hi = bisect.bisect_right(axis, x)
    lo = hi - 1
    return lo, hi, (x - axis[lo]) / (axis[hi] - axis[lo])


def _torch_crossover(rows: int) -> float:
    (b0, d0), (b1, d1) = CROSSOVER_TORCH
    if rows <= b0:
        return d0
    if rows >= b1:
        return d1
    t = (math.log(rows) - math.log(b0)) / (math.log(b1) - math.log(b0))
    return d0 + t * (d1 - d0)


def crossover_density(rows: int, implementation: str | None = None,
                      shape: tuple[int, int] | None = None) -> float:
    """The density below which the sparse path is expected to be faster than the masked one for
    a layer of ``shape`` ``(out, in)`` (default 1568×1568) multiplying ``rows`` rows per step.

    ``implementation``: ``"cpp"`` or ``"torch"``, or a backend request resolved for CPU float32
    (``None`` or ``"auto"``: the compiled kernel when it builds). See the module text.
    """
    rows = max(1, int(rows))
    if resolve(implementation or "auto", "cpu") != "cpp":
        return _torch_crossover(rows)
    out_f, in_f = shape if shape is not None else DEFAULT_SHAPE
    log_sizes, log_rows, values = _grid()
    s0, s1, ws = _bracket(log_sizes, math.log(max(1, int(out_f) * int(in_f))))
    r0, r1, wr = _bracket(log_rows, math.log(rows))

    def at(s: int) -> float:
        return values[s][r0] * (1 - wr) + values[s][r1] * wr

    return at(s0) * (1 - ws) + at(s1) * ws


def choose_kernel(out_features: int, in_features: int, density: float, batch_size: int,
                  device_type: str = "cpu", backend: str = "auto") -> str:
    """``"sparse"`` or ``"dense"``: which execution is expected to be faster for this layer.

    ``batch_size``: the rows the layer multiplies per step (batch × tokens for sequence models).
    On CPU compares ``density`` with :func:`crossover_density` for the layer's shape, the rows and
    ``backend``. On other devices the masked-dense path: on an H200 the paper MLP's 1 % epoch
    took 3.1 s masked and 4.8 s on the CSR path (benchmarks/results/gpu-check.json).
    """
    if density >= 1.0 or out_features * in_features == 0 or device_type != "cpu":
        return "dense"
    limit = crossover_density(max(1, int(batch_size)), backend, (out_features, in_features))
    return "sparse" if density < limit else "dense"
