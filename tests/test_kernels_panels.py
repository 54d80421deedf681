"""The C++ kernel's batch panels: batches of several panels with a ragged last one, both dtypes,
every route (fused backward, separate products, one or two threads) against the dense layer and
against each other, bit for bit where the routes must agree."""

from __future__ import annotations

import pytest
import torch

from test_ops import _layer as op_layer

from brainsparse.kernels import _cpu_ext, available, ops, sparse_linear

pytestmark = pytest.mark.skipif(not available(), reason="C++ kernel unavailable here")

#: 32 floats / 16 doubles per panel: one panel, exactly one, one plus a sample, several + ragged
BATCHES = (5, 16, 32, 33, 100)
DTYPES = (torch.float32, torch.float64)


def _layer(out_f: int, in_f: int, density: float, batch: int, dtype: torch.dtype, seed: int = 0):
    return op_layer(out_f, in_f, density, batch, dtype, seed, grad_y=True)


def _run(s, x, v, b, gy, use_ops=False, need=(True, True, True)):
    xs, vs = x.clone().requires_grad_(need[0]), v.clone().requires_grad_(need[1])
    bs = b.clone().requires_grad_(need[2])
    y = sparse_linear(xs, vs, s, bs, backend="cpp", use_ops=use_ops)
    y.backward(gy)
    return y.detach(), xs.grad, vs.grad, bs.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_panels_match_dense(batch, dtype):
    s, x, v, b, gy = _layer(70, 90, 0.1, batch, dtype, seed=batch)
    y, gx, gv, gb = _run(s, x, v, b, gy)
    w = s.to_dense(v.double())
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(y.double(), x.double() @ w.T + b.double(), **tol)
    torch.testing.assert_close(gx.double(), gy.double() @ w, **tol)
    torch.testing.assert_close(gv.double(), s.gather(gy.double().T @ x.double()), **tol)
    torch.testing.assert_close(gb.double(), gy.double().sum(0), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_panels_independent_of_threads_and_route(batch, dtype):
    """One thread, two threads (parallel passes forced), the eager route and the op route
    (separate input and link gradient calls): the same bits."""
    s, x, v, b, gy = _layer(120, 80, 0.08, batch, dtype, seed=1)
    kernels = _cpu_ext.load()
    threads = torch.get_num_threads()
    results = []
    try:
        kernels.set_parallel_min(0)
        for n in (1, 2):
            torch.set_num_threads(n)
            results += [_run(s, x, v, b, gy), _run(s, x, v, b, gy, use_ops=True)]
    finally:
        kernels.set_parallel_min(_cpu_ext.PARALLEL_MIN)
        torch.set_num_threads(threads)
    results.append(_run(s, x, v, b, gy))  # the default threshold: small passes on one thread
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_panels_partial_gradients(dtype):
    """Only some gradients asked for: each equals its share of the full backward pass."""
    s, x, v, b, gy = _layer(40, 50, 0.2, 70, dtype, seed=3)
    full = _run(s, x, v, b, gy)
    for need in ((True, False, False), (False, True, False), (False, False, True), (False, True, True),
                 (True, False, True)):
        got = _run(s, x, v, b, gy, need=need)
        for wanted, a, c in zip(need, got[1:], full[1:]):
            assert (a is None) != wanted
            if wanted:
                assert torch.equal(a, c)


def test_panels_op_saved_tensor_keeps_its_shape():
    """The forward pass's saved tensor is x in panel layout: still (in, N), the transpose when
    the batch is one panel."""
    s, x, v, b, _ = _layer(10, 12, 0.3, 20, torch.float32)
    _, saved = ops.sparse_linear_forward(x, v, b, s.crow, s.cols, s.rows, s.t_perm, s.t_rows, s.ccol, "cpp")
    assert saved.shape == (12, 20) and torch.equal(saved, x.T)
    s, x, v, b, _ = _layer(10, 12, 0.3, 40, torch.float32)
    _, saved = ops.sparse_linear_forward(x, v, b, s.crow, s.cols, s.rows, s.t_perm, s.t_rows, s.ccol, "cpp")
    assert saved.shape == (12, 40)
    assert torch.equal(saved.reshape(-1)[: 12 * 32].reshape(12, 32), x[:32].T)
