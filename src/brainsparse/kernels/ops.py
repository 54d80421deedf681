"""The sparse kernels as registered PyTorch operators (``torch.ops.brainsparse.*``).

Registered with :func:`torch.library.custom_op`, each with a fake (meta) kernel for tracing and,
for the layer's forward pass, a registered autograd formula, so ``torch.compile`` (Dynamo, AOT
autograd, Inductor) treats them as opaque calls of known output shapes:

* ``brainsparse::sparse_linear_forward(x, values, bias, crow, cols, rows, t_perm, t_rows, ccol,
  backend) -> (y, saved)``: ``y = x Wᵀ + b`` for 2-D ``x``; ``saved`` is what the backward pass
  reads (``x`` transposed into the kernel's panel layout, ``(in, N)``, on ``"cpp"``; an empty
  tensor on ``"torch"``, which reads ``x``). Differentiable w.r.t. ``x``, ``values`` and ``bias``;
* ``brainsparse::sparse_linear_grad_x(grad_y, values, crow, cols, rows, t_perm, t_rows, ccol,
  backend) -> grad_x``;
* ``brainsparse::sparse_linear_grad_values(grad_y, saved, crow, cols, rows, with_bias, backend)
  -> (grad_values, grad_bias)`` (``grad_bias`` empty without a bias);
* ``brainsparse::ch_l3_compiled(mask, variant, matrix) -> scores``: the compiled Cannistraci–Hebb
  L3 scorers (exact path form or fused matrix form), float32 ``(out, in)``.

``backend`` is ``"cpp"`` or ``"torch"``, already resolved (see :func:`.backend.resolve`). The
operators compute exactly what the eager path computes (same kernels, see :mod:`.passes`); the
only difference is that the two backward products are two kernel calls instead of one on
``"cpp"`` (``grad_y`` is transposed twice).
"""

from typing import Any

import torch
from torch import Tensor

from . import _cpu_ext, passes

__all__ = ["ch_l3_compiled", "sparse_linear_forward", "sparse_linear_grad_values", "sparse_linear_grad_x"]


# ---------------------------------------------------------------------------- forward
@torch.library.custom_op("brainsparse::sparse_linear_forward", mutates_args=())
def sparse_linear_forward(x: Tensor, values: Tensor, bias: Tensor | None, crow: Tensor, cols: Tensor,
                          rows: Tensor, t_perm: Tensor, t_rows: Tensor, ccol: Tensor,
                          backend: str) -> tuple[Tensor, Tensor]:
    """``(y, saved)`` of the sparse linear layer (see the module docstring)."""
    y, xt = passes.forward(x, values, bias, crow, cols, rows, backend)
    # row-major like the fake kernel (PyTorch's CSR product with a bias gives a column-major y;
    # same values, and the next sparse layer computes the same either way)
    return y.contiguous(), (xt if xt is not None else x.new_empty((0,)))


@sparse_linear_forward.register_fake
def _fake_forward(x: Tensor, values: Tensor, bias: Tensor | None, crow: Tensor, cols: Tensor, rows: Tensor,
                  t_perm: Tensor, t_rows: Tensor, ccol: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    n, in_f, out_f = x.shape[0], x.shape[1], crow.shape[0] - 1
    saved = x.new_empty((in_f, n)) if backend == "cpp" else x.new_empty((0,))
    return x.new_empty((n, out_f)), saved


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, values, bias, crow, cols, rows, t_perm, t_rows, ccol, backend = inputs
    saved = output[1] if backend == "cpp" else x
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(saved, values, crow, cols, rows, t_perm, t_rows, ccol)
    ctx.backend = backend
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad_y: Tensor, _grad_saved: Tensor | None) -> tuple[Tensor | None, ...]:
    saved, values, crow, cols, rows, t_perm, t_rows, ccol = ctx.saved_tensors
    need_x, need_v, need_b = ctx.needs_input_grad[:3]
    gx = gv = gb = None
    if need_x:
        gx = sparse_linear_grad_x(grad_y, values, crow, cols, rows, t_perm, t_rows, ccol, ctx.backend)
    if need_v or (need_b and ctx.has_bias):
        gv, gb = sparse_linear_grad_values(grad_y, saved, crow, cols, rows, ctx.has_bias, ctx.backend)
        gv = gv if need_v else None
        gb = gb if need_b and ctx.has_bias else None
    return gx, gv, gb, None, None, None, None, None, None, None


sparse_linear_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- backward products
@torch.library.custom_op("brainsparse::sparse_linear_grad_x", mutates_args=())
def sparse_linear_grad_x(grad_y: Tensor, values: Tensor, crow: Tensor, cols: Tensor, rows: Tensor,
                         t_perm: Tensor, t_rows: Tensor, ccol: Tensor, backend: str) -> Tensor:
    """The input gradient ``grad_y · W``, ``(N, in)``."""
    return passes.grad_x(grad_y, values, crow, cols, rows, t_perm, t_rows, ccol, backend).contiguous()


@sparse_linear_grad_x.register_fake
def _fake_grad_x(grad_y: Tensor, values: Tensor, crow: Tensor, cols: Tensor, rows: Tensor, t_perm: Tensor,
                 t_rows: Tensor, ccol: Tensor, backend: str) -> Tensor:
    return grad_y.new_empty((grad_y.shape[0], ccol.shape[0] - 1))


@torch.library.custom_op("brainsparse::sparse_linear_grad_values", mutates_args=())
def sparse_linear_grad_values(grad_y: Tensor, saved: Tensor, crow: Tensor, cols: Tensor, rows: Tensor,
                              with_bias: bool, backend: str) -> tuple[Tensor, Tensor]:
    """``(grad_values, grad_bias)``: the link gradients ``(K,)`` and, with a bias, its gradient
    ``(out,)`` (else an empty tensor); ``saved`` is the forward pass's (``xT`` or ``x``)."""
    gv, gb = passes.grad_values(grad_y, saved, crow, cols, rows, True, with_bias, backend)
    return gv, (gb if gb is not None else grad_y.new_empty((0,)))  # type: ignore[return-value]


@sparse_linear_grad_values.register_fake
def _fake_grad_values(grad_y: Tensor, saved: Tensor, crow: Tensor, cols: Tensor, rows: Tensor, with_bias: bool,
                      backend: str) -> tuple[Tensor, Tensor]:
    gb = grad_y.new_empty((grad_y.shape[1],)) if with_bias else grad_y.new_empty((0,))
    return grad_y.new_empty((cols.shape[0],)), gb


# ---------------------------------------------------------------------------- CH scorers
@torch.library.custom_op("brainsparse::ch_l3_compiled", mutates_args=())
def ch_l3_compiled(mask: Tensor, variant: str, matrix: bool) -> Tensor:
    """Compiled CH L3 scores of a 2-D bool CPU ``mask`` (canonical ``variant``: CH3, CH2, CH3.1),
    float32 ``(out, in)``, zero at existing links."""
    kernels = _cpu_ext.load()
    if kernels is None:
        raise RuntimeError(f"the C++ kernel is unavailable: {_cpu_ext.error()}")
    return kernels.ch_l3(mask, variant, matrix)


@ch_l3_compiled.register_fake
def _fake_ch_l3(mask: Tensor, variant: str, matrix: bool) -> Tensor:
    return mask.new_empty(mask.shape, dtype=torch.float32)
