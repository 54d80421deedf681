import math

import pytest

from brainsparse.errors import BrainsparseError
from brainsparse.schedules import density_at, drop_fraction, is_epitopological_minimum, linear_temperature


def test_cosine_drop_fraction_values():
    # reference.md §3.7: ζ0 = 0.3 gives 0.30, 0.256, 0.15, 0.044, 0 at 0, 25, 50, 75, 100 %.
    values = [drop_fraction(t, 100, 0.3, "cosine") for t in (0, 25, 50, 75, 100)]
    assert values == pytest.approx([0.3, 0.2561, 0.15, 0.0439, 0.0], abs=1e-4)
    assert drop_fraction(60, 100, 0.3, "constant") == 0.3


def test_linear_temperature():
    assert linear_temperature(0, 100) == 1.0
    assert linear_temperature(50, 100) == 2.0
    assert linear_temperature(100, 100) == 3.0
    assert linear_temperature(25, 100, 1.0, 9.0) == 3.0


def test_early_stop_threshold_is_strict():
    assert is_epitopological_minimum(0.95) and not is_epitopological_minimum(0.9)


def test_sigmoid_density_matches_reference_table():
    # reference.md §6.4: sparsity 0.5 -> 0.9 over 80 iterations.
    expected = {0: 0.500, 10: 0.503, 20: 0.518, 30: 0.572, 40: 0.700, 50: 0.828, 60: 0.882, 70: 0.897, 80: 0.900}
    for t, sparsity in expected.items():
        assert 1 - density_at(t, 80, 0.5, 0.1, "sigmoid") == pytest.approx(sparsity, abs=1.5e-3)


def test_cubic_and_linear_density():
    assert 1 - density_at(10, 80, 0.5, 0.1, "cubic") == pytest.approx(0.632, abs=1e-3)
    assert 1 - density_at(40, 80, 0.5, 0.1, "cubic") == pytest.approx(0.850, abs=1e-3)
    assert density_at(40, 80, 0.5, 0.1, "linear") == pytest.approx(0.3)
    assert density_at(80, 80, 0.5, 0.1, "linear") == pytest.approx(0.1)
    assert density_at(3, 80, 0.5, 0.1, "constant") == 0.1


def test_unknown_schedule_names_allowed_values():
    with pytest.raises(BrainsparseError, match="allowed: constant, cosine"):
        drop_fraction(0, 1, 0.3, "exponential")
    with pytest.raises(BrainsparseError, match="sigmoid"):
        density_at(0, 10, 0.5, 0.1, "step")
    assert math.isfinite(density_at(5, 10, 0.5, 0.1))
