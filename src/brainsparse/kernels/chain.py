"""Chains of sparse layers and ReLUs as one autograd node (the eager CPU fast path).

At the papers' MLP sizes (1568 neurons at 1 % density, batch 32) one sparse product takes tens
of microseconds, and the Python around it — a module call, argument checks, an autograd node
per layer and per ReLU, tensor-to-pointer conversions — cost as much again. A run of
``SparseLinear`` (+ ``ReLU``) modules inside an ``nn.Sequential`` therefore runs as one
:class:`torch.autograd.Function` whose forward and backward are one call each into the compiled
kernel (``bs_chain_forward_*`` / ``bs_chain_backward_*``): activations stay in the kernels' panel
layout between the layers and the ReLU happens inside. Every element is summed as in the
single-layer passes, so outputs and gradients equal the layer-by-layer path bit for bit (tested).

:func:`sequential_forward` takes the fast path only where it changes nothing a user can see: CPU
tensors on the ``"cpp"`` backend, float32/float64, autograd on, no autocast, not under
``torch.compile``, and no active forward hooks on the modules involved (user hooks; the engine's
gradient and activation recorders count only on the batch before an update, see
:func:`idle_when`); everything else runs module by module as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _cpu_ext
from .backend import resolve
from .layer import SparseLinear

__all__ = ["chain_eligible", "idle_when", "sequential_forward", "sparse_relu_chain"]

#: Attribute of a forward hook: a predicate ``(module) -> bool`` that is true while the hook would
#: do nothing (the engine's recorders, which act only on the batch before a topology update).
IDLE = "brainsparse_idle"


def idle_when(hook: Any, predicate: Any) -> Any:
    """Mark a forward hook as doing nothing while ``predicate(module)`` holds, so that a fused
    chain may skip it then; returns the hook."""
    setattr(hook, IDLE, predicate)
    return hook


class _Link:
    """What the kernels need of one layer, read once per forward."""

    __slots__ = ("in_f", "out_f", "relu", "ptrs", "nnz")

    def __init__(self, layer: SparseLinear, relu: bool) -> None:
        self.in_f, self.out_f, self.relu = layer.in_features, layer.out_features, relu
        self.ptrs = layer.kernel_pointers()  # crow, cols, t_perm, t_rows, ccol
        self.nnz = layer.nnz


def _pointer_table(groups: list[list[int]]) -> tuple[Any, list[int]]:
    """One ctypes int64 array holding ``groups`` back to back, and the address of each group."""
    flat = [p for g in groups for p in g]
    table = (ctypes.c_int64 * max(1, len(flat)))(*flat)
    base, addresses, offset = ctypes.addressof(table), [], 0
    for g in groups:
        addresses.append(base + 8 * offset)
        offset += len(g)
    return table, addresses


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _SparseReluChain(torch.autograd.Function):
    """``x → [relu](x W₀ᵀ + b₀) → …`` for a list of layers; gradients for x, values and biases.

    Activations stay in the kernels' panel layout between the layers (``acts``, saved for the
    backward pass: layer ``l`` reads ``acts[l]``; ``acts[l + 1] > 0`` is its ReLU's mask).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, links: list[_Link], kernels: _cpu_ext.CpuKernels,
                *params: Tensor | None) -> Tensor:
        n = x.shape[0]
        x = x.contiguous()
        dims = [links[0].in_f] + [link.out_f for link in links]
        acts = [x.new_empty((d, n)) for d in dims]
        y = x.new_empty((n, dims[-1]))
        values, biases = params[0::2], params[1::2]
        table, (a_dims, a_crow, a_cols, a_vals, a_bias, a_acts) = _pointer_table([
            dims, [lk.ptrs[0] for lk in links], [lk.ptrs[1] for lk in links], [_ptr(v) for v in values],
            [_ptr(b) for b in biases], [a.data_ptr() for a in acts],
        ])
        relu = bytes(int(lk.relu) for lk in links)
        kernels.chain_forward[x.dtype](len(links), n, a_dims, a_crow, a_cols, a_vals, a_bias, relu, x.data_ptr(),
                                       a_acts, y.data_ptr())
        del table
        ctx.links, ctx.kernels, ctx.dims = links, kernels, dims
        ctx.save_for_backward(*acts, *values)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        links, dims = ctx.links, ctx.dims
        n_layers = len(links)
        saved = ctx.saved_tensors
        acts, values = saved[: n_layers + 1], saved[n_layers + 1:]
        needs = ctx.needs_input_grad
        g = grad.contiguous()
        n = g.shape[0]
        gx = g.new_empty((n, dims[0])) if needs[0] else None
        gv = [g.new_empty(lk.nnz) if needs[3 + 2 * i] else None for i, lk in enumerate(links)]
        gb = [g.new_empty(lk.out_f) if needs[4 + 2 * i] else None for i, lk in enumerate(links)]
        table, (a_dims, *a) = _pointer_table([
            dims, *([lk.ptrs[j] for lk in links] for j in range(5)), [v.data_ptr() for v in values],
            [t.data_ptr() for t in acts], [_ptr(t) for t in gv], [_ptr(t) for t in gb],
        ])
        a_crow, a_cols, a_perm, a_trows, a_ccol, a_vals, a_acts, a_gv, a_gb = a
        relu = bytes(int(lk.relu) for lk in links)
        ctx.kernels.chain_backward[g.dtype](
            n_layers, n, a_dims, a_crow, a_cols, a_perm, a_trows, a_ccol, a_vals, relu, a_acts, g.data_ptr(),
            a_gv, a_gb, _ptr(gx),
        )
        del table
        grads: list[Tensor | None] = []
        for v, b in zip(gv, gb):
            grads += [v, b]
        return gx, None, None, *grads


