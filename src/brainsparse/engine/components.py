"""A method's components, looked up in the registries once, when an engine is built."""

from __future__ import annotations

from dataclasses import dataclass

from ..methods import MethodConfig
from ..registry import (
    DENSITY_SCHEDULES, REGROWTH_SCORES, REGULARIZERS, REMOVAL_SCORES, Regularizer, Score, lookup,
)
from ..schedules import ConstantDensity, DensitySchedule

#: the method's exploration choice → whether regrowth is followed by CTRE's random exploration
_EXPLORES = {"none": False, "simultaneous": True}
#: the method's prune scope → whether gradual pruning ranks all layers together
_GLOBAL_PRUNE = {"layer": False, "global": True}


@dataclass(frozen=True)
class Components:
    """The resolved pieces of a method: scores, regularizer, and the switches the update reads."""

    removal: Score
    prune: Score
    regrowth: Score | None  # None: no regrowth (the target follows the links kept)
    regularizer: Regularizer | None
    explores: bool
    global_prune: bool
    auto_kernel: bool  # kernel="auto": layers move between paths after each update

    @property
    def needs(self) -> frozenset[str]:
        """What the scores need recorded before an update (``gradient``, ``activations``)."""
        scores = [self.removal, self.prune] + ([self.regrowth] if self.regrowth is not None else [])
        return frozenset().union(*(s.needs for s in scores))


def resolve(method: MethodConfig, kernel: str) -> Components:
    """Look up ``method``'s components (``kernel`` is the engine's ``kernel`` argument)."""
    return Components(
        removal=lookup(REMOVAL_SCORES, method.removal, "removal score"),
        prune=lookup(REMOVAL_SCORES, method.prune_score, "prune score"),
        regrowth=lookup(REGROWTH_SCORES, method.regrowth, "regrowth score"),
        regularizer=lookup(REGULARIZERS, method.regularizer, "regularizer"),
        explores=lookup(_EXPLORES, method.exploration, "exploration"),
        global_prune=lookup(_GLOBAL_PRUNE, method.prune_scope, "prune scope"),
        auto_kernel=kernel == "auto",
    )


def density_schedule(method: MethodConfig, density: float, total_steps: int | None, update_every: int,
                     t_end: int | None) -> DensitySchedule:
    """The method's density schedule object (constant for dense training)."""
    if not method.sparse:
        return ConstantDensity(density)
    factory = lookup(DENSITY_SCHEDULES, method.density_schedule, "density schedule")
    return factory(density, method, total_steps, update_every, t_end)
