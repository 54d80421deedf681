"""Sparse execution of a masked linear layer: ``y = x Wᵀ + b`` with ``W`` stored as links only.

Forward, gradient w.r.t. the input and gradient w.r.t. the existing links (``grad_values[k] =
Σ_n grad_y[n, rows[k]] · x[n, cols[k]]``) — a dense ``(out, in)`` weight or weight gradient is
never formed. Two implementations:

* ``"cpp"`` (CPU, float32/float64): the JIT-compiled kernel of :mod:`._cpu_ext`, one call per
  pass, a few µs of overhead per call.
* ``"torch"`` (any device, the fallback): PyTorch CSR kernels — ``torch.sparse.mm`` for the
  forward and input gradient, ``torch.sparse.sampled_addmm`` for the link gradients (cuSPARSE
  on GPU). Half-precision inputs use a gather/``index_add`` formulation instead.

The CPU implementation is chosen once: ``$BRAINSPARSE_KERNEL_BACKEND`` (``auto`` — the default —,
``cpp`` or ``torch``) or :func:`set_backend`; :func:`backend` reports the active one. GPU
tensors always take the ``"torch"`` path.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..errors import BrainsparseError
from . import _cpu_ext
from .structure import INDEX_FIELDS, LinkStructure, remap

BACKENDS = ("auto", "cpp", "torch")

_requested = os.environ.get("BRAINSPARSE_KERNEL_BACKEND", "auto").strip().lower() or "auto"
if _requested not in BACKENDS:
    _requested = "auto"
_kernels: _cpu_ext.CpuKernels | None = None
_resolved = False


def set_backend(name: str | None = None) -> str:
    """Choose the CPU implementation: ``"auto"`` (C++ when it builds), ``"cpp"`` or ``"torch"``.

    ``None`` re-reads ``$BRAINSPARSE_KERNEL_BACKEND``. Returns the active backend (``"cpp"``
    only if the kernel is available; asking for ``"cpp"`` where it is not gives ``"torch"``).
    """
    global _requested, _resolved, _kernels
    if name is None:
        name = os.environ.get("BRAINSPARSE_KERNEL_BACKEND", "auto")
    name = str(name).strip().lower() or "auto"
    if name not in BACKENDS:
        raise BrainsparseError(f"kernel backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}")
    _requested = name
    _resolved = False
    _kernels = None
    return backend()


def _cpu_kernels() -> _cpu_ext.CpuKernels | None:
    global _resolved, _kernels
    if not _resolved:
        _kernels = None if _requested == "torch" else _cpu_ext.load()
        _resolved = True
    return _kernels


def cpu_kernels() -> _cpu_ext.CpuKernels | None:
    """The compiled CPU kernels when the active backend is ``"cpp"``, else ``None`` (also used by
    the Cannistraci–Hebb scorers, so :func:`use_backend` switches them too)."""
    return _cpu_kernels()


def backend() -> str:
    """The active CPU implementation: ``"cpp"`` (compiled kernel) or ``"torch"``."""
    return "cpp" if _cpu_kernels() is not None else "torch"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Temporarily switch the CPU implementation (for tests and benchmarks)."""
    previous = _requested
    try:
        yield set_backend(name)
    finally:
        set_backend(previous)


# ---------------------------------------------------------------------------- torch implementation
_CSR_DTYPES = (torch.float32, torch.float64)
_GATHER_CHUNK = 1 << 22  # elements of the (samples × links) intermediate per chunk
_csr_warned = False


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


def _torch_forward(x: Tensor, values: Tensor, s: LinkStructure, bias: Tensor | None) -> Tensor:
    n, out_f = x.shape[0], s.shape[0]
    if s.nnz == 0 or n == 0:
        y = x.new_zeros((n, out_f))
    elif values.dtype in _CSR_DTYPES:
        y = torch.sparse.mm(_csr(s.crow, s.cols, values, s.shape), x.t()).t()
    else:  # half precision: gather / index_add
        y = x.new_zeros((n, out_f))
        for c in _chunks(n, s.nnz):
            y[c].index_add_(1, s.rows, x[c][:, s.cols] * values)
    return y + bias if bias is not None else y.contiguous()


def _torch_grad_x(gy: Tensor, values: Tensor, s: LinkStructure) -> Tensor:
    n, (out_f, in_f) = gy.shape[0], s.shape
    if s.nnz == 0 or n == 0:
        return gy.new_zeros((n, in_f))
    if values.dtype in _CSR_DTYPES:
        wt = _csr(s.ccol, s.t_rows, values[s.t_perm], (in_f, out_f))
        return torch.sparse.mm(wt, gy.t()).t()
    gx = gy.new_zeros((n, in_f))
    for c in _chunks(n, s.nnz):
        gx[c].index_add_(1, s.cols, gy[c][:, s.rows] * values)
    return gx


