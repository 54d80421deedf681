"""Method presets: each named method is a configuration of the shared pieces, nothing more.

A :class:`MethodConfig` names the initial topology, removal score and rule, percolation,
regrowth score and rule, and the schedules. ``resolve_method("chts", drop_fraction=0.2)``
returns the preset with overrides applied and validated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._validation import check_choice, check_density, check_unit_interval
from .errors import BrainsparseError
from . import registry
from .schedules import DROP_SCHEDULES

#: the built-in regrowth scores and density schedules (the registries in
#: :mod:`brainsparse.registry` hold these plus any registered ones)
REGROWTH_SCORES = ("random", "gradient", "ch3_l3", "ch2_l3", "ch3.1_l3", "cosine", "none")
DENSITY_SCHEDULES = ("constant", "sigmoid", "cubic", "linear", "ems")
EXPLORATIONS = ("none", "simultaneous")
REGULARIZERS = ("none", "preferential_attachment")
INITS = ("uniform", "er", "erk", "bsw", "bsf", "brf", "csti")
WEIGHT_INITS = ("swi", "kaiming", "keep")
SELECTION_RULES = ("topk", "soft")
PRUNE_SCOPES = ("layer", "global")


@dataclass(frozen=True)
class MethodConfig:
    """Everything that distinguishes one sparse-training method from another."""

    name: str
    sparse: bool = True  # False: dense training, the engine only reports
    dynamic: bool = True  # False: static sparse, the topology never changes
    init: str = "uniform"  # initial topology (see brainsparse.topology)
    init_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"beta": 0.25}
    weight_init: str = "swi"  # swi | kaiming | keep
    removal: str = "magnitude"  # magnitude | relative_importance | mest
    removal_rule: str = "topk"  # topk | soft
    removal_temperature: tuple[float, float] = (1.0, 3.0)  # soft removal T, linear start -> end over T_end
    percolation: bool = False
    regrowth: str = "random"  # random | gradient | ch3_l3 | ch2_l3 | ch3.1_l3
    regrowth_exact: bool = True  # CH scores: exact path form (True) or matrix form (False)
    regrowth_rule: str = "topk"  # topk | soft
    regrowth_temperature: float = 1.0  # soft regrowth exponent T' (delta = 0.5)
    drop_fraction: float = 0.3  # zeta
    drop_schedule: str = "constant"  # constant | cosine
    t_end_fraction: float = 1.0  # topology updates only while step < t_end_fraction * total_steps
    early_stop: float | None = None  # overlap threshold that freezes a layer (CHT), None = never
    density_schedule: str = "constant"  # constant | sigmoid (CHTss) | cubic (GraNet) | linear | ems (MEST)
    initial_density: float | None = None  # start of a decay schedule (CHTss: 0.5)
    prune_end_fraction: float = 0.8  # decay reaches the target at this fraction of total_steps
    prune_score: str = "relative_importance"  # score of the gradual pruning step
    prune_scope: str = "layer"  # gradual pruning per layer, or "global": one threshold across layers (GraNet)
    ems_extra: tuple[float, float] = (0.05, 0.025)  # EM&S: extra density before / after 60 % of T_end
    exploration: str = "none"  # CTRE: "simultaneous" replaces re-added links by random ones
    regularizer: str = "none"  # NeuroPrune: "preferential_attachment" proximal shrinkage every step
    regularizer_strength: float = 0.01  # λ of the preferential-attachment penalty
    head_pruning: bool = False  # NeuroPrune: remove attention heads that duplicate a kept head
    head_threshold: float = 0.9  # cosine similarity above which two heads' outputs are duplicates

    def __post_init__(self) -> None:
        check_choice(self.init, INITS, "init")
        check_choice(self.weight_init, WEIGHT_INITS, "weight init")
        check_choice(self.removal, registry.REMOVAL_SCORES, "removal score")
        check_choice(self.removal_rule, SELECTION_RULES, "removal rule")
        check_choice(self.regrowth, registry.REGROWTH_SCORES, "regrowth score")
        check_choice(self.regrowth_rule, SELECTION_RULES, "regrowth rule")
        check_choice(self.drop_schedule, DROP_SCHEDULES, "drop schedule")
        check_choice(self.density_schedule, registry.DENSITY_SCHEDULES, "density schedule")
        check_choice(self.prune_score, registry.REMOVAL_SCORES, "prune score")
        check_choice(self.prune_scope, PRUNE_SCOPES, "prune scope")
        check_choice(self.exploration, EXPLORATIONS, "exploration")
        check_choice(self.regularizer, registry.REGULARIZERS, "regularizer")
        if self.initial_density is not None:
            check_density(self.initial_density, "initial_density")
        if not 0.0 < self.prune_end_fraction <= 1.0:
            raise BrainsparseError(f"prune_end_fraction {self.prune_end_fraction!r} is outside (0, 1]")
        check_unit_interval(self.head_threshold, "head_threshold")
        if self.regularizer_strength < 0:
            raise BrainsparseError(f"regularizer_strength {self.regularizer_strength!r} must be >= 0")
        check_unit_interval(self.drop_fraction, "drop_fraction")
        if not 0.0 < self.t_end_fraction <= 1.0:
            raise BrainsparseError(f"t_end_fraction {self.t_end_fraction!r} is outside (0, 1]")
        if self.early_stop is not None:
            check_unit_interval(self.early_stop, "early_stop threshold")
        if self.regrowth_temperature < 0 or min(self.removal_temperature) < 0:
            raise BrainsparseError("temperatures must be >= 0")
        if "beta" in self.init_params:
            check_unit_interval(self.init_params["beta"], "beta")
        if "r" in self.init_params:
            check_unit_interval(self.init_params["r"], "r")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description."""
        d = dataclasses.asdict(self)
        d["removal_temperature"] = list(self.removal_temperature)
        d["ems_extra"] = list(self.ems_extra)
        return d


