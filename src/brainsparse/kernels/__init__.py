"""Real sparse execution of masked linear layers (CSR forward / backward) and ``SparseLinear``.

* :class:`LinkStructure` — the CSR + CSC index of a layer's links, built from a bool mask;
  :func:`remap` carries per-link values (weights, optimizer state) to a new structure.
* :func:`sparse_linear` — ``y = x Wᵀ + b`` with gradients for the input, the links and the
  bias; never forms a dense weight or weight gradient (:func:`sparse_linear_indices`: the same
  on the structure's index tensors).
* :class:`SparseLinear` — the module (``SparseLinear.from_linear(linear, mask)``).
* ``backend=`` on all of them (and on the CH scorers of :mod:`brainsparse.scoring`):
  ``"auto"`` (default), ``"cpp"`` (a small C++ kernel, ``csrc/sparse_kernels.cpp``, compiled
  on first use and cached) or ``"torch"`` (PyTorch sparse CSR; also the GPU path); see
  :mod:`.backend`. :func:`backend` reports what ``"auto"`` runs on; :func:`set_backend` and
  :func:`use_backend` are deprecated process-wide switches.
* :mod:`.ops` — the kernels as registered operators ``torch.ops.brainsparse.*`` (fake kernels,
  registered autograd), used under ``torch.compile``.
* :func:`choose_kernel` — sparse or dense for a layer shape, density and rows per step, from the
  measured crossover table (:func:`crossover_density`, ``crossover_cpu.json``).
* :func:`~brainsparse.kernels.grouped.grouped_linear` — layers sharing an input (q/k/v) as one
  sparse call.

The kernels import nothing from :mod:`brainsparse.scoring` (scoring depends on kernels).
"""

from . import ops
from .backend import (
    BACKENDS,
    available,
    backend,
    cpu_kernels,
    resolve,
    set_backend,
    use_backend,
)
from .crossover import choose_kernel, crossover_density, crossover_table
from .layer import SparseLinear
from .sparse_linear import sparse_linear, sparse_linear_indices
from .structure import LinkStructure, remap

__all__ = [
    "BACKENDS",
    "LinkStructure",
    "SparseLinear",
    "available",
    "backend",
    "choose_kernel",
    "cpu_kernels",
    "crossover_density",
    "crossover_table",
    "ops",
    "remap",
    "resolve",
    "set_backend",
    "sparse_linear",
    "sparse_linear_indices",
    "use_backend",
]
