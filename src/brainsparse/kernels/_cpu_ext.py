"""The compiled CPU kernels (``csrc/sparse_kernels.cpp``), loaded with ctypes on first use.

The shared object holds the sparse linear layer's passes (``bs_forward_*``, ``bs_backward_*``)
and the Cannistraci–Hebb L3 scorers (``bs_ch_l3``: the exact path form and the fused matrix
form, see :meth:`CpuKernels.ch_l3` and :mod:`brainsparse.scoring.cannistraci_hebb`), which work
one output row at a time from the mask's neighbour lists.

Why this shape
--------------
At the sizes of the papers' MLP (1568×1568 at 1 % density, batch 32) one sparse product is only
~25 k links × 32 samples; the work takes tens of microseconds, so the per-call overhead decides
the speed. PyTorch's CSR kernels cost ~0.2 ms per call however small the product. This kernel
is one plain C++ function per pass (forward; backward = input gradient + link gradients + bias
gradient), called through ``ctypes`` with raw pointers: a few µs per call. On the project
machine (1 thread) a 1568×1568 layer at 1 % density, batch 32, takes ~0.07 ms forward and
~0.14 ms backward (kernel time), against ~1.3 ms for PyTorch CSR and ~13 ms for the
dense-masked layer.
How it is built and cached: :mod:`._build`. The data layout: the comment at the top of the
source.

Any failure (no compiler, compile error, load error, self-test mismatch) leaves :func:`load`
returning ``None``; callers then use the pure-PyTorch implementation. The self-test checks the
layer passes against a dense float64 computation; the CH scorers are checked against their
PyTorch forms by :mod:`brainsparse.scoring` before it first uses them (this module imports
nothing from the scoring package).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from pathlib import Path

import torch

from . import _build
from ._build import PARALLEL_MIN, SOURCE_VERSION

__all__ = ["CH_VARIANT_CODES", "PARALLEL_MIN", "SOURCE_VERSION", "CpuKernels", "error", "load"]

log = logging.getLogger(__name__)

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_FWD_ARGS = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
_BWD_ARGS = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]

#: Codes of the CH variants in the C++ scorer (``bs_ch_l3``).
CH_VARIANT_CODES = {"CH3": 0, "CH2": 1, "CH3.1": 2}

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib" -> CpuKernels | None once tried, "error" -> str


class CpuKernels:
    """The loaded shared object, with typed entry points per dtype."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        self.forward = {}
        self.backward = {}
        self.chain_forward = {}  # a run of sparse layers + ReLU in one call (kernels/chain.py)
        self.chain_backward = {}
        for suffix, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            fwd = getattr(lib, f"bs_forward_{suffix}")
            fwd.argtypes, fwd.restype = _FWD_ARGS, None
            bwd = getattr(lib, f"bs_backward_{suffix}")
            bwd.argtypes, bwd.restype = _BWD_ARGS, None
            self.forward[dtype] = fwd
            self.backward[dtype] = bwd
            chain_fwd = getattr(lib, f"bs_chain_forward_{suffix}")
            chain_fwd.argtypes, chain_fwd.restype = [_I64, _I64] + [_PTR] * 9, None
            chain_bwd = getattr(lib, f"bs_chain_backward_{suffix}")
            chain_bwd.argtypes, chain_bwd.restype = [_I64, _I64] + [_PTR] * 13, None
            self.chain_forward[dtype] = chain_fwd
            self.chain_backward[dtype] = chain_bwd
        lib.bs_ch_l3.argtypes, lib.bs_ch_l3.restype = [_I64, _I64, _PTR, ctypes.c_int, ctypes.c_int, _PTR], ctypes.c_int
        lib.bs_max_threads.restype = ctypes.c_int
        lib.bs_set_parallel_min.argtypes, lib.bs_set_parallel_min.restype = [_I64], None
        self.openmp = lib.bs_max_threads() > 0
        env = os.environ.get("BRAINSPARSE_KERNEL_PARALLEL_MIN")
        if env:
            try:
                self.set_parallel_min(int(env))
            except ValueError:
                log.debug("ignoring BRAINSPARSE_KERNEL_PARALLEL_MIN=%r (not an integer)", env)

    def ch_l3(self, mask: torch.Tensor, variant: str, matrix: bool) -> torch.Tensor:
        """Cannistraci–Hebb L3 scores of a CPU bool mask ``(out, in)``: the exact path form
        (``matrix=False``) or the fused matrix form; float32, zero at existing links.

        ``variant`` is a canonical name of :data:`CH_VARIANT_CODES`. The mask is read as bytes,
        the graph is built and scored in C++ (see ``ch_exact`` / ``ch_matrix`` in the source).
        """
        m = mask.contiguous()
        if m.dtype != torch.bool or m.dim() != 2 or m.device.type != "cpu":
            raise ValueError("ch_l3 needs a 2-D bool CPU tensor")
        n_out, n_in = m.shape
        out = torch.empty(n_out, n_in, dtype=torch.float32)
        if out.numel() == 0:
            return out
        status = self.lib.bs_ch_l3(n_out, n_in, m.data_ptr(), CH_VARIANT_CODES[variant], int(bool(matrix)),
                                   out.data_ptr())
        if status != 0:
            raise MemoryError(f"the C++ CH scorer failed (status {status}) on a {n_out}x{n_in} mask")
        return out

    def set_parallel_min(self, work: int) -> None:
        """Run a pass multi-threaded only from this many multiply-adds (links × samples) on."""
        self.lib.bs_set_parallel_min(max(0, int(work)))


