"""The registered operators torch.ops.brainsparse.* (opcheck, same results as the eager route) and
torch.compile of models on the sparse and the dense-masked path (same training as eager)."""

from __future__ import annotations

import copy
import itertools
import time

import pytest
import torch
from torch import nn

from brainsparse.kernels import (
    LinkStructure,
    SparseLinear,
    available,
    ops,
    sparse_linear,
)
from brainsparse.scoring import ch_l3_exact, ch_l3_matrix

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not available(), reason="no C++ kernel"))]

# (out, in, density, batch): a general layer, a wider batch (vector tiles + tail), empty layers
# (no links, no samples, no outputs)
SHAPES = [(7, 5, 0.4, 3), (16, 9, 0.2, 33), (6, 4, 0.0, 2), (3, 4, 0.5, 0), (0, 4, 0.5, 2)]
#: opcheck is slow (~5 s a call here): every shape once, both dtypes on the general layer
OPCHECK_CASES = [(SHAPES[0], torch.float32), (SHAPES[0], torch.float64), (SHAPES[1], torch.float64),
                 (SHAPES[2], torch.float32), (SHAPES[3], torch.float64), (SHAPES[4], torch.float32)]


def _layer(out_f: int, in_f: int, density: float, batch: int, dtype: torch.dtype, seed: int = 0,
           grad_y: bool = False):
    """A random layer (structure, input, values, bias) and, with ``grad_y``, an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    s = LinkStructure.from_mask(torch.rand(out_f, in_f, generator=gen) < density)
    x = torch.randn(batch, in_f, generator=gen, dtype=dtype)
    v = torch.randn(s.nnz, generator=gen, dtype=dtype)
    b = torch.randn(out_f, generator=gen, dtype=dtype)
    if grad_y:
        return s, x, v, b, torch.randn(batch, out_f, generator=gen, dtype=dtype)
    return s, x, v, b


def _index(s: LinkStructure) -> tuple[torch.Tensor, ...]:
    return s.crow, s.cols, s.rows, s.t_perm, s.t_rows, s.ccol


# ---------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "dtype"), OPCHECK_CASES)
def test_opcheck_sparse_linear_ops(backend, dtype, shape):
    s, x, v, b = _layer(*shape, dtype)
    crow, cols, rows, t_perm, t_rows, ccol = _index(s)
    for bias in (b, None) if shape == SHAPES[0] else (b,):
        args = (x.clone().requires_grad_(), v.clone().requires_grad_(),
                None if bias is None else bias.clone().requires_grad_(), *_index(s), backend)
        torch.library.opcheck(ops.sparse_linear_forward, args)
    y, saved = ops.sparse_linear_forward(x, v, b, *_index(s), backend)
    gy = torch.randn_like(y)
    torch.library.opcheck(ops.sparse_linear_grad_x, (gy, v, crow, cols, rows, t_perm, t_rows, ccol, backend))
    saved = saved if backend == "cpp" else x
    for with_bias in (True, False):
        torch.library.opcheck(ops.sparse_linear_grad_values, (gy, saved, crow, cols, rows, with_bias, backend))


@pytest.mark.skipif(not available(), reason="no C++ kernel")
@pytest.mark.parametrize("shape", [(9, 7), (0, 3), (4, 0), (12, 10)])
def test_opcheck_ch_scorer(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.3
    for variant in ("CH3", "CH2", "CH3.1"):
        for matrix in (False, True):
            torch.library.opcheck(ops.ch_l3_compiled, (mask, variant, matrix))
    if mask.numel():
        assert torch.equal(ops.ch_l3_compiled(mask, "CH3", False), ch_l3_exact(mask, "CH3", backend="cpp"))
        assert torch.equal(ops.ch_l3_compiled(mask, "CH2", True), ch_l3_matrix(mask, "CH2", use_sparse=True))


# ---------------------------------------------------------------------------- op route == eager route
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_op_route_bit_identical_to_eager(backend, dtype, shape):
    s, x, v, b = _layer(*shape, dtype, seed=3)
    results = []
    for use_ops in (False, True):
        xs, vs, bs = (t.clone().requires_grad_() for t in (x, v, b))
        y = sparse_linear(xs, vs, s, bs, backend=backend, use_ops=use_ops)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape))
        results.append((y.detach(), xs.grad, vs.grad, bs.grad))
    for eager, op in zip(*results):
        assert torch.equal(eager, op)


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_route_under_autocast(backend):
    """bf16 autocast on CPU: the layer computes in bf16 (the PyTorch gather path) through the op."""
    s, x, v, b = _layer(12, 10, 0.4, 5, torch.float32)
    grads = []
    for use_ops in (False, True):
        vs, bs = v.clone().requires_grad_(), b.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = sparse_linear(x, vs, s, bs, backend=backend, use_ops=use_ops)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        assert vs.grad.dtype == torch.float32
        grads.append((y, vs.grad, bs.grad))
    for eager, op in zip(*grads):
        assert torch.equal(eager, op)
    torch.testing.assert_close(grads[0][0].float(), x @ s.to_dense(v).T + b, rtol=0.05, atol=0.1)


# ---------------------------------------------------------------------------- torch.compile
def _mlp(sparse: bool, backend: str = "auto", seed: int = 0, sizes=(20, 32, 32, 5), density=0.3):
    """An MLP: SparseLinear layers (``sparse``) or nn.Linear layers plus their masks."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    masks = []
    for a, b in itertools.pairwise(sizes):
        lin = nn.Linear(a, b)
        mask = torch.rand(b, a, generator=gen) < density
        with torch.no_grad():
            lin.weight.mul_(mask)
        masks.append(mask)
        layers += [SparseLinear.from_linear(lin, mask, backend=backend) if sparse else lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1]), masks


