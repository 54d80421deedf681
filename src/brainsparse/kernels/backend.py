"""Which implementation runs a sparse product or a compiled CH scorer: ``"cpp"`` or ``"torch"``.

Every entry point takes ``backend=`` — ``"auto"`` (default), ``"cpp"`` or ``"torch"``:

* ``"cpp"``: the compiled C++ kernel (CPU tensors, float32/float64 for the layer); where it is
  unavailable (no compiler, GPU tensors, half precision) the call falls back to ``"torch"``;
* ``"torch"``: PyTorch only (sparse CSR kernels; the GPU path);
* ``"auto"``: ``"cpp"`` when the kernel builds and the tensors allow it, else ``"torch"``.
  ``$BRAINSPARSE_KERNEL_BACKEND=torch`` makes ``"auto"`` mean ``"torch"`` in a whole process
  (a deployment switch; read at import).

:func:`resolve` turns a request into the implementation used. The process-wide switches of
earlier versions, :func:`set_backend`, :func:`use_backend` and :func:`backend`, remain for
compatibility and are deprecated: they change what ``"auto"`` means; pass ``backend=`` instead.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from ..errors import BrainsparseError
from . import _cpu_ext

__all__ = ["BACKENDS", "available", "backend", "check_backend", "cpu_kernels", "resolve", "set_backend",
           "use_backend"]

BACKENDS = ("auto", "cpp", "torch")


def _env_default() -> str:
    name = os.environ.get("BRAINSPARSE_KERNEL_BACKEND", "auto").strip().lower() or "auto"
    return name if name in BACKENDS else "auto"


#: what "auto" means in this process: "auto" or "torch" from $BRAINSPARSE_KERNEL_BACKEND, or
#: what the deprecated set_backend() chose
_default = _env_default()


def check_backend(name: str) -> str:
    """``name`` normalised (lower case); raises :class:`BrainsparseError` for an unknown one."""
    key = str(name).strip().lower() or "auto"
    if key not in BACKENDS:
        raise BrainsparseError(f"kernel backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}")
    return key


def available() -> bool:
    """Whether the compiled kernel builds and loads here (built on first call, then cached)."""
    return _cpu_ext.load() is not None


def resolve(name: str = "auto", device_type: str = "cpu", dtype: torch.dtype | None = None) -> str:
    """The implementation a ``backend=name`` request runs on for tensors of this device and dtype.

    ``"cpp"`` only for CPU tensors (of float32/float64 when ``dtype`` is given) where the compiled
    kernel is available; otherwise ``"torch"``.
    """
    key = check_backend(name)
    if key == "auto":
        key = _default
    if key == "torch" or device_type != "cpu":
        return "torch"
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        return "torch"
    return "cpp" if _cpu_ext.load() is not None else "torch"


def cpu_kernels(name: str = "auto") -> _cpu_ext.CpuKernels | None:
    """The compiled kernels when ``backend=name`` resolves to ``"cpp"`` on CPU, else ``None``."""
    return _cpu_ext.load() if resolve(name) == "cpp" else None


# ---------------------------------------------------------------------------- deprecated
def _deprecated(what: str) -> None:
    warnings.warn(f"brainsparse.kernels.{what} is deprecated: pass backend='auto'|'cpp'|'torch' to "
                  "SparseLinear, sparse_linear and the CH scorers instead", DeprecationWarning, stacklevel=3)


def set_backend(name: str | None = None) -> str:
    """Deprecated: set what ``backend="auto"`` means in this process; returns :func:`backend`.

    ``None`` re-reads ``$BRAINSPARSE_KERNEL_BACKEND``. Pass ``backend=`` to the layer, the
    function or the scorer instead.
    """
    _deprecated("set_backend()")
    return _set_default(name)


def _set_default(name: str | None) -> str:
    global _default
    _default = _env_default() if name is None else check_backend(name)
    return resolve("auto")


def backend() -> str:
    """The implementation ``backend="auto"`` runs on for CPU float tensors: ``"cpp"`` or ``"torch"``."""
    return resolve("auto")


def use_backend(name: str) -> contextlib.AbstractContextManager[str]:
    """Deprecated: temporarily set what ``backend="auto"`` means (pass ``backend=`` instead);
    ``with use_backend("torch") as active: ...``."""
    _deprecated("use_backend()")
    return _temporary_default(name)


@contextlib.contextmanager
def _temporary_default(name: str) -> Iterator[str]:
    previous = _default
    try:
        yield _set_default(name)
    finally:
        _set_default(previous)
