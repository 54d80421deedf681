"""Schedules over training steps: drop fraction, temperature, density, topological early stop.

The functions are pure: they take the current step (or update index) and return a number. The
density schedule classes wrap them in the shape of a learning-rate scheduler (``step()``,
``state_dict()``) for the engine; :mod:`brainsparse.registry` maps their names to them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

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


# ---------------------------------------------------------------------------- density schedules
class DensitySchedule(ABC):
    """The network-wide density over a run, stepped like a learning-rate scheduler.

    :meth:`step` moves to an optimizer step (the next one, or the one given) and returns
    ``(prune_to, density)``: the density to prune to before a topology update there (``None``
    for no gradual pruning) and the density after it. :meth:`at` is the same without moving;
    ``at(0)[1]`` is the starting density. Subclasses implement :meth:`at`.
    """

    def __init__(self, target: float, method: Any = None, total_steps: int | None = None,
                 update_every: int = 1, t_end: int | None = None) -> None:
        self.target = float(target)
        self.method = method
        self.total_steps = total_steps
        self.update_every = int(update_every)
        self.t_end = t_end
        self.last_step = 0

    @abstractmethod
    def at(self, step: int) -> tuple[float | None, float]:
        """``(prune_to, density)`` at optimizer step ``step``."""

    def step(self, step: int | None = None) -> tuple[float | None, float]:
        """Advance to ``step`` (default: the next step) and return :meth:`at` there."""
        self.last_step = self.last_step + 1 if step is None else int(step)
        return self.at(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position saved by :meth:`state_dict`."""
        self.last_step = int(state["last_step"])


class ConstantDensity(DensitySchedule):
    """The target density throughout, no gradual pruning."""

    def at(self, step: int) -> tuple[float | None, float]:
        return None, self.target


class GradualDensity(DensitySchedule):
    """Decay from the method's ``initial_density`` to the target by :func:`density_at` (its
    ``density_schedule``: sigmoid, cubic or linear), reaching it at ``prune_end_fraction`` of the
    run; each update first prunes to the scheduled density [CHTss, GraNet, NeuroPrune]."""

    def __init__(self, target: float, method: Any = None, total_steps: int | None = None,
                 update_every: int = 1, t_end: int | None = None) -> None:
        super().__init__(target, method, total_steps, update_every, t_end)
        self.shape = method.density_schedule
        if total_steps is None:
            raise BrainsparseError(f"density schedule {self.shape!r} needs total_steps")
        self.start = method.initial_density if method.initial_density is not None else self.target
        self.n_updates = max(1, int(method.prune_end_fraction * total_steps) // self.update_every)

    def at(self, step: int) -> tuple[float | None, float]:
        d = density_at(step // self.update_every, self.n_updates, self.start, self.target, self.shape)
        return d, d


class EMSDensity(DensitySchedule):
    """EM&S (MEST): the target plus ``ems_extra[0]`` until 60 % of T_end, then ``ems_extra[1]``,
    then the target at the last update; each update first shrinks to it."""

    def at(self, step: int) -> tuple[float | None, float]:
        t_end = self.t_end or 0
        if step <= 0.6 * t_end:
            extra = self.method.ems_extra[0]
        elif step < t_end - self.update_every:
            extra = self.method.ems_extra[1]
        else:
            extra = 0.0
        d = min(1.0, self.target + extra)  # shrink to d first (a no-op between EM&S steps)
        return d, d
