"""Learning-rate schedules of the sequence tasks, as pure functions of the step."""

from __future__ import annotations

import math

from ..errors import BrainsparseError


def noam(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """Noam learning rate at optimizer step ``step`` (1-based).

    lr = scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)   [Vaswani et al. 2017, Eq. 3]
    """
    if warmup < 1:
        raise BrainsparseError(f"warmup {warmup!r} is invalid; allowed: a positive number of steps")
    step = max(int(step), 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def rewarm_factor(step: int, last_update_step: int | None, rewarm_steps: int) -> float:
    """Factor of the short linear re-warm-up after a topology update (iterative noam).

    factor = min(1, (step − last_update_step) / rewarm_steps); 1 before the first update.
    """
    if last_update_step is None or rewarm_steps <= 0:
        return 1.0
    return min(1.0, max(step - last_update_step, 0) / rewarm_steps)


def iterative_noam(
    step: int, d_model: int, warmup: int, scale: float, last_update_step: int | None, rewarm_steps: int = 20
) -> float:
    """Noam schedule with a re-warm-up of ``rewarm_steps`` after every topology update
    (algorithms.md §6 "Iterative noam"; 20 steps ≈ Adam's β₂ = 0.98 time constant 1/(1 − β₂) = 50,
    halved)."""
    return noam(step, d_model, warmup, scale) * rewarm_factor(step, last_update_step, rewarm_steps)


def warmup_cosine(step: int, total_steps: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Factor of the peak learning rate: linear warm-up over ``warmup`` steps, then cosine decay
    to ``min_ratio`` at ``total_steps``.

    factor = t/w for t < w; else r + (1 − r) · ½ (1 + cos(π (t − w)/(T − w)))
    """
    if total_steps < 1:
        raise BrainsparseError(f"total_steps {total_steps!r} is invalid; allowed: a positive integer")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