def _self_test(kernels: CpuKernels) -> bool:
    """Compare with a dense computation on a tiny layer (guards against a miscompiled build).

    :func:`load` may first be called anywhere — under autocast, in inference mode — so the
    reference is computed in float64 with autocast and autograd off.
    """
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return _self_test_checks(kernels)


def _self_test_checks(kernels: CpuKernels) -> bool:
    from .structure import LinkStructure

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        mask = torch.rand(37, 21, generator=gen) < 0.3
        s = LinkStructure.from_mask(mask)
        v = torch.randn(s.nnz, generator=gen, dtype=dtype)
        x = torch.randn(45, 21, generator=gen, dtype=dtype)
        b = torch.randn(37, generator=gen, dtype=dtype)
        gy = torch.randn(45, 37, generator=gen, dtype=dtype)
        xT = torch.empty(21, 45, dtype=dtype)
        y = torch.empty(45, 37, dtype=dtype)
        gx = torch.empty(45, 21, dtype=dtype)
        gv = torch.empty(s.nnz, dtype=dtype)
        gb = torch.empty(37, dtype=dtype)
        kernels.forward[dtype](45, 21, 37, x.data_ptr(), s.crow.data_ptr(), s.cols.data_ptr(),
                               v.data_ptr(), b.data_ptr(), xT.data_ptr(), y.data_ptr())
        kernels.backward[dtype](45, 21, 37, gy.data_ptr(), xT.data_ptr(), s.crow.data_ptr(),
                                s.cols.data_ptr(), s.t_perm.data_ptr(), s.t_rows.data_ptr(),
                                s.ccol.data_ptr(), v.data_ptr(), gx.data_ptr(), gv.data_ptr(), gb.data_ptr())
        x, v, b, gy = (t.double() for t in (x, v, b, gy))
        w = s.to_dense(v)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        checks = (
            (y.double(), x @ w.T + b),
            (gx.double(), gy @ w),
            (gv.double(), s.gather(gy.T @ x)),
            (gb.double(), gy.sum(0)),
        )
        for name, (got, expected) in zip(("y", "grad_x", "grad_values", "grad_bias"), checks):
            if not torch.allclose(got, expected, rtol=tol, atol=tol):
                log.debug("brainsparse kernel self-test: %s %s differs by %s", dtype, name,
                          (got - expected).abs().max().item())
                return False
    return True


def load() -> CpuKernels | None:
    """The compiled kernels, building them on first use; ``None`` when unavailable."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load_or_build()
            except Exception as exc:  # noqa: BLE001 - a kernel problem must never break the library
                log.debug("brainsparse C++ kernels unavailable: %s", exc)
                _state["error"] = repr(exc)
                _state["lib"] = None
    return _state["lib"]  # type: ignore[return-value]


def _load_or_build() -> CpuKernels | None:
    if sys.platform.startswith("win"):
        _state["error"] = "the C++ kernel is not built on Windows"
        return None
    cxx = _build.compiler()
    if cxx is None:
        _state["error"] = "no C++ compiler found (set CXX)"
        return None
    directory = _build.cache_dir()
    text = _build.source()
    # a compiler that cannot build the source is remembered (per source, compiler and machine)
    # so that every new process does not retry; delete the marker file to try again
    failed = directory / f"failed_{_build.key(text, cxx, [])}.txt"
    if failed.exists():
        _state["error"] = f"an earlier build failed ({failed}); delete it to retry"
        return None
    reasons: list[str] = []
    targets = [(flags, directory / f"bs_kernels_{_build.key(text, cxx, flags)}.so")
               for flags in _build.flag_sets()]
    for _, target in targets:  # first whatever an earlier process built, fastest flags first
        if target.exists():
            kernels = _try_load(target, reasons)
            if kernels is not None:
                return kernels
    for flags, target in targets:
        problem = _build.build(text, cxx, flags, target)
        if problem:
            reasons.append(f"{' '.join(flags)}: {problem}")
            continue
        kernels = _try_load(target, reasons)
        if kernels is not None:
            return kernels
    _state["error"] = "the C++ kernel failed to build or load: " + " | ".join(reasons)[-2000:]
    log.debug("brainsparse: %s", _state["error"])
    if len(reasons) == len(targets) and all(r.startswith("-") for r in reasons):
        # every flag set failed to compile: the compiler cannot build it, remember that
        try:
            directory.mkdir(parents=True, exist_ok=True)
            failed.write_text("\n".join(reasons), encoding="utf-8")
        except OSError:
            pass
    return None


def _try_load(target: Path, reasons: list[str]) -> CpuKernels | None:
    try:
        kernels = CpuKernels(ctypes.CDLL(str(target)), target)
    except (OSError, AttributeError) as exc:
        reasons.append(f"{target} failed to load: {exc}")
        return None
    if _self_test(kernels):
        return kernels
    reasons.append(f"{target} failed its self-test")
    return None


def error() -> str | None:
    """Why the kernels are unavailable, after :func:`load` returned ``None``."""
    return _state.get("error")  # type: ignore[return-value]
