"""Sparse execution: link structures, remap, sparse_linear (both CPU backends), SparseLinear."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from brainsparse.errors import BrainsparseError
from brainsparse.kernels import (
    LinkStructure,
    SparseLinear,
    _build,
    _cpu_ext,
    available,
    backend,
    choose_kernel,
    remap,
    resolve,
    set_backend,
    sparse_linear,
    use_backend,
)
from brainsparse.scoring import ch_l3_exact, ch_l3_matrix


def _cpp_available() -> bool:
    return available()


BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not _cpp_available(), reason="C++ kernel unavailable here")),
]


@pytest.fixture(params=BACKENDS)
def impl(request):
    """The backend name, passed explicitly (``backend=impl``) to what runs the kernels."""
    assert resolve(request.param, "cpu", torch.float32) == request.param
    return request.param


def _random_mask(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(out_f, in_f, generator=gen) < density


def _dense_reference(x, w_dense, mask, bias, grad_y):
    """Outputs and gradients of the dense-masked layer, weight gradient restricted to the mask."""
    x = x.detach().clone().requires_grad_()
    w = w_dense.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    y = x @ (w * mask).T
    if b is not None:
        y = y + b
    y.backward(grad_y)
    return y.detach(), x.grad, (w.grad * mask), (b.grad if b is not None else None)


# ---------------------------------------------------------------------------- structure
def test_structure_orders_links_row_major_with_transpose_view():
    mask = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    s = LinkStructure.from_mask(mask)
    assert s.shape == (4, 4) and s.nnz == 6
    assert s.rows.tolist() == [0, 0, 1, 3, 3, 3]
    assert s.cols.tolist() == [1, 3, 0, 0, 1, 3]
    assert s.crow.tolist() == [0, 2, 3, 3, 6]
    assert all(t.dtype == torch.int64 for t in s.tensors().values())
    # column-major order: by column, rows ascending inside a column
    assert s.cols[s.t_perm].tolist() == [0, 0, 1, 1, 3, 3]
    assert s.t_rows.tolist() == s.rows[s.t_perm].tolist() == [1, 3, 0, 3, 0, 3]
    assert s.ccol.tolist() == [0, 2, 4, 4, 6]
    assert torch.equal(s.to_mask(), mask)


@pytest.mark.parametrize("shape,density", [((0, 5), 0.5), ((5, 0), 0.5), ((6, 4), 0.0), ((6, 4), 1.0), ((30, 20), 0.2)])
def test_structure_round_trip(shape, density):
    mask = _random_mask(*shape, density)
    s = LinkStructure.from_mask(mask)
    assert s.nnz == int(mask.sum())
    assert torch.equal(s.to_mask(), mask)
    assert s.crow.shape == (shape[0] + 1,) and s.ccol.shape == (shape[1] + 1,)
    assert torch.equal(s.keys(), torch.sort(s.keys()).values)
    # from unordered indices gives the same structure
    perm = torch.randperm(s.nnz, generator=torch.Generator().manual_seed(1))
    s2 = LinkStructure.from_indices(s.rows[perm], s.cols[perm], shape)
    for name, t in s.tensors().items():
        assert torch.equal(t, getattr(s2, name)), name


def test_structure_rejects_non_2d():
    with pytest.raises(BrainsparseError, match="2-D"):
        LinkStructure.from_mask(torch.ones(3, dtype=torch.bool))


# ---------------------------------------------------------------------------- remap
def test_remap_keeps_kept_links_and_zeros_new_ones():
    old_mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    new_mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    old, new = LinkStructure.from_mask(old_mask), LinkStructure.from_mask(new_mask)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])  # (0,0) (0,1) (1,1) (1,2)
    out = remap(old, new, values)  # (0,0) (0,2) (1,1) (1,2)
    assert out.tolist() == [1.0, 0.0, 3.0, 4.0]
    dense_old = old.to_dense(values)
    assert torch.equal(new.to_dense(out), dense_old * new_mask)


def test_remap_carries_trailing_dimensions():
    gen = torch.Generator().manual_seed(3)
    old = LinkStructure.from_mask(_random_mask(12, 9, 0.4, seed=1))
    new = LinkStructure.from_mask(_random_mask(12, 9, 0.4, seed=2))
    state = torch.randn(old.nnz, 3, 2, generator=gen)
    out = remap(old, new, state)
    assert out.shape == (new.nnz, 3, 2)
    old_keys, new_keys = old.keys().tolist(), new.keys().tolist()
    for i, key in enumerate(new_keys):
        expected = state[old_keys.index(key)] if key in old_keys else torch.zeros(3, 2)
        assert torch.equal(out[i], expected)


def test_remap_edge_cases():
    empty = LinkStructure.from_mask(torch.zeros(3, 4, dtype=torch.bool))
    full = LinkStructure.from_mask(torch.ones(3, 4, dtype=torch.bool))
    assert torch.equal(remap(empty, full, torch.zeros(0)), torch.zeros(12))
    assert remap(full, empty, torch.ones(12)).shape == (0,)
    with pytest.raises(BrainsparseError):
        remap(full, LinkStructure.from_mask(torch.ones(4, 3, dtype=torch.bool)), torch.ones(12))
    with pytest.raises(BrainsparseError):
        remap(full, full, torch.ones(5))


# ---------------------------------------------------------------------------- sparse_linear
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck(impl, with_bias):
    gen = torch.Generator().manual_seed(0)
    s = LinkStructure.from_mask(_random_mask(5, 4, 0.5))
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(s.nnz, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    inputs = (x, v, b) if with_bias else (x, v)

    def fn(*args):
        return sparse_linear(args[0], args[1], s, args[2] if with_bias else None, backend=impl)

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_wide_batch(impl):
    """Batches filling the C++ kernel's vector tiles (16 doubles) plus a tail."""
    gen = torch.Generator().manual_seed(1)
    s = LinkStructure.from_mask(_random_mask(9, 8, 0.4, seed=4))
    x = torch.randn(35, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(s.nnz, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: sparse_linear(x, v, s, b, backend=impl), (x, v, b),
                                    fast_mode=True)


def _check_against_dense(mask, batch_shape, dtype, with_bias, seed, backend="auto"):
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = mask.shape
    s = LinkStructure.from_mask(mask)
    w = torch.randn(out_f, in_f, dtype=dtype, generator=gen)
    x = torch.randn(*batch_shape, in_f, dtype=dtype, generator=gen, requires_grad=True)
    b = torch.randn(out_f, dtype=dtype, generator=gen, requires_grad=True) if with_bias else None
    v = s.gather(w).requires_grad_()
    y = sparse_linear(x, v, s, b, backend=backend)
    gy = torch.randn(y.shape, dtype=dtype, generator=gen)
    y.backward(gy)
    y_ref, gx_ref, gw_ref, gb_ref = _dense_reference(x, w, mask.to(dtype), b, gy)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert y.shape == (*batch_shape, out_f)
    torch.testing.assert_close(y.detach(), y_ref, **tol)
    torch.testing.assert_close(x.grad, gx_ref, **tol)
    torch.testing.assert_close(v.grad, s.gather(gw_ref), **tol)
    if with_bias:
        torch.testing.assert_close(b.grad, gb_ref, **tol)


@st.composite
def _layers(draw):
    out_f = draw(st.integers(1, 12))
    in_f = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["random", "single", "full", "empty_rows_cols", "none"]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        mask = torch.rand(out_f, in_f, generator=gen) < draw(st.floats(0.05, 0.9))
    elif kind == "single":
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
        mask[draw(st.integers(0, out_f - 1)), draw(st.integers(0, in_f - 1))] = True
    elif kind == "full":
        mask = torch.ones(out_f, in_f, dtype=torch.bool)
    elif kind == "empty_rows_cols":
        mask = torch.rand(out_f, in_f, generator=gen) < 0.7
        mask[torch.rand(out_f, generator=gen) < 0.5] = False
        mask[:, torch.rand(in_f, generator=gen) < 0.5] = False
    else:
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
    batch = draw(st.sampled_from([(0,), (1,), (3,), (16,), (32,), (33,), (2, 5), (2, 16), ()]))
    return mask, batch, seed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_layers(), with_bias=st.booleans())
