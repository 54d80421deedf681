"""``kernel="auto"``: per-layer choice from the measured crossover table (shape × rows per step)."""

import math

import pytest
import torch

import brainsparse as bs
from brainsparse.bench_crossover import DENSITIES, crossover_from, measure
from brainsparse.kernels import available, choose_kernel, crossover_density, crossover_table
from brainsparse.models import MLP

needs_cpp = pytest.mark.skipif(not available(), reason="the measured table is the compiled kernel's")


def test_table_is_complete_and_says_how_it_was_measured():
    t = crossover_table()
    assert "process CPU time" in t["about"] and t["machine"]["threads"] == 1
    for out_f, in_f in t["shapes"]:
        key = f"{out_f}x{in_f}"
        assert set(t["crossover"][key]) == {str(r) for r in t["rows"]}
        for r in t["rows"]:
            assert 0.0 <= t["crossover"][key][str(r)] <= max(t["densities"])
            assert len(t["sparse_ms"][key][str(r)]) == len(t["densities"]) and t["masked_ms"][key][str(r)] > 0


@needs_cpp
def test_auto_picks_sparse_for_the_paper_mlp_at_one_percent():
    torch.manual_seed(0)
    engine = bs.sparsify(MLP([784, 1568, 1568, 1568, 10]), None, method="static", density=0.01, kernel="auto",
                         batch_size=32)
    assert len(engine.layers) == 3 and all(layer.sparse_kernel for layer in engine.layers.values())


@needs_cpp
def test_dense_ish_layers_stay_masked_at_any_shape_and_rows():
    t = crossover_table()
    for out_f, in_f in t["shapes"]:
        for rows in (1, *t["rows"], 10**5):
            assert choose_kernel(out_f, in_f, 0.9, rows) == "dense"
    assert choose_kernel(1568, 1568, 0.01, 32, "cuda") == "dense"


@needs_cpp
def test_choice_follows_rows_per_step_where_the_table_says_so():
    t = crossover_table()
    rows_lo, rows_hi = min(t["rows"]), max(t["rows"])
    checked = 0
    for out_f, in_f in t["shapes"]:
        lo = crossover_density(rows_lo, "cpp", (out_f, in_f))
        hi = crossover_density(rows_hi, "cpp", (out_f, in_f))
        assert lo == t["crossover"][f"{out_f}x{in_f}"][str(rows_lo)]  # grid points are the table itself
        if abs(lo - hi) < 0.05:
            continue
        d = (lo + hi) / 2
        assert choose_kernel(out_f, in_f, d, rows_lo) != choose_kernel(out_f, in_f, d, rows_hi)
        checked += 1
    assert checked  # the measured table has a rows dependence (the crossover falls as rows grow)


@needs_cpp
def test_interpolation_lies_between_grid_points_and_is_constant_outside():
    t = crossover_table()
    (o0, i0), (o1, i1) = t["shapes"][2], t["shapes"][3]
    r0, r1 = t["rows"][1], t["rows"][2]
    corners = [t["crossover"][f"{o}x{i}"][str(r)] for o, i in ((o0, i0), (o1, i1)) for r in (r0, r1)]
    mid_rows = int(math.sqrt(r0 * r1))
    mid_shape = (int(math.sqrt(o0 * o1)), int(math.sqrt(i0 * i1)))
    c = crossover_density(mid_rows, "cpp", mid_shape)
    assert min(corners) - 1e-9 <= c <= max(corners) + 1e-9
    o, i = t["shapes"][0]
    assert crossover_density(1, "cpp", (2, 2)) == t["crossover"][f"{o}x{i}"][str(min(t["rows"]))]


def test_crossover_from_a_line_through_the_sparse_times():
    densities = [0.1, 0.2, 0.3]
    assert crossover_from(2.0, densities, [1.0, 1.5, 2.0]) == pytest.approx(0.3)
    assert crossover_from(10.0, densities, [1.0, 1.5, 2.0]) == pytest.approx(0.3)  # not beyond the measured
    assert crossover_from(0.4, densities, [1.0, 1.5, 2.0]) == 0.0
    assert crossover_from(5.0, densities, [1.0, 1.0, 1.0]) == 0.3


def test_measure_writes_the_table_layout():
    t = measure(shapes=((16, 8),), rows=(4,), densities=(0.1, 0.5), min_rounds=1, budget_s=0.0)
    assert t["crossover"]["16x8"]["4"] <= 0.5 and len(t["sparse_ms"]["16x8"]["4"]) == 2
    assert t["shapes"] == [[16, 8]] and t["densities"] == [0.1, 0.5] and DENSITIES
