"""The passes of the sparse linear layer on plain tensors, for the ``"cpp"`` and ``"torch"`` backends.

``y = x Wᵀ + b`` with ``W`` of shape ``(out, in)`` stored as ``values`` at the links of a
:class:`~brainsparse.kernels.LinkStructure`, given here as its index tensors (``crow``,
``cols``, ``rows`` in CSR order; ``t_perm``, ``t_rows``, ``ccol`` the CSC view). ``x`` is 2-D
``(N, in)``; every function allocates its results (nothing is written in place, nothing returned
aliases an input), so the registered operators of :mod:`.ops` and the eager autograd function of
:mod:`.sparse_linear` both call them.

* ``"cpp"`` (CPU, float32/float64): the compiled kernel of :mod:`._cpu_ext`, one call per
  pass, a few µs of overhead per call. The forward pass also returns ``xT``: ``x`` transposed
  into the kernel's panel layout (an ``(in, N)`` tensor, blocks of 32 floats / 16 doubles of the
  batch; the plain transpose when the batch fits one block), which the backward passes read
  instead of ``x``.
* ``"torch"`` (any device, any float dtype): PyTorch CSR kernels — ``torch.sparse.mm`` for the
  forward and input gradient, ``torch.sparse.sampled_addmm`` for the link gradients (cuSPARSE
  on GPU). Half-precision inputs use a gather/``index_add`` formulation instead. The backward
  passes read ``x`` itself.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from . import _cpu_ext

#: dtypes of the compiled kernel and of PyTorch's CSR kernels
CSR_DTYPES = (torch.float32, torch.float64)
_GATHER_CHUNK = 1 << 22  # elements of the (samples × links) intermediate per chunk
_csr_warned = False


def _kernels() -> _cpu_ext.CpuKernels:
    kernels = _cpu_ext.load()
    if kernels is None:  # the caller resolved the backend to "cpp": the kernel was available
        raise RuntimeError(f"the C++ kernel is unavailable: {_cpu_ext.error()}")
    return kernels


# ---------------------------------------------------------------------------- torch backend
def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    global _csr_warned
    if not _csr_warned:  # PyTorch warns once that CSR is "beta"; keep that out of users' logs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
        _csr_warned = True
        return t
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _chunks(n: int, k: int) -> Iterator[slice]:
    """Slices of the batch so that a (rows × links) intermediate stays below ``_GATHER_CHUNK``."""
    step = max(1, _GATHER_CHUNK // max(k, 1))
    for a in range(0, n, step):
        yield slice(a, min(a + step, n))


def _torch_forward(x: Tensor, values: Tensor, bias: Tensor | None, crow: Tensor, cols: Tensor,
                   rows: Tensor) -> Tensor:
    n, out_f, in_f, nnz = x.shape[0], crow.numel() - 1, x.shape[1], cols.numel()
    if nnz == 0 or n == 0:
        y = x.new_zeros((n, out_f))
    elif values.dtype in CSR_DTYPES:
        y = torch.sparse.mm(_csr(crow, cols, values, (out_f, in_f)), x.t()).t()
    else:  # half precision: gather / index_add
        y = x.new_zeros((n, out_f))
        for c in _chunks(n, nnz):
            y[c].index_add_(1, rows, x[c][:, cols] * values)
    return y + bias if bias is not None else y.contiguous()


def _torch_grad_x(gy: Tensor, values: Tensor, t_perm: Tensor, t_rows: Tensor, ccol: Tensor, cols: Tensor,
                  rows: Tensor) -> Tensor:
    n, out_f, in_f, nnz = gy.shape[0], gy.shape[1], ccol.numel() - 1, values.numel()
    if nnz == 0 or n == 0:
        return gy.new_zeros((n, in_f))
    if values.dtype in CSR_DTYPES:
        wt = _csr(ccol, t_rows, values[t_perm], (in_f, out_f))
        return torch.sparse.mm(wt, gy.t()).t()
    gx = gy.new_zeros((n, in_f))
    for c in _chunks(n, nnz):
        gx[c].index_add_(1, cols, gy[c][:, rows] * values)
    return gx


def _torch_grad_values(gy: Tensor, x: Tensor, crow: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
    n, nnz = gy.shape[0], cols.numel()
    if nnz == 0 or n == 0:
        return gy.new_zeros(nnz)
    if gy.dtype in CSR_DTYPES:
        pattern = _csr(crow, cols, gy.new_zeros(nnz), (gy.shape[1], x.shape[1]))
        return torch.sparse.sampled_addmm(pattern, gy.t(), x, beta=0.0).values()
    gv = torch.zeros(nnz, dtype=torch.float32, device=gy.device)  # accumulate half in float32
    for c in _chunks(n, nnz):
        gv += (gy[c][:, rows].float() * x[c][:, cols].float()).sum(0)
    return gv.to(gy.dtype)


# ---------------------------------------------------------------------------- both backends
#: per thread: the ``xT`` scratch of forward passes whose ``xT`` nothing keeps (inference)
_scratch = threading.local()
#: the largest ``xT`` scratch kept between calls (bytes); larger ones are allocated per call
SCRATCH_MAX_BYTES = 16 << 20


def _xt_scratch(numel: int, dtype: torch.dtype) -> Tensor:
    """A reusable CPU buffer of ``numel`` elements for ``xT`` (kept per thread and dtype)."""
    kept = getattr(_scratch, "buffers", None)
    if kept is None:
        kept = _scratch.buffers = {}
    buf = kept.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype)
        if numel * buf.element_size() <= SCRATCH_MAX_BYTES:
            kept[dtype] = buf
    return buf[:numel]


def forward(x: Tensor, values: Tensor, bias: Tensor | None, crow: Tensor, cols: Tensor, rows: Tensor,
            backend: str, keep_xt: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(y, xT)``: ``y = x Wᵀ + b`` ``(N, out)``; ``xT`` ``(in, N)`` on ``"cpp"``, else ``None``.

    ``keep_xt=False`` (no backward pass will read ``xT``): the ``"cpp"`` kernel transposes into a
    per-thread scratch buffer instead of a new tensor, and ``xT`` comes back as ``None``."""
    if backend != "cpp":
        return _torch_forward(x, values, bias, crow, cols, rows), None
    n, in_f, out_f = x.shape[0], x.shape[1], crow.numel() - 1
    x = x.contiguous()
    values = values.contiguous()
    b = bias.contiguous() if bias is not None else None  # keep alive during the call
    xt = x.new_empty((in_f, n)) if keep_xt else _xt_scratch(in_f * n, x.dtype)
    y = x.new_empty((n, out_f))
    _kernels().forward[x.dtype](
        n, in_f, out_f, x.data_ptr(), crow.data_ptr(), cols.data_ptr(), values.data_ptr(),
        None if b is None else b.data_ptr(), xt.data_ptr(), y.data_ptr(),
    )
    return y, xt if keep_xt else None