def test_matches_dense_masked(impl, dtype, case, with_bias):
    mask, batch, seed = case
    _check_against_dense(mask, batch, dtype, with_bias, seed, impl)


@pytest.mark.parametrize("batch", [(32,), (4, 8, 3)])
def test_larger_layer_matches_dense(impl, batch):
    """A layer of realistic shape (many rows per work item, vector tiles, 3-D input)."""
    _check_against_dense(_random_mask(70, 90, 0.05, seed=7), batch, torch.float32, True, 2, impl)
    _check_against_dense(_random_mask(70, 90, 0.05, seed=7), batch, torch.float64, True, 2, impl)


def test_half_precision_matches_float64_reference(impl):
    s = LinkStructure.from_mask(_random_mask(20, 15, 0.3))
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(6, 15, dtype=torch.float64, generator=gen)
    v64 = torch.randn(s.nnz, dtype=torch.float64, generator=gen)
    x = x64.bfloat16().requires_grad_()
    v = v64.bfloat16().requires_grad_()
    y = sparse_linear(x, v, s, backend=impl)
    y.backward(torch.ones_like(y))
    w = s.to_dense(v.detach().double())
    torch.testing.assert_close(y.double(), x.detach().double() @ w.T, rtol=0.05, atol=0.1)
    torch.testing.assert_close(x.grad.double(), torch.ones(6, 20, dtype=torch.float64) @ w, rtol=0.05, atol=0.1)
    torch.testing.assert_close(v.grad.double(), s.gather(torch.ones(20, 6, dtype=torch.float64) @ x.detach().double()),
                               rtol=0.05, atol=0.1)