def sparse_relu_chain(x: Tensor, layers: Sequence[SparseLinear], relu: Sequence[bool]) -> Tensor:
    """``x`` through ``layers`` (a ReLU after layer ``i`` where ``relu[i]``) as one autograd node.

    The caller checks :func:`chain_eligible` for every layer; ``x`` is 2-D ``(N, in)``.
    """
    kernels = _cpu_ext.load()
    if kernels is None:
        raise RuntimeError(f"the C++ kernel is unavailable: {_cpu_ext.error()}")
    links = [_Link(layer, r) for layer, r in zip(layers, relu)]
    params: list[Tensor | None] = []
    for layer in layers:
        params += [layer.values, layer.bias]
    return _SparseReluChain.apply(x, links, kernels, *params)


def _quiet(hooks: dict[int, Any], module: nn.Module) -> bool:
    for hook in hooks.values():
        idle = getattr(hook, IDLE, None)
        if idle is None or not idle(module):
            return False
    return True


def _no_hooks(module: nn.Module) -> bool:
    """No hook on ``module`` would act now (idle engine recorders do not count)."""
    return ((not module._forward_hooks or _quiet(module._forward_hooks, module))
            and (not module._forward_pre_hooks or _quiet(module._forward_pre_hooks, module))
            and not module._backward_hooks and not module._backward_pre_hooks)


def _global_hooks() -> bool:
    m = nn.modules.module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def chain_eligible(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``layer`` can run inside a fused chain on input ``x`` without any visible change."""
    return (
        type(layer) is SparseLinear and _no_hooks(layer)
        and x.dtype == layer.values.dtype and (layer.bias is None or layer.bias.dtype == x.dtype)
        and x.device.type == "cpu" and layer.values.device.type == "cpu"
        and resolve(getattr(layer, "backend", "auto"), "cpu", x.dtype) == "cpp"
    )


def _plan(modules: list[nn.Module], x: Tensor) -> list[tuple[int, int, list[bool]]]:
    """``(start, stop, relu flags)`` of every fused run in ``modules``."""
    runs: list[tuple[int, int, list[bool]]] = []
    resolved: dict[str, bool] = {}
    i = 0
    while i < len(modules):
        j, relu = i, []
        while j < len(modules):
            layer = modules[j]
            if type(layer) is not SparseLinear:
                break
            backend = getattr(layer, "backend", "auto")
            if backend not in resolved:
                resolved[backend] = resolve(backend, "cpu", x.dtype) == "cpp"
            if not (resolved[backend] and _no_hooks(layer) and layer.values.dtype == x.dtype
                    and layer.values.device.type == "cpu"
                    and (layer.bias is None or layer.bias.dtype == x.dtype)):
                break
            j += 1
            after = j < len(modules) and type(modules[j]) is nn.ReLU and _no_hooks(modules[j])
            relu.append(after)
            j += after
        if relu:
            runs.append((i, j, relu))
            i = j
        else:
            i += 1
    return runs


def sequential_forward(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)``, running each run of ``SparseLinear`` (+ ``ReLU``) as one fused node where
    :func:`chain_eligible`; the result and its gradients equal the module-by-module call."""
    # without autograd (evaluation) the layers run one by one: their forward passes reuse one
    # scratch buffer, where a chain would keep every layer's activations for a backward pass
    if (not torch.is_grad_enabled() or x.dim() != 2 or x.device.type != "cpu" or torch.compiler.is_compiling()
            or _global_hooks() or torch.is_autocast_enabled("cpu")):
        return seq(x)
    modules = list(seq._modules.values())
    runs = _plan(modules, x)
    if not runs:
        return seq(x)
    i = 0
    for start, stop, relu in runs:
        for module in modules[i:start]:
            x = module(x)
        x = sparse_relu_chain(x, [modules[k] for k in range(start, stop) if type(modules[k]) is SparseLinear], relu)
        i = stop
    for module in modules[i:]:
        x = module(x)
    return x