def _cpp_backward(gy: Tensor, xt: Tensor | None, values: Tensor, crow: Tensor, cols: Tensor, t_perm: Tensor,
                  t_rows: Tensor, ccol: Tensor, in_f: int, need_x: bool, need_values: bool,
                  need_bias: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    n, out_f = gy.shape[0], gy.shape[1]
    gy = gy.contiguous()
    gx = gy.new_empty((n, in_f)) if need_x else None
    gv = gy.new_empty(cols.numel()) if need_values else None
    gb = gy.new_empty(out_f) if need_bias else None
    if gx is not None or gv is not None or gb is not None:
        _kernels().backward[gy.dtype](
            n, in_f, out_f, gy.data_ptr(), None if xt is None else xt.data_ptr(), crow.data_ptr(),
            cols.data_ptr(), t_perm.data_ptr(), t_rows.data_ptr(), ccol.data_ptr(), values.data_ptr(),
            None if gx is None else gx.data_ptr(), None if gv is None else gv.data_ptr(),
            None if gb is None else gb.data_ptr(),
        )
    return gx, gv, gb


def backward(gy: Tensor, saved: Tensor, values: Tensor, crow: Tensor, cols: Tensor, rows: Tensor,
             t_perm: Tensor, t_rows: Tensor, ccol: Tensor, need_x: bool, need_values: bool, need_bias: bool,
             backend: str) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(grad_x, grad_values, grad_bias)``, each ``None`` unless asked for.

    ``saved`` is what the forward pass kept: ``xT`` on ``"cpp"``, ``x`` on ``"torch"``. On
    ``"cpp"`` the three products come from one kernel call (``grad_y`` transposed once, one
    panel at a time).
    """
    if backend == "cpp":
        return _cpp_backward(gy, saved, values, crow, cols, t_perm, t_rows, ccol, ccol.numel() - 1,
                             need_x, need_values, need_bias)
    return (grad_x(gy, values, crow, cols, rows, t_perm, t_rows, ccol, backend) if need_x else None,
            *grad_values(gy, saved, crow, cols, rows, need_values, need_bias, backend))


def grad_x(gy: Tensor, values: Tensor, crow: Tensor, cols: Tensor, rows: Tensor, t_perm: Tensor,
           t_rows: Tensor, ccol: Tensor, backend: str) -> Tensor:
    """The input gradient ``grad_y · W``, ``(N, in)``."""
    if backend == "cpp":
        gx, _, _ = _cpp_backward(gy, None, values, crow, cols, t_perm, t_rows, ccol, ccol.numel() - 1,
                                 True, False, False)
        return gx  # type: ignore[return-value]
    with torch.autocast(gy.device.type, enabled=False):
        return _torch_grad_x(gy, values, t_perm, t_rows, ccol, cols, rows)


def grad_values(gy: Tensor, saved: Tensor, crow: Tensor, cols: Tensor, rows: Tensor,
                need_values: bool, need_bias: bool, backend: str) -> tuple[Tensor | None, Tensor | None]:
    """``(grad_values, grad_bias)``, each ``None`` unless asked for; ``saved`` as in :func:`backward`."""
    if backend == "cpp":
        # only grad_y, xT, crow and cols are read: the values and the CSC view are not touched
        _, gv, gb = _cpp_backward(gy, saved, gy, crow, cols, cols, cols, crow, saved.shape[0],
                                  False, need_values, need_bias)
        return gv, gb
    gv = gb = None
    with torch.autocast(gy.device.type, enabled=False):
        if need_values:
            gv = _torch_grad_values(gy, saved, crow, cols, rows)
        if need_bias:
            gb = gy.sum(0)
    return gv, gb