def test_gradient_only_where_needed(impl):
    s = LinkStructure.from_mask(_random_mask(8, 5, 0.5))
    x = torch.randn(4, 5)
    v = torch.randn(s.nnz, requires_grad=True)
    sparse_linear(x, v, s, backend=impl).sum().backward()
    assert x.grad is None and v.grad.shape == (s.nnz,)
    x.requires_grad_()
    v2 = v.detach()
    b = torch.zeros(8, requires_grad=True)
    sparse_linear(x, v2, s, b, backend=impl).sum().backward()
    assert x.grad.shape == (4, 5) and torch.equal(b.grad, torch.full((8,), 4.0))


def test_input_validation():
    s = LinkStructure.from_mask(_random_mask(4, 3, 0.5))
    v = torch.randn(s.nnz)
    with pytest.raises(BrainsparseError, match="features"):
        sparse_linear(torch.randn(2, 5), v, s)
    with pytest.raises(BrainsparseError, match="links"):
        sparse_linear(torch.randn(2, 3), torch.randn(s.nnz + 1), s)
    with pytest.raises(BrainsparseError, match="dtype"):
        sparse_linear(torch.randn(2, 3, dtype=torch.float64), v, s)


@pytest.mark.skipif(not _cpp_available(), reason="C++ kernel unavailable here")
def test_cpp_result_independent_of_thread_count():
    s = LinkStructure.from_mask(_random_mask(300, 200, 0.05))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 200, generator=gen, requires_grad=True)
    v = torch.randn(s.nnz, generator=gen, requires_grad=True)
    kernels = _cpu_ext.load()
    threads = torch.get_num_threads()
    results = []
    try:
        kernels.set_parallel_min(0)  # force the parallel code path even for this small layer
        for n in (1, 2):
            torch.set_num_threads(n)
            x.grad = v.grad = None
            y = sparse_linear(x, v, s, backend="cpp")
            y.backward(torch.ones_like(y))
            results.append((y.detach(), x.grad.clone(), v.grad.clone()))
    finally:
        kernels.set_parallel_min(_cpu_ext.PARALLEL_MIN)
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- backends
def test_backend_argument_and_resolution():
    assert resolve("torch") == "torch" and resolve("TORCH", "cpu") == "torch"
    assert resolve("cpp", "cuda") == "torch"  # GPU tensors always take the PyTorch path
    assert resolve("cpp", "cpu", torch.bfloat16) == "torch"  # the kernel has float32/float64 only
    assert resolve("auto") == ("cpp" if available() else "torch") == backend()
    with pytest.raises(BrainsparseError, match="allowed"):
        resolve("cuda-magic")
    with pytest.raises(BrainsparseError, match="allowed"):
        SparseLinear.from_linear(nn.Linear(3, 2), torch.ones(2, 3, dtype=torch.bool), backend="fast")
    layer = SparseLinear.from_linear(nn.Linear(3, 2), torch.ones(2, 3, dtype=torch.bool), backend="torch")
    assert layer.backend == "torch" and "backend='torch'" in repr(layer)