def _train(model: nn.Module, run: nn.Module, masks, steps: int = 4, autocast: bool = False) -> list[torch.Tensor]:
    """A few SGD steps; dense layers are re-masked after every step (the engine's masked path)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 20, generator=gen)
        y = torch.randint(0, 5, (16,), generator=gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(run(x).float(), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for lin, mask in zip((m for m in model if isinstance(m, nn.Linear)), masks):
                lin.weight.mul_(mask)
        losses.append(loss.detach())
    return losses


def _compiled_equals_eager(sparse: bool, compile_backend: str, backend: str = "auto", autocast: bool = False,
                           exact: bool = True) -> None:
    torch._dynamo.reset()
    eager, masks = _mlp(sparse, backend)
    compiled = copy.deepcopy(eager)
    losses_e = _train(eager, eager, masks, autocast=autocast)
    losses_c = _train(compiled, torch.compile(compiled, backend=compile_backend, fullgraph=sparse), masks,
                      autocast=autocast)
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {}
    torch.testing.assert_close(losses_c, losses_e, **tol)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, **tol, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_sparse_mlp_trains_like_eager(backend):
    """The sparse path in one graph (fullgraph): the layers are the registered operators."""
    _compiled_equals_eager(True, "aot_eager", backend)


def test_compile_masked_dense_mlp_trains_like_eager():
    _compiled_equals_eager(False, "aot_eager", exact=False)


def test_compile_sparse_mlp_under_autocast():
    _compiled_equals_eager(True, "aot_eager", autocast=True)


@pytest.mark.slow
@pytest.mark.parametrize("sparse", [True, False])
def test_compile_inductor_trains_like_eager(sparse):
    """The default Inductor backend (generates and compiles C++ on CPU: slow, ~1 min here)."""
    t0 = time.perf_counter()
    _compiled_equals_eager(sparse, "inductor", exact=sparse)
    print(f"inductor, sparse={sparse}: {time.perf_counter() - t0:.1f} s")
