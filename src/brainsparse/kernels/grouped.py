"""Several linear layers applied to one input in one sparse call (attention's q/k/v projections).

When every layer is a :class:`~brainsparse.kernels.SparseLinear` (the sparse path), their links
are stacked into one ``(Σ out, in)`` structure — layer ``j``'s rows shifted by the outputs of the
layers before it — and their values and biases concatenated, so one kernel call computes all
outputs: the input is transposed once instead of once per layer, the gradient w.r.t. the input
comes out of one pass instead of one per layer plus their sum, and the per-call overhead is paid
once. Each output element is the same sum over the same links as in the separate calls, in the
same order, so the results equal theirs (the input gradient adds the layers' contributions in
one sum instead of summing three partial gradients afterwards: last-bit differences). The
stacked structure is cached until one of the layers gets a new structure (a topology update).

Anything else — a masked ``nn.Linear`` among them, forward hooks (the engine's gradient capture,
activation recording), different backends, dtypes or devices, ``torch.compile`` tracing —
falls back to calling each layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from .layer import SparseLinear
from .sparse_linear import sparse_linear_indices
from .structure import LinkStructure

__all__ = ["grouped_linear"]

_CACHE_ATTR = "_grouped_structure"


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _groupable(layers: Sequence[nn.Module]) -> bool:
    if len(layers) < 2 or not all(type(m) is SparseLinear for m in layers):
        return False
    first = layers[0]
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
            or torch.compiler.is_compiling()):
        return False
    has_bias = first.bias is not None
    for m in layers:
        if (_hooked(m) or m.in_features != first.in_features or m.backend != first.backend
                or m.values.dtype != first.values.dtype or m.values.device != first.values.device
                or (m.bias is not None) != has_bias):
            return False
    return True


def _stacked(layers: Sequence[SparseLinear]) -> LinkStructure:
    """The stacked structure of ``layers`` (cached on the first layer while theirs are unchanged)."""
    parts = [m.structure for m in layers]
    cached = getattr(layers[0], _CACHE_ATTR, None)
    if cached is not None and len(cached[0]) == len(parts) and all(a is b for a, b in zip(cached[0], parts)):
        return cached[1]
    in_f = layers[0].in_features
    keys, offset = [], 0
    for s in parts:
        keys.append((s.rows + offset) * in_f + s.cols)
        offset += s.shape[0]
    stacked = LinkStructure._from_sorted_keys(torch.cat(keys), (offset, in_f))
    object.__setattr__(layers[0], _CACHE_ATTR, (tuple(parts), stacked))
    return stacked


def grouped_linear(x: Tensor, layers: Sequence[nn.Module]) -> list[Tensor]:
    """``[layer(x) for layer in layers]``, in one sparse call where all are sparse (see above)."""
    if not _groupable(layers):
        return [m(x) for m in layers]
    s = _stacked(layers)  # type: ignore[arg-type]
    values = torch.cat([m.values for m in layers])
    bias = torch.cat([m.bias for m in layers]) if layers[0].bias is not None else None
    y = sparse_linear_indices(x, values, bias, s.crow, s.cols, s.rows, s.t_perm, s.t_rows, s.ccol,
                              backend=layers[0].backend)
    return list(y.split([m.out_features for m in layers], dim=-1))
