"""Chains of sparse layers and ReLUs as one autograd node (the eager CPU fast path).

At the papers' MLP sizes (1568 neurons at 1 % density, batch 32) one sparse product takes tens
of microseconds, and the Python around it — a module call, argument checks, an autograd node
per layer and per ReLU, tensor-to-pointer conversions — cost as much again. A run of
``SparseLinear`` (+ ``ReLU``) modules inside an ``nn.Sequential`` therefore runs as one
:class:`torch.autograd.Function` whose forward and backward are one call each into the compiled
kernel (``bs_chain_forward_*`` / ``bs_chain_backward_*``): activations stay in the kernels' panel
layout between the layers and the ReLU happens inside. Every element is summed as in the
single-layer passes, so outputs and gradients equal the layer-by-layer path bit for bit (tested).

A small dense ``nn.Linear`` right after such a run (the MLP's classifier head) closes it: the
kernels treat it as a layer with every link, its weight (row-major) as the link values. That
takes the head's two small GEMMs, their autograd node and the unpacking of the last activations
out of every step (the paper MLP: about 250 µs less per step on one thread, measured side by
side). Its sums run in link order rather than in MKL's blocking, so the head's outputs and the
gradients through it differ from ``nn.Linear``'s in the last bits (about 1e-6 relative); they
equal a ``SparseLinear`` holding every link bit for bit (tested).

The fixed part of a run's kernel arguments (sizes, index-buffer addresses) is built once and
reused until a topology update replaces the layers' index buffers.

:func:`sequential_forward` takes the fast path only where it changes nothing a user can see: CPU
tensors on the ``"cpp"`` backend, float32/float64, autograd on (or off, when the run's
activations fit in ``NO_GRAD_ACTIVATIONS``: evaluation batches), no autocast, not under
``torch.compile``, and no active forward hooks on the modules involved (user hooks; the engine's
gradient and activation recorders count only on the batch before an update, see
:func:`idle_when`); everything else runs module by module as before.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _cpu_ext
from .backend import resolve
from .layer import SparseLinear
from .structure import LinkStructure

__all__ = ["chain_eligible", "idle_when", "sequential_forward", "sparse_relu_chain"]

#: Attribute of a forward hook: a predicate ``(module) -> bool`` that is true while the hook would
#: do nothing (the engine's recorders, which act only on the batch before a topology update).
IDLE = "brainsparse_idle"


def idle_when(hook: Any, predicate: Any) -> Any:
    """Mark a forward hook as doing nothing while ``predicate(module)`` holds, so that a fused
    chain may skip it then; returns the hook."""
    setattr(hook, IDLE, predicate)
    return hook


#: names of a SparseLinear's index buffers, in the kernels' argument order
_INDEX = ("crow", "cols", "t_perm", "t_rows", "ccol")
#: activations start on 64-byte boundaries inside the one buffer that holds them all
_ALIGN = 64


class _FusedRun:
    """The fixed part of one run's kernel arguments, built once and reused while the layers keep
    their index buffers (a topology update replaces them): sizes, the buffers' addresses and two
    argument tables whose per-call slots (values, biases, activations, gradients) each call fills
    in a copy. Holding the index buffers keeps their addresses valid for a pending backward pass.
    """

    def __init__(self, layers: Sequence[nn.Module], relu: Sequence[bool]) -> None:
        self.refs = tuple(weakref.ref(layer) for layer in layers)
        self.buffers = tuple(_index_buffers(layer) for layer in layers)
        ptrs = [tuple(t.data_ptr() for t in bufs) for bufs in self.buffers]
        self.addresses = tuple(ptrs)
        self.dims = [layers[0].in_features] + [layer.out_features for layer in layers]
        self.nnz = [int(bufs[0][-1]) for bufs in self.buffers]  # crow[-1]
        self.out_f = [layer.out_features for layer in layers]
        self.dense = tuple(type(layer) is nn.Linear for layer in layers)
        self.relu = bytes(int(bool(r)) for r in relu)
        n_layers = len(layers)
        # forward: dims | crow | cols | values | biases | activations
        self.fwd = _Table([self.dims, [p[0] for p in ptrs], [p[1] for p in ptrs]], [n_layers, n_layers, n_layers + 1])
        # backward: dims | crow | cols | t_perm | t_rows | ccol | values | activations | gv | gb
        self.bwd = _Table([self.dims, *([p[j] for p in ptrs] for j in range(5))],
                          [n_layers, n_layers + 1, n_layers, n_layers])

    def current(self, layers: Sequence[nn.Module]) -> bool:
        """Whether ``layers`` are this run's layers with the same index buffers at the same addresses."""
        if len(layers) != len(self.refs):
            return False
        for layer, ref, bufs, ptrs, dense in zip(layers, self.refs, self.buffers, self.addresses, self.dense):
            if ref() is not layer:
                return False
            if dense:  # a dense layer's structure is fixed by its shape
                continue
            b = layer._buffers
            for k, buf, ptr in zip(_INDEX, bufs, ptrs):
                if b[k] is not buf or buf.data_ptr() != ptr:
                    return False
        return True

    def activation_offsets(self, n: int, itemsize: int) -> tuple[list[int], int]:
        """Byte offsets of the activations ``(dims[l], n)`` in one buffer, and its element count."""
        offsets, at = [], 0
        for d in self.dims:
            offsets.append(at)
            at += -(-d * n * itemsize // _ALIGN) * _ALIGN
        return offsets, at // itemsize


#: a dense ``nn.Linear`` closes a fused run up to this many weights (its full structure's index
#: tensors take 40 bytes per weight; larger dense layers are MKL's)
DENSE_TAIL_MAX = 1 << 17
_FULL: dict[tuple[int, int], tuple[Tensor, ...]] = {}


def _index_buffers(layer: nn.Module) -> tuple[Tensor, ...]:
    """``crow, cols, t_perm, t_rows, ccol`` of a SparseLinear (checked: contiguous int64), or of
    the full structure of a dense ``nn.Linear``'s shape (every link, in the weight's row-major
    order, so the weight itself is the values array)."""
    if type(layer) is not nn.Linear:
        layer.kernel_pointers()  # raises for index buffers the kernels cannot read
        return tuple(layer._buffers[k] for k in _INDEX)
    shape = (layer.out_features, layer.in_features)
    full = _FULL.get(shape)
    if full is None:
        tensors = LinkStructure.from_mask(torch.ones(shape, dtype=torch.bool)).tensors()
        full = tuple(tensors[k].contiguous() for k in _INDEX)
        if len(_FULL) >= 8:
            _FULL.pop(next(iter(_FULL)))
        _FULL[shape] = full
    return full


class _Table:
    """A ctypes int64 array of pointer groups: fixed groups first, then slots filled per call."""

    def __init__(self, fixed: list[list[int]], slots: list[int]) -> None:
        flat = [p for g in fixed for p in g]
        self.starts, at = [], 0
        for g in fixed:
            self.starts.append(at)
            at += len(g)
        self.slot_starts = []
        for n in slots:
            self.slot_starts.append(at)
            at += n
        self.template = (ctypes.c_int64 * max(1, at))(*flat, *([0] * (at - len(flat))))

    def fill(self, slots: list[list[int]]) -> tuple[Any, list[int]]:
        """A copy of the table with ``slots`` written in; returns it (keep it alive during the
        call) and the address of every group, fixed then slots."""
        table = type(self.template).from_buffer_copy(self.template)
        for start, values in zip(self.slot_starts, slots):
            table[start:start + len(values)] = values
        base = ctypes.addressof(table)
        return table, [base + 8 * i for i in self.starts] + [base + 8 * i for i in self.slot_starts]


#: one fused run per (first layer, layers, ReLU flags); weak keys: a dropped model drops its runs
_RUNS: weakref.WeakKeyDictionary[SparseLinear, dict[tuple[int, bytes], _FusedRun]] = weakref.WeakKeyDictionary()


def _fused_run(layers: Sequence[nn.Module], relu: Sequence[bool]) -> _FusedRun:
    """The cached :class:`_FusedRun` of ``layers``, rebuilt when their index buffers changed."""
    key = (len(layers), bytes(int(bool(r)) for r in relu))
    per_layer = _RUNS.get(layers[0])
    if per_layer is None:
        per_layer = _RUNS[layers[0]] = {}
    run = per_layer.get(key)
    if run is None or not run.current(layers):
        run = per_layer[key] = _FusedRun(layers, relu)
    return run


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _SparseReluChain(torch.autograd.Function):
    """``x → [relu](x W₀ᵀ + b₀) → …`` for a list of layers; gradients for x, values and biases.

    Activations stay in the kernels' panel layout between the layers, all in one buffer saved
    for the backward pass: layer ``l`` reads activation ``l``; ``activation l + 1 > 0`` is its
    ReLU's mask.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, run: _FusedRun, kernels: _cpu_ext.CpuKernels,
                *params: Tensor | None) -> Tensor:
        n = x.shape[0]
        x = x.contiguous()
        offsets, size = run.activation_offsets(n, x.element_size())
        acts = x.new_empty(size)
        y = x.new_empty((n, run.dims[-1]))
        base = acts.data_ptr()
        values, biases = params[0::2], params[1::2]
        table, (a_dims, a_crow, a_cols, a_vals, a_bias, a_acts) = run.fwd.fill(
            [[_ptr(v) for v in values], [_ptr(b) for b in biases], [base + o for o in offsets]])
        kernels.chain_forward[x.dtype](len(values), n, a_dims, a_crow, a_cols, a_vals, a_bias, run.relu,
                                       x.data_ptr(), a_acts, y.data_ptr())
        del table
        ctx.run, ctx.kernels, ctx.offsets = run, kernels, offsets
        ctx.save_for_backward(acts, *values)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        run = ctx.run
        acts, *values = ctx.saved_tensors
        n_layers = len(values)
        needs = ctx.needs_input_grad
        g = grad.contiguous()
        n = g.shape[0]
        gx = g.new_empty((n, run.dims[0])) if needs[0] else None
        gv = [g.new_empty(k) if needs[3 + 2 * i] else None for i, k in enumerate(run.nnz)]
        gb = [g.new_empty(o) if needs[4 + 2 * i] else None for i, o in enumerate(run.out_f)]
        base = acts.data_ptr()
        table, (a_dims, a_crow, a_cols, a_perm, a_trows, a_ccol, a_vals, a_acts, a_gv, a_gb) = run.bwd.fill(
            [[v.data_ptr() for v in values], [base + o for o in ctx.offsets], [_ptr(t) for t in gv],
             [_ptr(t) for t in gb]])
        ctx.kernels.chain_backward[g.dtype](
            n_layers, n, a_dims, a_crow, a_cols, a_perm, a_trows, a_ccol, a_vals, run.relu, a_acts, g.data_ptr(),
            a_gv, a_gb, _ptr(gx),
        )
        del table
        grads: list[Tensor | None] = []
        for v, b, value in zip(gv, gb, values):
            grads += [v if v is None else v.view(value.shape), b]
        return gx, None, None, *grads


#: the most activation bytes a fused run holds during a call without autograd (the paper MLP at
#: evaluation batch 1000: 22 MB); beyond, the modules run one by one
NO_GRAD_ACTIVATIONS = 32 << 20


def _weight(layer: nn.Module) -> Tensor:
    """The link values of a SparseLinear, the weight of a dense ``nn.Linear`` (read from
    ``_parameters``, not through ``Module.__getattr__``: this runs at every step)."""
    own = layer._parameters
    return own["weight"] if type(layer) is nn.Linear else own["values"]


def _params_fit(layer: nn.Module, dtype: torch.dtype) -> bool:
    """No hook on ``layer`` would act now and its weight (values) and bias are CPU ``dtype``."""
    weight, bias = _weight(layer), layer._parameters.get("bias")
    return (_no_hooks(layer) and weight.dtype == dtype and weight.device.type == "cpu"
            and (bias is None or bias.dtype == dtype))


def sparse_relu_chain(x: Tensor, layers: Sequence[nn.Module], relu: Sequence[bool]) -> Tensor:
    """``x`` through ``layers`` (a ReLU after layer ``i`` where ``relu[i]``) as one autograd node.

    The caller checks that the layers can fuse (:func:`chain_eligible`; a last dense
    ``nn.Linear`` as :func:`sequential_forward` plans it); ``x`` is 2-D ``(N, in)``.
    """
    kernels = _cpu_ext.load()
    if kernels is None:
        raise RuntimeError(f"the C++ kernel is unavailable: {_cpu_ext.error()}")
    run = _fused_run(layers, relu)
    params: list[Tensor | None] = []
    for layer in layers:
        params += [_weight(layer), layer._parameters.get("bias")]
    return _SparseReluChain.apply(x, run, kernels, *params)


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
        type(layer) is SparseLinear and x.device.type == "cpu" and _params_fit(layer, x.dtype)
        and resolve(getattr(layer, "backend", "auto"), "cpu", x.dtype) == "cpp"
    )


def _dense_tail(layer: nn.Module, x: Tensor, width: int) -> bool:
    """Whether a dense ``nn.Linear`` reading ``width`` features can close a fused run (small,
    contiguous, no hooks)."""
    if type(layer) is not nn.Linear or layer.in_features != width or not _params_fit(layer, x.dtype):
        return False
    weight = _weight(layer)
    return (weight.numel() <= DENSE_TAIL_MAX and tuple(weight.shape) == (layer.out_features, width)
            and weight.is_contiguous())


def _plan(modules: list[nn.Module], x: Tensor) -> list[tuple[int, int, list[bool]]]:
    """``(start, stop, relu flags)`` of every fused run in ``modules``: consecutive
    ``SparseLinear`` (+ ``ReLU``) layers whose widths fit, closed by a small dense ``nn.Linear``
    (+ ``ReLU``) where one follows."""
    runs: list[tuple[int, int, list[bool]]] = []
    resolved: dict[str, bool] = {}
    i = 0
    while i < len(modules):
        j, relu, width = i, [], None
        while j < len(modules):
            layer = modules[j]
            if type(layer) is not SparseLinear or (width is not None and layer.in_features != width):
                break
            backend = getattr(layer, "backend", "auto")
            if backend not in resolved:
                resolved[backend] = resolve(backend, "cpu", x.dtype) == "cpp"
            if not (resolved[backend] and _params_fit(layer, x.dtype)):
                break
            j += 1
            width = layer.out_features
            after = j < len(modules) and type(modules[j]) is nn.ReLU and _no_hooks(modules[j])
            relu.append(after)
            j += after
        if relu and j < len(modules) and _dense_tail(modules[j], x, width):
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
    """``seq(x)``, running each run of ``SparseLinear`` (+ ``ReLU``), closed by a small dense
    ``nn.Linear`` where one follows, as one fused node where :func:`chain_eligible`; the result and
    its gradients equal the module-by-module call (a dense tail: up to the last bits)."""
    if (x.dim() != 2 or x.device.type != "cpu" or torch.compiler.is_compiling()
            or _global_hooks() or torch.is_autocast_enabled("cpu")):
        return seq(x)
    grad = torch.is_grad_enabled()
    modules = list(seq._modules.values())
    runs = _plan(modules, x)
    if not runs:
        return seq(x)
    i = 0
    for start, stop, relu in runs:
        for module in modules[i:start]:
            x = module(x)
        layers = [modules[k] for k in range(start, stop) if type(modules[k]) is not nn.ReLU]
        # without autograd (evaluation) a chain holds every layer's activations only for the call:
        # fused up to NO_GRAD_ACTIVATIONS bytes, module by module (one scratch buffer) beyond
        if (x.dim() == 2 and x.shape[1] == layers[0].in_features and x.dtype == _weight(layers[0]).dtype
                and (grad or x.shape[0] * (x.shape[1] + sum(m.out_features for m in layers)) * x.element_size()
                     <= NO_GRAD_ACTIVATIONS)):
            x = sparse_relu_chain(x, layers, relu)
        else:  # the modules raise the error (or handle the input) as they would unfused
            for module in modules[start:stop]:
                x = module(x)
        i = stop
    for module in modules[i:]:
        x = module(x)
    return x