PRESETS: dict[str, MethodConfig] = {
    "dense": MethodConfig(name="dense", sparse=False, dynamic=False, weight_init="keep"),
    "static": MethodConfig(name="static", dynamic=False),
    "set": MethodConfig(name="set", init="uniform", removal="magnitude", regrowth="random"),
    "rigl": MethodConfig(
        name="rigl", init="uniform", removal="magnitude", regrowth="gradient",
        drop_schedule="cosine", t_end_fraction=0.75,
    ),
    "cht": MethodConfig(
        name="cht", init="csti", removal="magnitude", percolation=True, regrowth="ch3_l3",
        regrowth_exact=True, early_stop=0.9,
    ),
    "chts": MethodConfig(
        name="chts", init="bsw", init_params={"beta": 0.25}, removal="magnitude", removal_rule="soft",
        removal_temperature=(1.0, 3.0), percolation=True, regrowth="ch3_l3", regrowth_exact=True,
        regrowth_rule="soft", regrowth_temperature=1.0,
    ),
    # CHTs + sigmoid gradual density decay from 50 % to the target, BRF init, CH2-L3 matrix form
    # (NeurIPS'25 recipe: at 50 % density exact path enumeration is out of reach)
    "chtss": MethodConfig(
        name="chtss", init="brf", init_params={"r": 0.3}, removal="magnitude", removal_rule="soft",
        removal_temperature=(1.0, 3.0), percolation=True, regrowth="ch2_l3", regrowth_exact=False,
        regrowth_rule="soft", regrowth_temperature=1.0, density_schedule="sigmoid", initial_density=0.5,
        prune_end_fraction=0.8, prune_score="relative_importance",
    ),
    # GraNet: cubic gradual pruning by global magnitude (one threshold across layers) plus
    # RigL-style gradient regrowth within each layer
    "granet": MethodConfig(
        name="granet", init="uniform", removal="magnitude", regrowth="gradient", drop_schedule="cosine",
        density_schedule="cubic", initial_density=0.5, prune_end_fraction=0.8, prune_score="magnitude",
        prune_scope="global",
    ),
    # MEST: links leave by |W| + λ|∇W| at every update (hard rule, ζ), random regrowth, EM&S
    # density (5 % then 2.5 % extra), whose shrink steps rank by the same score
    "mest": MethodConfig(
        name="mest", init="uniform", removal="mest", regrowth="random", density_schedule="ems",
        t_end_fraction=0.75, prune_score="mest",
    ),
    # CTRE: cosine similarity of activations for regrowth, with simultaneous random exploration
    "ctre": MethodConfig(
        name="ctre", init="uniform", removal="magnitude", regrowth="cosine", exploration="simultaneous",
        drop_fraction=0.2,
    ),
    # NeuroPrune: dense start, preferential-attachment shrinkage every step, cubic pruning by
    # magnitude to the target, no regrowth
    "neuroprune": MethodConfig(
        name="neuroprune", init="uniform", weight_init="keep", removal="magnitude", drop_fraction=0.0,
        regrowth="none", density_schedule="cubic", initial_density=1.0, prune_end_fraction=0.5,
        prune_score="magnitude", regularizer="preferential_attachment", regularizer_strength=0.01,
        head_pruning=True, head_threshold=0.9,
    ),
}


_BUILTIN_PRESETS = frozenset(PRESETS)


def register_method(name: str, config: MethodConfig | None = None, *, overwrite: bool = False,
                    **fields: Any) -> MethodConfig:
    """Add a named preset, usable as ``sparsify(..., method=name)``: ``config`` under ``name``,
    or ``MethodConfig(name=name, **fields)``. A built-in preset is replaced only with
    ``overwrite=True``; a registered one is replaced silently. Returns the stored config."""
    key = str(name).lower()
    if not key or key != key.strip():
        raise BrainsparseError(f"method name {name!r} must be a non-empty word")
    if key in _BUILTIN_PRESETS and not overwrite:
        raise BrainsparseError(f"method {key!r} is built in; pass overwrite=True to replace it")
    if config is None:
        config = MethodConfig(name=key, **fields)
    else:
        config = dataclasses.replace(config, name=key, **fields)
    PRESETS[key] = config
    return config


def method_names() -> list[str]:
    """Names of the built-in presets."""
    return list(PRESETS)


def resolve_method(method: str | MethodConfig, **overrides: Any) -> MethodConfig:
    """The preset called ``method`` (or ``method`` itself) with ``overrides`` applied and checked."""
    if isinstance(method, MethodConfig):
        base = method
    else:
        key = check_choice(method, PRESETS, "method")
        base = PRESETS[key]
    if not overrides:
        return base
    known = {f.name for f in dataclasses.fields(MethodConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BrainsparseError(f"unknown method option {unknown[0]!r}; allowed: {', '.join(sorted(known - {'name'}))}")
    if "init_params" in overrides:
        overrides = dict(overrides)
        overrides["init_params"] = {**base.init_params, **overrides["init_params"]}
    return dataclasses.replace(base, **overrides)