def test_deprecated_process_switches_still_work(monkeypatch):
    """set_backend / use_backend: deprecated, they change what "auto" means."""
    with pytest.warns(DeprecationWarning, match="backend="):
        switch = use_backend("torch")
    with switch as active:
        assert active == "torch" and backend() == "torch" and resolve("auto") == "torch"
        assert resolve("cpp") == ("cpp" if available() else "torch")  # explicit wins
    assert backend() == ("cpp" if available() else "torch")
    monkeypatch.setenv("BRAINSPARSE_KERNEL_BACKEND", "torch")
    try:
        with pytest.warns(DeprecationWarning):
            assert set_backend(None) == "torch" and backend() == "torch"
        _check_against_dense(_random_mask(10, 12, 0.3), (32,), torch.float64, True, seed=5)
    finally:
        monkeypatch.delenv("BRAINSPARSE_KERNEL_BACKEND")
        with pytest.warns(DeprecationWarning):
            set_backend(None)
    with pytest.raises(BrainsparseError, match="allowed"), pytest.warns(DeprecationWarning):
        set_backend("cuda-magic")
    assert backend() == ("cpp" if available() else "torch")


def test_failed_build_falls_back_silently(monkeypatch, tmp_path):
    saved = dict(_cpu_ext._state)
    monkeypatch.setenv("BRAINSPARSE_KERNEL_CACHE", str(tmp_path))
    try:
        _cpu_ext._state.clear()
        monkeypatch.setattr(_build, "compiler", lambda: None)
        assert resolve("auto") == "torch" and resolve("cpp") == "torch"
        assert "compiler" in _cpu_ext.error()
        _check_against_dense(_random_mask(6, 5, 0.5), (3,), torch.float64, True, seed=1, backend="cpp")
        # the Cannistraci–Hebb scorers fall back to their PyTorch forms
        mask = _random_mask(9, 7, 0.3)
        torch.testing.assert_close(ch_l3_matrix(mask, use_sparse=True), ch_l3_matrix(mask, use_sparse=False))
        assert torch.equal(ch_l3_exact(mask), ch_l3_exact(mask, method="sparse"))
        monkeypatch.undo()
        monkeypatch.setenv("BRAINSPARSE_KERNEL_CACHE", str(tmp_path))
        _cpu_ext._state.clear()
        monkeypatch.setattr(_build, "source", lambda: "this is not C++ {")
        assert resolve("cpp") == "torch"
        assert "failed" in _cpu_ext.error()
    finally:
        _cpu_ext._state.clear()
        _cpu_ext._state.update(saved)


def test_kernel_source_ships_as_a_file():
    text = _build.SOURCE_PATH.read_text(encoding="utf-8")
    assert _build.SOURCE_PATH.suffix == ".cpp" and "bs_forward_f32" in text and "bs_ch_l3" in text
    # the cache key follows the source text (checkouts with other sources never share a build)
    assert _build.key(text, "c++", []) != _build.key(text + "\n", "c++", [])


@pytest.mark.skipif(not _cpp_available(), reason="C++ kernel unavailable here")
def test_first_use_under_autocast_still_loads_the_kernel():
    saved = dict(_cpu_ext._state)
    try:
        _cpu_ext._state.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert resolve("auto") == "cpp", _cpu_ext.error()
    finally:
        _cpu_ext._state.clear()
        _cpu_ext._state.update(saved)


