"""Schedules over training steps: drop fraction, temperature, density, topological early stop.

All functions are pure: they take the current step (or update index) and return a number.
"""

from __future__ import annotations

import math

from ._validation import check_choice
from .errors import BrainsparseError

DROP_SCHEDULES = ("constant", "cosine")
DENSITY_SCHEDULES = ("constant", "sigmoid", "cubic", "linear")


def drop_fraction(step: int, t_end: int, zeta: float, schedule: str = "constant") -> float:
    """Fraction of a layer's links removed at an update [schedules].

    constant: ζ; cosine: ζ_t = ζ/2 · (1 + cos(π t / T_end)) (RigL's annealing).
    """
    schedule = check_choice(schedule, DROP_SCHEDULES, "drop-fraction schedule")
    if schedule == "constant":
        return float(zeta)
    frac = min(max(step / max(t_end, 1), 0.0), 1.0)
    return float(zeta) / 2.0 * (1.0 + math.cos(math.pi * frac))  # ζ_t = ζ/2 (1 + cos(π t/T_end))


def linear_temperature(step: int, t_end: int, start: float = 1.0, end: float = 3.0) -> float:
    """Soft-rule temperature rising linearly from ``start`` to ``end`` over T_end [Eq. 2 schedule].

    The MLP code of the CHTs preprint uses T = 1 + 2·step/T_end (start 1, end 3).
    """
    frac = min(max(step / max(t_end, 1), 0.0), 1.0)
    return start + (end - start) * frac


def is_epitopological_minimum(overlap: float, threshold: float = 0.9) -> bool:
    """True when the overlap rate passes the threshold (strictly), the CHT early-stop signal."""
    return overlap > threshold


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def density_at(update: int, n_updates: int, start: float, target: float, schedule: str = "sigmoid", k: float = 6.0) -> float:
    """Density after ``update`` of ``n_updates`` for gradual density decay [CHTss].

    sigmoid: σ̂(t) = (σ(κ(t−m)) − σ(−κm)) / (σ(κ(n−m)) − σ(−κm)), m = n/2, κ = k/m,
    density = start + (target − start)·σ̂(t); cubic (GraNet): sparsity_t = s_f + (s_i − s_f)(1 − t/n)³;
    linear: straight line; constant: the target.
    """
    schedule = check_choice(schedule, DENSITY_SCHEDULES, "density schedule")
    if n_updates < 1:
        raise BrainsparseError(f"n_updates {n_updates!r} must be >= 1")
    t = min(max(update, 0), n_updates)
    if schedule == "constant":
        return float(target)
    if schedule == "linear":
        return start + (target - start) * t / n_updates
    if schedule == "cubic":
        s_i, s_f = 1.0 - start, 1.0 - target
        return 1.0 - (s_f + (s_i - s_f) * (1.0 - t / n_updates) ** 3)  # GraNet cubic sparsity
    m = n_updates / 2.0
    kappa = k / m
    low, high = _sigmoid(-kappa * m), _sigmoid(kappa * (n_updates - m))
    shaped = (_sigmoid(kappa * (t - m)) - low) / (high - low)  # σ̂(t), sigmoid "s_shape"
    return start + (target - start) * shaped
