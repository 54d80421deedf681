"""``sparse_linear``: ``y = x Wᵀ + b`` with ``W`` stored as links only, differentiable.

Forward, gradient w.r.t. the input and gradient w.r.t. the existing links (``grad_values[k] =
Σ_n grad_y[n, rows[k]] · x[n, cols[k]]``) — a dense ``(out, in)`` weight or weight gradient is
never formed. The implementation is chosen per call by ``backend=`` (see :mod:`.backend`): the
compiled C++ kernel (``"cpp"``, CPU float32/float64) or PyTorch CSR kernels (``"torch"``, any
device; the passes are in :mod:`.passes`).

Two routes to the same kernels, with the same results bit for bit:

* eager (the default): an :class:`torch.autograd.Function` that calls the kernels directly, one
  kernel call per pass (the backward products share one call on ``"cpp"``);
* traced (under ``torch.compile``, or with ``use_ops=True``): the registered operators of
  :mod:`.ops` (``torch.ops.brainsparse.sparse_linear_forward`` with a registered autograd
  formula), which ``torch.compile`` keeps as opaque calls. The eager route stays the default
  because a custom operator costs more Python dispatch per call (measured in
  ``docs/architecture.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import BrainsparseError
from . import ops, passes
from .backend import resolve
from .structure import LinkStructure

__all__ = ["sparse_linear", "sparse_linear_indices"]


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` for 2-D ``x``; gradients for x, the link values and the bias (eager route)."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, index: tuple[Tensor, ...],
                backend: str, keep_xt: bool = True) -> Tensor:
        crow, cols, rows = index[:3]
        y, xt = passes.forward(x, values, bias, crow, cols, rows, backend, keep_xt=keep_xt)
        ctx.index = index
        ctx.backend = backend
        ctx.has_bias = bias is not None
        ctx.save_for_backward(xt if xt is not None else x, values)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor):
        saved, values = ctx.saved_tensors
        crow, cols, rows, t_perm, t_rows, ccol = ctx.index
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        gx, gv, gb = passes.backward(gy, saved, values, crow, cols, rows, t_perm, t_rows, ccol,
                                     need_x, need_v, need_b and ctx.has_bias, ctx.backend)
        return gx, gv, gb, None, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype when autocast is on for this device type, else ``None``."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except (TypeError, AttributeError):  # torch < 2.4
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def _apply(x2: Tensor, values: Tensor, bias: Tensor | None, index: tuple[Tensor, ...], impl: str,
           use_ops: bool) -> Tensor:
    if use_ops:
        crow, cols, rows, t_perm, t_rows, ccol = index
        return ops.sparse_linear_forward(x2, values, bias, crow, cols, rows, t_perm, t_rows, ccol, impl)[0]
    # xT is read only by a backward pass: without one (inference) the kernel uses a scratch
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x2, values, bias))
    return _SparseLinearFunction.apply(x2, values, bias, index, impl, grads)


def sparse_linear_indices(
    x: Tensor,
    values: Tensor,
    bias: Tensor | None,
    crow: Tensor,
    cols: Tensor,
    rows: Tensor,
    t_perm: Tensor,
    t_rows: Tensor,
    ccol: Tensor,
    *,
    backend: str = "auto",
    use_ops: bool | None = None,
) -> Tensor:
    """:func:`sparse_linear` on the index tensors of a :class:`LinkStructure` (no Python object:
    what :class:`~brainsparse.kernels.SparseLinear` calls, also under ``torch.compile``).

    ``use_ops``: call the registered operators (:mod:`.ops`) instead of the eager autograd
    function; ``None`` (default) — only while ``torch.compile`` traces.
    """
    out_f, in_f, nnz = crow.shape[0] - 1, ccol.shape[0] - 1, cols.shape[0]
    if x.shape[-1] != in_f:
        raise BrainsparseError(f"input has {x.shape[-1]} features, the sparse layer expects {in_f}")
    if values.shape != (nnz,):
        raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {nnz} links")
    autocast = _autocast_dtype(x.device.type)
    if autocast is not None:  # mixed precision: compute in the autocast dtype, like nn.Linear
        x, values = x.to(autocast), values.to(autocast)
        bias = bias.to(autocast) if bias is not None else None
    if x.dtype != values.dtype or (bias is not None and bias.dtype != values.dtype):
        raise BrainsparseError(
            f"dtype mismatch: input {x.dtype}, values {values.dtype}"
            + (f", bias {bias.dtype}" if bias is not None else "")
        )
    if rows.device != values.device:
        raise BrainsparseError(f"structure on {rows.device}, values on {values.device}")
    if use_ops is None:
        use_ops = torch.compiler.is_compiling()
    impl = resolve(backend, x.device.type, x.dtype)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)
    index = (crow, cols, rows, t_perm, t_rows, ccol)
    if autocast is not None:
        with torch.autocast(x.device.type, enabled=False):
            y = _apply(x2, values, bias, index, impl, use_ops)
    else:
        y = _apply(x2, values, bias, index, impl, use_ops)
    return y.reshape(*lead, out_f) if len(lead) != 1 else y


def sparse_linear(x: Tensor, values: Tensor, structure: LinkStructure, bias: Tensor | None = None, *,
                  backend: str = "auto", use_ops: bool | None = None) -> Tensor:
    """``y = x Wᵀ + b`` where ``W`` has ``values`` at the links of ``structure``.

    ``x`` is ``(..., in)``; the result is ``(..., out)``. Differentiable w.r.t. ``x``, ``values``
    (gradient only at the ``K`` links) and ``bias``. ``backend``: ``"auto"`` (default: the
    compiled kernel on CPU when it builds), ``"cpp"`` or ``"torch"`` (see :mod:`.backend`);
    ``use_ops`` as in :func:`sparse_linear_indices`.
    """
    s = structure
    return sparse_linear_indices(x, values, bias, s.crow, s.cols, s.rows, s.t_perm, s.t_rows, s.ccol,
                                 backend=backend, use_ops=use_ops)