def test_autocast_computes_in_the_autocast_dtype(impl):
    s = LinkStructure.from_mask(_random_mask(12, 10, 0.4))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 10, generator=gen)
    v = torch.randn(s.nnz, generator=gen, requires_grad=True)
    b = torch.randn(12, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse_linear(x, v, s, b, backend=impl)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert v.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), x @ s.to_dense(v.detach()).T + b.detach(), rtol=0.05, atol=0.1)


def test_choose_kernel():
    assert choose_kernel(1568, 1568, 0.01, 32) == "sparse"
    assert choose_kernel(1568, 784, 0.01, 256) == "sparse"
    assert choose_kernel(1568, 1568, 0.9, 32) == "dense"
    assert choose_kernel(1568, 1568, 1.0, 256) == "dense"
    assert choose_kernel(1568, 1568, 0.01, 32, "cuda") == "dense"  # the CSR path loses on a GPU


# ---------------------------------------------------------------------------- SparseLinear
def _linear_and_mask(out_f=9, in_f=7, density=0.4, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out_f).to(dtype)
    return linear, _random_mask(out_f, in_f, density, seed)


def test_from_linear_shares_bias_and_copies_links(impl):
    linear, mask = _linear_and_mask()
    layer = SparseLinear.from_linear(linear, mask, backend=impl)
    assert layer.bias is linear.bias
    assert (layer.in_features, layer.out_features) == (7, 9)
    assert torch.equal(layer.mask, mask)
    assert torch.equal(layer.dense_weight(), linear.weight.detach() * mask)
    assert layer.values.dtype == torch.float64 and layer.rows.dtype == torch.int64
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, linear.weight * mask, linear.bias))
    text = repr(layer)
    assert "in_features=7" in text and "out_features=9" in text and f"links={int(mask.sum())}" in text
    assert "density=" in text
    no_bias = SparseLinear.from_linear(nn.Linear(7, 9, bias=False), mask)
    assert no_bias.bias is None
    with pytest.raises(BrainsparseError, match="shape"):
        SparseLinear.from_linear(linear, mask.T)


def test_set_structure_keeps_parameter_identity_and_remaps_optimizer_state():
    linear, mask = _linear_and_mask(density=0.5)
    layer = SparseLinear.from_linear(linear, mask)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(3, 7, dtype=torch.float64)).sum().backward()
    opt.step()
    values_param = layer.values
    old = layer.structure
    dense_before = layer.dense_weight()
    exp_avg_before = old.to_dense(opt.state[values_param]["exp_avg"])

    # same link count: move one link (drop the first, add the first absent position)
    new_mask = mask.clone()
    new_mask[old.rows[0], old.cols[0]] = False
    absent = (~mask).nonzero()[0]
    new_mask[absent[0], absent[1]] = True
    new = LinkStructure.from_mask(new_mask)
    layer.set_structure(new, optimizer=opt)
    assert layer.values is values_param and layer.values.numel() == old.nnz
    assert torch.equal(layer.mask, new_mask)
    assert torch.equal(layer.dense_weight(), dense_before * new_mask)
    assert torch.equal(new.to_dense(opt.state[values_param]["exp_avg"]), exp_avg_before * new_mask)

    # a different link count still keeps the Parameter object; the optimizer keeps working
    smaller = new_mask & _random_mask(9, 7, 0.5, seed=9)
    layer.set_structure(smaller, optimizer=opt)
    assert layer.values is values_param and layer.values.numel() == int(smaller.sum())
    assert opt.state[values_param]["exp_avg"].shape == (int(smaller.sum()),)
    layer(torch.randn(3, 7, dtype=torch.float64)).sum().backward()
    opt.step()
    explicit = torch.arange(layer.nnz, dtype=torch.float64)
    layer.set_structure(layer.structure, explicit)
    assert torch.equal(layer.values.detach(), explicit)
    with pytest.raises(BrainsparseError, match="shape"):
        layer.set_structure(torch.ones(7, 9, dtype=torch.bool))