def _torch_grad_values(gy: Tensor, x: Tensor, s: LinkStructure) -> Tensor:
    n = gy.shape[0]
    if s.nnz == 0 or n == 0:
        return gy.new_zeros(s.nnz)
    if gy.dtype in _CSR_DTYPES:
        pattern = _csr(s.crow, s.cols, gy.new_zeros(s.nnz), s.shape)
        return torch.sparse.sampled_addmm(pattern, gy.t(), x, beta=0.0).values()
    gv = torch.zeros(s.nnz, dtype=torch.float32, device=gy.device)  # accumulate half in float32
    for c in _chunks(n, s.nnz):
        gv += (gy[c][:, s.rows].float() * x[c][:, s.cols].float()).sum(0)
    return gv.to(gy.dtype)


# ---------------------------------------------------------------------------- autograd
class _SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` for 2-D ``x``; gradients for x, the link values and the bias."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, s: LinkStructure,
                kernels: _cpu_ext.CpuKernels | None) -> Tensor:
        ctx.structure = s
        ctx.kernels = kernels
        ctx.has_bias = bias is not None
        if kernels is not None:
            n, (out_f, in_f) = x.shape[0], s.shape
            x = x.contiguous()
            values = values.contiguous()
            b = bias.contiguous() if bias is not None else None  # keep alive during the call
            xt = x.new_empty((in_f, n))
            y = x.new_empty((n, out_f))
            kernels.forward[x.dtype](
                n, in_f, out_f, x.data_ptr(), s.crow.data_ptr(), s.cols.data_ptr(), values.data_ptr(),
                None if b is None else b.data_ptr(), xt.data_ptr(), y.data_ptr(),
            )
            ctx.save_for_backward(xt, values)
            return y
        ctx.save_for_backward(x, values)
        return _torch_forward(x, values, s, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor):
        saved, values = ctx.saved_tensors
        s: LinkStructure = ctx.structure
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        gx = gv = gb = None
        kernels = ctx.kernels
        if kernels is not None:
            n, (out_f, in_f) = gy.shape[0], s.shape
            gy = gy.contiguous()
            if need_x:
                gx = gy.new_empty((n, in_f))
            if need_v:
                gv = gy.new_empty(s.nnz)
            if need_b and ctx.has_bias:
                gb = gy.new_empty(out_f)
            if gx is not None or gv is not None or gb is not None:
                kernels.backward[gy.dtype](
                    n, in_f, out_f, gy.data_ptr(), saved.data_ptr(), s.crow.data_ptr(), s.cols.data_ptr(),
                    s.t_perm.data_ptr(), s.t_rows.data_ptr(), s.ccol.data_ptr(), values.data_ptr(),
                    None if gx is None else gx.data_ptr(), None if gv is None else gv.data_ptr(),
                    None if gb is None else gb.data_ptr(),
                )
        else:
            with torch.autocast(gy.device.type, enabled=False):
                if need_x:
                    gx = _torch_grad_x(gy, values, s)
                if need_v:
                    gv = _torch_grad_values(gy, saved, s)
                if need_b and ctx.has_bias:
                    gb = gy.sum(0)
        return gx, gv, gb, None, None


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


def sparse_linear(x: Tensor, values: Tensor, structure: LinkStructure, bias: Tensor | None = None) -> Tensor:
    """``y = x Wᵀ + b`` where ``W`` has ``values`` at the links of ``structure``.

    ``x`` is ``(..., in)``; the result is ``(..., out)``. Differentiable w.r.t. ``x``, ``values``
    (gradient only at the ``K`` links) and ``bias``.
    """
    out_f, in_f = structure.shape
    if x.shape[-1] != in_f:
        raise BrainsparseError(f"input has {x.shape[-1]} features, the sparse layer expects {in_f}")
    if values.shape != (structure.nnz,):
        raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {structure.nnz} links")
    autocast = _autocast_dtype(x.device.type)
    if autocast is not None:  # mixed precision: compute in the autocast dtype, like nn.Linear
        x, values = x.to(autocast), values.to(autocast)
        bias = bias.to(autocast) if bias is not None else None
    if x.dtype != values.dtype or (bias is not None and bias.dtype != values.dtype):
        raise BrainsparseError(
            f"dtype mismatch: input {x.dtype}, values {values.dtype}"
            + (f", bias {bias.dtype}" if bias is not None else "")
        )
    if structure.rows.device != values.device:
        raise BrainsparseError(f"structure on {structure.rows.device}, values on {values.device}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)
    kernels = _cpu_kernels() if x.device.type == "cpu" and x.dtype in _CSR_DTYPES else None
    if autocast is not None:
        with torch.autocast(x.device.type, enabled=False):
            y = _SparseLinearFunction.apply(x2, values, bias, structure, kernels)
    else:
        y = _SparseLinearFunction.apply(x2, values, bias, structure, kernels)
    return y.reshape(*lead, out_f) if len(lead) != 1 else y


# ---------------------------------------------------------------------------- crossover
#: Density below which the sparse path beats the dense-masked layer ``x @ (W*M).T + b`` (forward +
#: backward of one layer, float32), as ``(batch size, density)`` points; interpolated in
#: log(batch) between them, constant outside. Measured with ``benchmarks/kernels_micro.py`` on the
#: project machine (2-core AMD EPYC VM, AVX2, torch 2.13 CPU + MKL), dense/sparse time ratio,
#: best of 25 runs of process CPU time, 1 thread:
#:
#:   C++ kernel         density:  20 %   25 %   30 %   35 %   40 %
#:     1568x1568  batch  32       1.81   1.39   1.12   1.03   0.90
#:     1568x1568  batch 256       1.54   1.23   1.06   0.94   0.82
#:     784->1568  batch  32       1.93   1.56   1.17   1.00   0.89
#:     784->1568  batch 256       1.54   1.31   1.12   0.97   0.84
#:   PyTorch CSR        density:  10 %   15 %   20 %   25 %   30 %
#:     1568x1568  batch  32       2.27   1.55   1.11   0.92   0.77
#:     1568x1568  batch 256       1.70   1.20   0.94   0.76   0.64
#:     784->1568  batch  32       1.93   1.46   1.10   0.88   0.81
#:     784->1568  batch 256       1.81   1.21   0.97   0.80   0.66
#:
#: i.e. crossovers of ~35 % (C++, both batch sizes) and ~22 % / ~18 % (CSR, batch 32 / 256).
#: Two-thread timings could not be taken on the shared machine (other jobs kept both cores busy,
#: and every OpenMP region — even a 50 k-element ReLU — then waited ~8 ms for a descheduled
#: thread); at these densities both the C++ kernel (work above ``_cpu_ext.PARALLEL_MIN``) and MKL
#: run on both threads, so the ratio should hold. The constants sit ~5 points below the measured
#: crossovers as a margin. At the papers' 1 % density the sparse path is 12-25x faster.
CROSSOVER_CPP = ((32, 0.30), (256, 0.30))
#: The same for the PyTorch CSR fallback (its ~0.2 ms per-call floor and slower kernels).
CROSSOVER_TORCH = ((32, 0.18), (256, 0.13))


def crossover_density(batch_size: int, implementation: str | None = None) -> float:
    """The density below which the sparse path is expected to be faster (see ``CROSSOVER_*``)."""
    table = CROSSOVER_CPP if (implementation or backend()) == "cpp" else CROSSOVER_TORCH
    (b0, d0), (b1, d1) = table
    if batch_size <= b0:
        return d0
    if batch_size >= b1:
        return d1
    t = (math.log(batch_size) - math.log(b0)) / (math.log(b1) - math.log(b0))
    return d0 + t * (d1 - d0)


def choose_kernel(out_features: int, in_features: int, density: float, batch_size: int,
                  device_type: str = "cpu") -> str:
    """``"sparse"`` or ``"dense"``: which execution is expected to be faster for this layer.

    On CPU compares ``density`` with :func:`crossover_density` for the active backend (the
    measured crossover does not depend much on the layer size in the papers' range, see
    ``CROSSOVER_CPP``). On other devices the masked-dense path: on an H200 the paper MLP's 1 %
    epoch took 3.1 s masked and 4.8 s on the CSR path (benchmarks/results/gpu-check.json).
    """
    if density >= 1.0 or out_features * in_features == 0 or device_type != "cpu":
        return "dense"
    return "sparse" if density < crossover_density(max(1, int(batch_size))) else "dense"


# ---------------------------------------------------------------------------- module
class SparseLinear(nn.Module):
    """A linear layer whose weight exists only at its links: ``values`` (K,) plus a structure.

    The structure's index tensors are buffers (``rows``, ``cols``, ``crow``, ``t_perm``,
    ``t_rows``, ``ccol``), so ``.to(device)`` moves them and ``state_dict()`` saves them.
    Optimizer state for ``values`` exists for the links only.
    """

    def __init__(
        self,
        structure: LinkStructure,
        values: Tensor | None = None,
        bias: bool | Tensor | None = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        out_f, in_f = structure.shape
        self.in_features = int(in_f)
        self.out_features = int(out_f)
        if device is None:
            device = values.device if values is not None else structure.device
        factory = {"device": device, "dtype": dtype if dtype is not None else
                   (values.dtype if values is not None else torch.get_default_dtype())}
        bound = 1.0 / math.sqrt(in_f) if in_f > 0 else 0.0
        if values is None:
            values = torch.empty(structure.nnz, **factory).uniform_(-bound, bound)
        elif values.shape != (structure.nnz,):
            raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {structure.nnz} links")
        self.values = nn.Parameter(values.detach().to(**factory).clone())
        if isinstance(bias, nn.Parameter):
            self.bias = bias
        elif torch.is_tensor(bias):
            self.bias = nn.Parameter(bias.detach().to(**factory).clone())
        elif bias:
            self.bias = nn.Parameter(torch.empty(out_f, **factory).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        for name, tensor in structure.to(device).tensors().items():
            self.register_buffer(name, tensor)
        self._cached: LinkStructure | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> SparseLinear:
        """A sparse copy of ``linear`` at the links of ``mask``, sharing its bias Parameter."""
        w = linear.weight
        if tuple(mask.shape) != tuple(w.shape):
            raise BrainsparseError(f"mask shape {tuple(mask.shape)} differs from the weight's {tuple(w.shape)}")
        structure = LinkStructure.from_mask(mask.to(w.device))
        values = structure.gather(w.detach())
        return cls(structure, values, bias=linear.bias if linear.bias is not None else False,
                   device=w.device, dtype=w.dtype)

    # ------------------------------------------------------------------ structure
    @property
    def structure(self) -> LinkStructure:
        """The current link structure (views of the buffers)."""
        c = self._cached
        b = self._buffers
        if (
            c is None or c.rows is not b["rows"] or c.cols is not b["cols"] or c.crow is not b["crow"]
            or c.t_perm is not b["t_perm"] or c.t_rows is not b["t_rows"] or c.ccol is not b["ccol"]
        ):
            c = self._cached = LinkStructure.from_tensors(b, (self.out_features, self.in_features))
        return c

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def density(self) -> float:
        size = self.out_features * self.in_features
        return self.nnz / size if size else 0.0

    @property
    def mask(self) -> Tensor:
        """The bool mask ``(out, in)`` of the links."""
        return self.structure.to_mask()

    def dense_weight(self) -> Tensor:
        """The dense ``(out, in)`` weight (a detached copy, for inspection)."""
        return self.structure.to_dense(self.values.detach())

    @torch.no_grad()
    def set_structure(
        self,
        structure: LinkStructure | Tensor,
        values: Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Replace the links (a structure or a mask) and their values, in place.

        ``values`` default to :func:`remap` of the current ones (kept links keep their value,
        new links start at 0). The ``values`` Parameter object is kept — only its data changes
        (in place when the link count is unchanged) — so an optimizer holding it stays valid;
        pass ``optimizer`` to remap its per-link state (momentum, Adam moments) the same way.
        When the link count changes, call this between steps: an autograd graph built before
        still expects the old shape for ``values``.
        """
        if not isinstance(structure, LinkStructure):
            structure = LinkStructure.from_mask(structure)
        if tuple(structure.shape) != (self.out_features, self.in_features):
            raise BrainsparseError(
                f"structure shape {structure.shape} differs from the layer's {(self.out_features, self.in_features)}"
            )
        old = self.structure
        device = self.values.device
        structure = structure.to(device)
        if values is None:
            values = remap(old, structure, self.values.detach())
        elif values.shape != (structure.nnz,):
            raise BrainsparseError(f"values has shape {tuple(values.shape)}, the structure {structure.nnz} links")
        if optimizer is not None:
            state = optimizer.state.get(self.values)
            if state:
                for key, value in list(state.items()):
                    if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == old.nnz:
                        state[key] = remap(old, structure, value)
        values = values.to(device=device, dtype=self.values.dtype)
        if values.numel() == self.values.numel():
            self.values.copy_(values)
        else:
            self.values.data = values.clone()
            self.values.grad = None
        for name, tensor in structure.tensors().items():
            self._buffers[name] = tensor
        self._cached = structure

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # a checkpoint with a different link count: resize the buffers and values to receive it
        incoming = state_dict.get(prefix + "rows")
        if torch.is_tensor(incoming) and incoming.numel() != self.nnz:
            k = incoming.numel()
            for name in INDEX_FIELDS:
                src = state_dict.get(prefix + name)
                if torch.is_tensor(src):
                    self._buffers[name] = torch.empty_like(src, device=self.rows.device)
            with torch.no_grad():
                self.values.data = self.values.new_empty(k)
                self.values.grad = None
            self._cached = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._cached = None  # re-validate the loaded structure on next use

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        return sparse_linear(x, self.values, self.structure, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, links={self.nnz}, "
            f"density={self.density:.4g}, bias={self.bias is not None}"
        )
