"""When the sparse path pays: the measured crossover density against the dense-masked layer."""

from __future__ import annotations

import math

from .backend import resolve

__all__ = ["CROSSOVER_CPP", "CROSSOVER_TORCH", "choose_kernel", "crossover_density"]

#: Density below which the sparse path beats the dense-masked layer ``x @ (W*M).T + b`` (forward +
#: backward of one layer, float32), as ``(batch size, density)`` points; interpolated in
#: log(batch) between them, constant outside. Measured with ``benchmarks/kernels_micro.py`` on the
#: project machine (2-core AMD EPYC VM, AVX2, torch 2.13 CPU + MKL), dense/sparse time ratio,
#: best of 25 runs of process CPU time, 1 thread:
#:
#:   C++ kernel         density:  20 %   25 %   30 %   35 %   40 %
#:     1568x1568  batch  32       1.81   1.39   1.12   1.03   0.90
#:     1568x1568  batch 256       1.54   1.23   1.06   0.94   0.82
#:     784->1568  batch  32       1.93   1.56   1.17   1.00   0.89
#:     784->1568  batch 256       1.54   1.31   1.12   0.97   0.84
#:   PyTorch CSR        density:  10 %   15 %   20 %   25 %   30 %
#:     1568x1568  batch  32       2.27   1.55   1.11   0.92   0.77
#:     1568x1568  batch 256       1.70   1.20   0.94   0.76   0.64
#:     784->1568  batch  32       1.93   1.46   1.10   0.88   0.81
#:     784->1568  batch 256       1.81   1.21   0.97   0.80   0.66
#:
#: i.e. crossovers of ~35 % (C++, both batch sizes) and ~22 % / ~18 % (CSR, batch 32 / 256).
#: Two-thread timings could not be taken on the shared machine (other jobs kept both cores busy,
#: and every OpenMP region — even a 50 k-element ReLU — then waited ~8 ms for a descheduled
#: thread); at these densities both the C++ kernel (work above ``_cpu_ext.PARALLEL_MIN``) and MKL
#: run on both threads, so the ratio should hold. The constants sit ~5 points below the measured
#: crossovers as a margin. At the papers' 1 % density the sparse path is 12-25x faster.
CROSSOVER_CPP = ((32, 0.30), (256, 0.30))
#: The same for the PyTorch CSR fallback (its ~0.2 ms per-call floor and slower kernels).
CROSSOVER_TORCH = ((32, 0.18), (256, 0.13))


def crossover_density(batch_size: int, implementation: str | None = None) -> float:
    """The density below which the sparse path is expected to be faster (see ``CROSSOVER_*``).

    ``implementation``: ``"cpp"`` or ``"torch"``, or a backend request resolved for CPU float32
    (``None`` or ``"auto"``: the compiled kernel when it builds).
    """
    table = CROSSOVER_CPP if resolve(implementation or "auto", "cpu") == "cpp" else CROSSOVER_TORCH
    (b0, d0), (b1, d1) = table
    if batch_size <= b0:
        return d0
    if batch_size >= b1:
        return d1
    t = (math.log(batch_size) - math.log(b0)) / (math.log(b1) - math.log(b0))
    return d0 + t * (d1 - d0)


def choose_kernel(out_features: int, in_features: int, density: float, batch_size: int,
                  device_type: str = "cpu", backend: str = "auto") -> str:
    """``"sparse"`` or ``"dense"``: which execution is expected to be faster for this layer.

    On CPU compares ``density`` with :func:`crossover_density` for ``backend`` (the
    measured crossover does not depend much on the layer size in the papers' range, see
    ``CROSSOVER_CPP``). On other devices the masked-dense path: on an H200 the paper MLP's 1 %
    epoch took 3.1 s masked and 4.8 s on the CSR path (benchmarks/results/gpu-check.json).
    """
    if density >= 1.0 or out_features * in_features == 0 or device_type != "cpu":
        return "dense"
    return "sparse" if density < crossover_density(max(1, int(batch_size)), backend) else "dense"
