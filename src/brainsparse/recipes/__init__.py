"""Recipes: one paper's setting for one task, as data (``brainsparse/recipes/*.toml``).

A recipe names the task, the task's settings (model, data, optimizer, schedule, budget), the
sparsity levels the paper ran, the methods it compared and, per method, what the paper used on
this task (initial topology, removal and regrowth rules, ζ schedule, temperatures, density path)
as overrides of the method's preset. It also carries the numbers the paper printed, with where
it printed them. Named *variants* (a method with a different density path, say) run only when
asked for by name.

``task_method_options(task, dataset, method)`` gives the per-task choices that ``brainsparse
train`` applies by default; :mod:`brainsparse.reproduce` runs a whole recipe.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import BrainsparseError
from ..methods import MethodConfig, PRESETS, resolve_method

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_METHOD_FIELDS = {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
_TUPLE_FIELDS = {"removal_temperature", "ems_extra"}
#: the recipe whose method choices a task uses when no recipe names the dataset
TASK_DEFAULT_RECIPES = {"classification": "mlp-mnist", "translation": "transformer-multi30k", "lm": "llama-ptb"}


@dataclass(frozen=True)
class Recipe:
    """One paper's setting for one task (see the module docstring)."""

    name: str
    title: str
    task: str
    citation: str
    budget: str  # "epochs" or "steps": the config field that sets the run's length
    sparsities: list[float]
    methods: list[str]
    config: dict[str, Any]
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str | None = None
    paper: list[dict[str, Any]] = field(default_factory=list)
    paper_note: str = ""
    seconds_per_unit: dict[str, float] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", ""))

    def all_methods(self) -> list[str]:
        """The recipe's methods, then its named variants."""
        return [*self.methods, *self.variants]

    def method_and_options(self, name: str) -> tuple[str, dict[str, Any]]:
        """(preset, overrides of the preset) that ``name`` — a method or a variant — runs with."""
        key = name.lower()
        if key in self.variants:
            variant = dict(self.variants[key])
            base = variant.pop("method")
            variant.pop("note", None)
            return base, _merge(self.method_overrides.get(base, {}), variant)
        if key not in PRESETS:
            allowed = ", ".join(self.all_methods())
            raise BrainsparseError(f"unknown method {name!r} for recipe {self.name!r}; allowed: {allowed}")
        return key, dict(self.method_overrides.get(key, {}))

    def task_settings(self, profile: str | None = None) -> dict[str, Any]:
        """The task config's fields: the recipe's settings with ``profile``'s on top."""
        chosen = profile if profile is not None else self.profile
        if chosen is None:
            if profile is not None:
                raise BrainsparseError(f"recipe {self.name!r} has no profiles")
            return dict(self.config)
        if chosen not in self.profiles:
            allowed = ", ".join(self.profiles) or "none"
            raise BrainsparseError(f"unknown profile {chosen!r} for recipe {self.name!r}; allowed: {allowed}")
        return {**self.config, **self.profiles[chosen]}

    def paper_score(self, method: str, sparsity: float) -> dict[str, Any] | None:
        """The number the paper printed for ``method`` at ``sparsity`` (with its source), if any."""
        for row in self.paper:
            if row["method"] == method and math.isclose(row["sparsity"], sparsity, abs_tol=1e-9):
                return dict(row)
        return None

    def expected_seconds(self, methods: list[str], seeds: int, units: int) -> float:
        """Rough wall time of ``methods × seeds`` runs of ``units`` epochs or steps on 2 cores."""
        default = self.seconds_per_unit.get("default", 0.0)
        return sum(self.seconds_per_unit.get(m, default) for m in methods) * seeds * units

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (for reports)."""
        return {
            "name": self.name, "title": self.title, "task": self.task, "citation": self.citation,
            "budget": self.budget, "sparsities": self.sparsities, "methods": self.methods,
            "variants": {k: dict(v) for k, v in self.variants.items()}, "config": self.config,
            "profiles": self.profiles, "profile": self.profile,
            "method_overrides": self.method_overrides, "paper_note": self.paper_note,
        }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key == "init_params" and isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def _method_fields(table: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - _METHOD_FIELDS)
    if unknown:
        raise BrainsparseError(f"{where}: unknown method option {unknown[0]!r}")
    return {k: (tuple(v) if k in _TUPLE_FIELDS else v) for k, v in table.items()}


def _parse(name: str, data: dict[str, Any]) -> Recipe:
    where = f"recipe {name!r}"
    try:
        overrides = {
            m.lower(): _method_fields(table, f"{where} [overrides.{m}]") for m, table in data.get("overrides", {}).items()
        }
        variants: dict[str, dict[str, Any]] = {}
        for v, table in data.get("variants", {}).items():
            table = dict(table)
            base = table.pop("method", None)
            if base not in PRESETS:
                raise BrainsparseError(f"{where} [variants.{v}]: 'method' must name a preset, not {base!r}")
            note = table.pop("note", "")
            variants[v.lower()] = {"method": base, "note": note, **_method_fields(table, f"{where} [variants.{v}]")}
        recipe = Recipe(
            name=data["name"], title=data["title"], task=data["task"], citation=data["citation"],
            budget=data["budget"], sparsities=[float(s) for s in data["sparsities"]],
            methods=[m.lower() for m in data["methods"]], config=dict(data["config"]),
            method_overrides=overrides, variants=variants, profiles=dict(data.get("profiles", {})),
            profile=data.get("profile"), paper=list(data.get("paper", [])), paper_note=data.get("paper_note", ""),
            seconds_per_unit=dict(data.get("seconds_per_epoch", data.get("seconds_per_step", {}))),
        )
    except KeyError as exc:
        raise BrainsparseError(f"{where} lacks the field {exc.args[0]!r}") from None
    if recipe.budget not in ("epochs", "steps"):
        raise BrainsparseError(f"{where}: budget {recipe.budget!r} is invalid; allowed: epochs, steps")
    for m in recipe.all_methods():
        base, options = recipe.method_and_options(m)
        resolve_method(base, **options)  # every override is a valid change of its preset
    return recipe


def _read(name: str) -> dict[str, Any]:
    path = resources.files(__name__).joinpath(f"{name}.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def recipe_names() -> list[str]:
    """Names of the recipes shipped with brainsparse."""
    return sorted(p.name[: -len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


_CACHE: dict[str, Recipe] = {}


def load_recipe(name: str) -> Recipe:
    """The shipped recipe called ``name`` (see :func:`recipe_names`)."""
    key = str(name).lower()
    names = recipe_names()
    if key not in names:
        raise BrainsparseError(f"unknown recipe {name!r}; allowed: {', '.join(names)}")
    if key not in _CACHE:
        _CACHE[key] = _parse(key, _read(key))
    return _CACHE[key]


def recipe_for(task: str, dataset: str | None) -> Recipe | None:
    """The recipe whose method choices ``task`` on ``dataset`` uses by default: the one for that
    dataset, else the task's default recipe (None for an unknown task)."""
    for name in recipe_names():
        recipe = load_recipe(name)
        if recipe.task == task and recipe.dataset == (dataset or "").lower():
            return recipe
    default = TASK_DEFAULT_RECIPES.get(task)
    return load_recipe(default) if default else None


def task_method_options(task: str, dataset: str | None, method: str) -> tuple[str | None, dict[str, Any]]:
    """(recipe name, method overrides) that ``method`` uses on ``task``/``dataset`` by default."""
    recipe = recipe_for(task, dataset)
    if recipe is None:
        return None, {}
    return recipe.name, dict(recipe.method_overrides.get(method.lower(), {}))


__all__ = ["Recipe", "TASK_DEFAULT_RECIPES", "load_recipe", "recipe_for", "recipe_names", "task_method_options"]
