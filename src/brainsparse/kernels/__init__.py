"""Real sparse execution of masked linear layers (CSR forward / backward) and ``SparseLinear``.

* :class:`LinkStructure` — the CSR + CSC index of a layer's links, built from a bool mask;
  :func:`remap` carries per-link values (weights, optimizer state) to a new structure.
* :func:`sparse_linear` — ``y = x Wᵀ + b`` with gradients for the input, the links and the
  bias; never forms a dense weight or weight gradient.
* :class:`SparseLinear` — the module (``SparseLinear.from_linear(linear, mask)``).
* :func:`backend` — the active CPU implementation, ``"cpp"`` (a small C++ kernel compiled on
  first use and cached) or ``"torch"`` (PyTorch sparse CSR; also the GPU path);
  :func:`cpu_kernels` — the compiled kernels themselves (they also hold the C++
  Cannistraci–Hebb scorers used by :mod:`brainsparse.scoring`), ``None`` on the torch backend.
* :func:`choose_kernel` — sparse or dense for a layer size, density and batch size.
"""

from .sparse_linear import (
    BACKENDS,
    SparseLinear,
    backend,
    choose_kernel,
    cpu_kernels,
    crossover_density,
    set_backend,
    sparse_linear,
    use_backend,
)
from .structure import LinkStructure, remap

__all__ = [
    "BACKENDS",
    "LinkStructure",
    "SparseLinear",
    "backend",
    "choose_kernel",
    "cpu_kernels",
    "crossover_density",
    "remap",
    "set_backend",
    "sparse_linear",
    "use_backend",
]