def test_state_dict_round_trip():
    linear, mask = _linear_and_mask(density=0.4)
    layer = SparseLinear.from_linear(linear, mask)
    state = copy.deepcopy(layer.state_dict())
    assert {"values", "bias", "rows", "cols", "crow", "t_perm", "t_rows", "ccol"} <= set(state)

    # same link count, another topology
    linear2, _ = _linear_and_mask(seed=1)
    other_mask = torch.zeros_like(mask).flatten()
    other_mask[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(2))[: int(mask.sum())]] = True
    other = SparseLinear.from_linear(linear2, other_mask.view_as(mask))
    values_param = other.values
    other.load_state_dict(state)
    assert other.values is values_param
    assert torch.equal(other.mask, mask) and torch.equal(other.dense_weight(), layer.dense_weight())
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(other(x), layer(x))

    # a different link count is resized on load
    third = SparseLinear.from_linear(linear2, _random_mask(9, 7, 0.9, seed=3))
    third.load_state_dict(state)
    assert torch.equal(third.mask, mask) and torch.equal(third(x), layer(x))


def test_module_to_dtype_keeps_integer_buffers():
    linear, mask = _linear_and_mask(dtype=torch.float32)
    layer = SparseLinear.from_linear(linear, mask).to(torch.float64)
    assert layer.values.dtype == torch.float64 and layer.crow.dtype == torch.int64
    x = torch.randn(2, 7, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


def _masked_mlp_pair(sizes, density, seed, backend="auto"):
    torch.manual_seed(seed)
    dense = [nn.Linear(a, b).double() for a, b in itertools.pairwise(sizes)]
    masks = [_random_mask(b, a, density, seed + i) for i, (a, b) in enumerate(itertools.pairwise(sizes))]
    with torch.no_grad():
        for lin, m in zip(dense, masks):
            lin.weight.mul_(m)
    sparse = [SparseLinear.from_linear(copy.deepcopy(lin), m, backend=backend) for lin, m in zip(dense, masks)]
    for lin, m in zip(dense, masks):  # the engine's gradient masking
        lin.weight.register_hook(lambda g, m=m: g * m)

    def seq(layers):
        mods = []
        for i, layer in enumerate(layers):
            mods.append(layer)
            if i < len(layers) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    return seq(dense), seq(sparse), masks


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_training_matches_dense_masked(impl, optimizer):
    sizes = [10, 16, 16, 4]
    dense, sparse, masks = _masked_mlp_pair(sizes, 0.3, seed=0, backend=impl)

    def make(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=0.01)
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.01)

    opt_d, opt_s = make(dense.parameters()), make(sparse.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, sizes[0], dtype=torch.float64, generator=gen)
        y = torch.randint(0, sizes[-1], (8,), generator=gen)
        for model, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():  # the engine re-masks weights after each step
            for lin, m in zip(dense[::2], masks):
                lin.weight.mul_(m)
    for lin, sl in zip(dense[::2], sparse[::2]):
        torch.testing.assert_close(sl.dense_weight(), lin.weight.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sl.bias.detach(), lin.bias.detach(), rtol=1e-10, atol=1e-12)
        state = opt_s.state[sl.values]
        assert all(t.shape in ((sl.nnz,), ()) for t in state.values() if torch.is_tensor(t))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    linear, mask = _linear_and_mask(out_f=40, in_f=30, density=0.2, dtype=torch.float32)
    layer = SparseLinear.from_linear(linear, mask)
    gpu = copy.deepcopy(layer).cuda()
    assert gpu.rows.is_cuda
    x = torch.randn(16, 30)
    xc = x.cuda().requires_grad_()
    x.requires_grad_()
    layer(x).square().sum().backward()
    gpu(xc).square().sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.values.grad.cpu(), layer.values.grad, rtol=1e-4, atol=1e-4)
    new = LinkStructure.from_mask(_random_mask(40, 30, 0.2, seed=5).cuda())
    gpu.set_structure(new)
    assert gpu.mask.is_cuda
