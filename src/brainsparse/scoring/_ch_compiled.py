"""The compiled CH L3 scorers (C++, in the kernels' shared object), checked before first use.

:func:`compiled_available` says whether a scorer call with ``backend=`` may use them for a mask;
:func:`compiled_scores` calls the registered operator ``torch.ops.brainsparse.ch_l3_compiled``.
The first time they are wanted in a process they are compared with the PyTorch forms on a small
random layer (a guard against a miscompiled build, the CH half of the kernels' self-test, kept
here so that :mod:`brainsparse.kernels` imports nothing from scoring); on a mismatch the PyTorch
forms are used.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch
from torch import Tensor

from ..kernels import _cpu_ext, ops, resolve
from ._ch_common import VARIANTS
from ._ch_matrix import matrix_scores
from ._ch_paths import exact_scores

__all__ = ["compiled_available", "compiled_problem", "compiled_scores"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_checked: dict[str, bool] = {}  # "ok" -> result of the check, once run


def compiled_scores(m: Tensor, var: str, matrix: bool) -> Tensor:
    """Compiled scores of a bool CPU mask (exact path form, or the fused matrix form), float32."""
    return ops.ch_l3_compiled(m.contiguous(), var, bool(matrix))


def _check() -> bool:
    """The compiled scorers against the PyTorch ones on a small random layer."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(23, 17, generator=gen) < 0.3
    with torch.no_grad(), torch.autocast("cpu", enabled=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        for var in VARIANTS:
            exact = exact_scores(mask, var, 1 << 24, "sparse").masked_fill_(mask, 0.0)
            for matrix, expected in ((False, exact), (True, matrix_scores(mask, var, use_sparse=False))):
                got = compiled_scores(mask, var, matrix)
                if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
                    log.debug("brainsparse: the compiled CH %s (matrix=%s) differs by %s; using PyTorch", var,
                              matrix, (got - expected).abs().max().item())
                    return False
    return True


def _verified() -> bool:
    if "ok" not in _checked:
        with _lock:
            if "ok" not in _checked:
                _checked["ok"] = _check()
    return _checked["ok"]


def compiled_available(m: Tensor, backend: str) -> bool:
    """Whether a scorer called with ``backend=`` uses the compiled scorers for mask ``m``."""
    return m.device.type == "cpu" and resolve(backend, "cpu") == "cpp" and _verified()


def compiled_problem(m: Tensor, backend: str) -> str:
    """Why the compiled scorers are not used for ``m`` with ``backend=``."""
    if m.device.type != "cpu":
        return f"mask on {m.device}"
    if resolve(backend, "cpu") != "cpp":
        return _cpu_ext.error() or f"kernel backend {backend!r} resolves to 'torch'"
    return "they failed their check against the PyTorch forms"
