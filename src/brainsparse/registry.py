"""Extension points: the removal scores, regrowth scores and density schedules a method can name.

Each registry is a plain dict from a name to a component; a :class:`~brainsparse.methods.MethodConfig`
names its components, and the engine looks them up once, when it is built. Add your own with
:func:`register_removal_score`, :func:`register_regrowth_score` and :func:`register_density_schedule`
(and a whole preset with :func:`brainsparse.methods.register_method`)::

    @bs.register_removal_score("signed")
    def signed(layer: bs.ScoreInput) -> torch.Tensor:
        return layer.weight.float() * layer.mask        # higher = keep

A score is a pure function of one layer's :class:`ScoreInput` returning float scores shaped
like the weight ``(out, in)``: for removal, how much each existing link deserves to stay (only
entries on ``layer.mask`` are read); for regrowth, how much each absent link deserves to come
back (only entries off ``layer.mask`` are read). Random choices take ``layer.generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import BrainsparseError
from .neuroprune import preferential_attachment_shrink, preferential_attachment_shrink_links
from .schedules import ConstantDensity, DensitySchedule, EMSDensity, GradualDensity
from .selection import row_col_counts
from .scoring import ch_l3, l3_path_count
from .scoring.regrowth import (
    GradFactors, cosine_similarity_scores, dense_gradient, gradient_magnitude, random_score_rows, random_scores,
)
from .scoring.removal import mest, relative_importance, weight_magnitude

if TYPE_CHECKING:
    from .methods import MethodConfig

#: what a score may ask the engine to record on the batch before an update
NEEDS = ("gradient", "activations")


class ScoreInput:
    """What a score may read about one layer at a topology update.

    ``mask``: the links scored (removal) or the links kept so far (regrowth); ``weight``: the
    dense ``(out, in)`` weight, zero off the links (formed on first use); ``grad``: the dense
    gradient of the batch before the update (scores that declare ``needs=("gradient",)``;
    formed on first use when the sparse path recorded its factors, see :meth:`grad_rows`);
    ``activations``: (inputs, pre-activations) of that batch (``needs=("activations",)``);
    ``generator``: the engine's random generator; ``method``: the run's method config;
    ``notes``: a dict whose entries land in the layer's update record.
    """

    def __init__(self, name: str, mask: Tensor, weight: Callable[[], Tensor], *,
                 grad: Tensor | GradFactors | None = None, activations: tuple[Tensor, Tensor] | None = None,
                 generator: torch.Generator | None = None, method: MethodConfig | None = None,
                 max_exact_paths: int = 1_000_000_000) -> None:
        self.name = name
        self.mask = mask
        self._weight = weight
        self._weight_value: Tensor | None = None
        self._grad_record = grad
        self.activations = activations
        self.generator = generator
        self.method = method
        self.max_exact_paths = max_exact_paths
        self.notes: dict[str, Any] = {}

    @property
    def weight(self) -> Tensor:
        """The dense ``(out, in)`` weight (detached)."""
        if self._weight_value is None:
            self._weight_value = self._weight()
        return self._weight_value

    @property
    def grad(self) -> Tensor | None:
        """The dense ``(out, in)`` gradient of the batch before the update (formed on first use)."""
        self._grad_record = dense_gradient(self._grad_record)
        return self._grad_record

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self._grad_record = value

    def grad_rows(self, start: int, stop: int) -> Tensor | None:
        """Rows ``[start, stop)`` of :attr:`grad`, without forming the whole gradient."""
        record = self._grad_record
        if isinstance(record, GradFactors):
            return record.rows(start, stop)
        return None if record is None else record[start:stop]


ScoreFn = Callable[[ScoreInput], Tensor]


@dataclass(frozen=True)
class RowForm:
    """A score computed on blocks of a layer's rows, so that a row-sharded (FSDP) layer is scored
    where its rows live and only the partial results travel: ``part(rows)`` maps a
    :class:`ScoreInput` of some rows (their mask, weight, gradient) to those rows of an
    intermediate tensor; ``finish(full, layer)``, if given, turns the gathered intermediate into
    the layer's scores (``layer`` is the full-layer input; only its ``mask`` should be read).
    Together they must give exactly what the score's ``fn`` gives."""

    part: ScoreFn
    finish: Callable[[Tensor, ScoreInput], Tensor] | None = None


#: ``f(layer, start, stop)``: rows ``[start, stop)`` of a score's ``(out, in)`` array
BlockFn = Callable[[ScoreInput, int, int], Tensor]


@dataclass(frozen=True)
class Score:
    """A registered score: the function, what it needs recorded, (removal only) an optional
    form on the link values alone (row-major link order), which the sparse path uses without
    forming a dense weight (it must rank links exactly as ``fn`` does), an optional
    :class:`RowForm` for row-sharded layers, and (regrowth only) an optional ``blocks`` form:
    ``blocks(layer, start, stop)`` gives rows ``[start, stop)`` of ``fn(layer)`` from the
    full-layer input, called once per block in row order (a random score draws its numbers in
    the order ``fn`` draws them), so top-k regrowth never forms the whole ``(out, in)`` array."""

    fn: ScoreFn
    needs: frozenset[str] = field(default_factory=frozenset)
    on_links: Callable[[Tensor], Tensor] | None = None
    rows: RowForm | None = None
    blocks: BlockFn | None = None


@dataclass(frozen=True)
class Regularizer:
    """A proximal step applied to the weights after every optimizer step (dense and link forms)."""

    dense: Callable[[Tensor, Tensor, float], Tensor]  # (weight, mask, step size) -> new weight
    links: Callable[[Tensor, Tensor, Tensor, tuple[int, int], float], Tensor]  # (values, rows, cols, shape, step)


DensityFactory = Callable[..., DensitySchedule]

REMOVAL_SCORES: dict[str, Score] = {}
REGROWTH_SCORES: dict[str, Score | None] = {"none": None}  # "none": no regrowth (NeuroPrune)
DENSITY_SCHEDULES: dict[str, DensityFactory] = {}
REGULARIZERS: dict[str, Regularizer | None] = {"none": None}
_BUILTIN: set[tuple[str, str]] = set()


def _needs(needs: tuple[str, ...] | list[str] | frozenset[str]) -> frozenset[str]:
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise BrainsparseError(f"unknown score need {unknown[0]!r}; allowed: {', '.join(NEEDS)}")
    return frozenset(needs)


def _register(kind: str, table: dict[str, Any], name: str, value: Any, overwrite: bool) -> None:
    key = str(name).lower()
    if not key or key != key.strip():
        raise BrainsparseError(f"{kind} name {name!r} must be a non-empty word")
    if (kind, key) in _BUILTIN and not overwrite:
        raise BrainsparseError(f"{kind} {key!r} is built in; pass overwrite=True to replace it")
    table[key] = value


def register_removal_score(name: str, fn: ScoreFn | None = None, *, needs: tuple[str, ...] = (),
                           on_links: Callable[[Tensor], Tensor] | None = None, rows: RowForm | None = None,
                           overwrite: bool = False):
    """Register ``fn(layer: ScoreInput) -> scores`` as removal score ``name`` (higher = keep).

    Usable as a decorator (``@register_removal_score("name")``). ``needs`` lists what the engine
    must record before an update (``"gradient"``, ``"activations"``); ``rows`` is an optional
    :class:`RowForm` (FSDP then scores each rank's rows without gathering weights). Returns ``fn``.
    """

    def add(f: ScoreFn) -> ScoreFn:
        _register("removal score", REMOVAL_SCORES, name, Score(f, _needs(needs), on_links, rows), overwrite)
        return f

    return add if fn is None else add(fn)


def register_regrowth_score(name: str, fn: ScoreFn | None = None, *, needs: tuple[str, ...] = (),
                            rows: RowForm | None = None, blocks: BlockFn | None = None, overwrite: bool = False):
    """Register ``fn(layer: ScoreInput) -> scores`` as regrowth score ``name`` (higher = grow first).

    Usable as a decorator; ``needs`` and ``rows`` as in :func:`register_removal_score`;
    ``blocks`` is an optional block-of-rows form (see :class:`Score`). Returns ``fn``.
    """

    def add(f: ScoreFn) -> ScoreFn:
        _register("regrowth score", REGROWTH_SCORES, name, Score(f, _needs(needs), rows=rows, blocks=blocks),
                  overwrite)
        return f

    return add if fn is None else add(fn)


def register_density_schedule(name: str, factory: DensityFactory | None = None, *, overwrite: bool = False):
    """Register a density schedule: ``factory(target, method, total_steps, update_every, t_end)``
    returns a :class:`~brainsparse.schedules.DensitySchedule` (usually the class itself).
    Usable as a class decorator. Returns ``factory``."""

    def add(f: DensityFactory) -> DensityFactory:
        _register("density schedule", DENSITY_SCHEDULES, name, f, overwrite)
        return f

    return add if factory is None else add(factory)


def lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    """The component registered as ``name`` (case-insensitive), or a :class:`BrainsparseError`."""
    key = str(name).lower()
    if key not in table:
        raise BrainsparseError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[key]


# ---------------------------------------------------------------------------- built-ins
def _magnitude(layer: ScoreInput) -> Tensor:
    return weight_magnitude(layer.weight, layer.mask)


def _relative_importance(layer: ScoreInput) -> Tensor:
    return relative_importance(layer.weight, layer.mask)


def _mest(layer: ScoreInput) -> Tensor:
    return mest(layer.weight, layer.grad, layer.mask)


def _random(layer: ScoreInput) -> Tensor:
    return random_scores(layer.mask, generator=layer.generator)


def _random_rows(layer: ScoreInput, start: int, stop: int) -> Tensor:
    return random_score_rows(layer.mask, start, stop, generator=layer.generator)


def _gradient(layer: ScoreInput) -> Tensor:
    if layer.grad is None:
        raise BrainsparseError(f"layer {layer.name}: gradient regrowth needs a backward pass before the update step")
    return gradient_magnitude(layer.grad, layer.mask)


def _gradient_rows(layer: ScoreInput, start: int, stop: int) -> Tensor:
    grad = layer.grad_rows(start, stop)
    if grad is None:
        raise BrainsparseError(f"layer {layer.name}: gradient regrowth needs a backward pass before the update step")
    return gradient_magnitude(grad, layer.mask[start:stop])


def _cosine(layer: ScoreInput) -> Tensor:
    if layer.activations is None:
        raise BrainsparseError(f"layer {layer.name}: cosine regrowth needs a training forward pass before the update step")
    return cosine_similarity_scores(*layer.activations, layer.mask)


def _cannistraci_hebb(variant: str) -> ScoreFn:
    """CH-L3 regrowth of ``variant``: the exact path form (if the method asks for it and the
    layer's L3 paths fit ``max_exact_paths``) or the matrix form."""

    def score(layer: ScoreInput) -> Tensor:
        kept = layer.mask
        exact = layer.method.regrowth_exact if layer.method is not None else True
        links = int(torch.count_nonzero(kept))
        per_row, per_col = row_col_counts(kept)
        max_out = int(per_row.max()) if links else 0
        max_in = int(per_col.max()) if links else 0
        del per_row, per_col
        cheap = links * max_out * max_in <= layer.max_exact_paths
        if exact and not cheap and l3_path_count(kept) > layer.max_exact_paths:
            # the exact form costs one step per L3 path; past the budget use the matrix form
            exact = False
            layer.notes["ch_form"] = "matrix (exact form past max_exact_paths)"
        return ch_l3(kept.cpu(), variant=variant, exact=exact).to(kept.device)

    return score


def _builtin(kind: str, table: dict[str, Any], name: str, value: Any) -> None:
    table[name] = value
    _BUILTIN.add((kind, name))


_builtin("removal score", REMOVAL_SCORES, "magnitude",
         Score(_magnitude, on_links=lambda v: v.abs().float(), rows=RowForm(_magnitude)))
# relative importance from the gathered |W| (it reads the weight only through |W|)
_builtin("removal score", REMOVAL_SCORES, "relative_importance",
         Score(_relative_importance, rows=RowForm(_magnitude, lambda full, layer: relative_importance(full, layer.mask))))
_builtin("removal score", REMOVAL_SCORES, "mest", Score(_mest, frozenset({"gradient"}), rows=RowForm(_mest)))
_builtin("regrowth score", REGROWTH_SCORES, "random", Score(_random, blocks=_random_rows))
_builtin("regrowth score", REGROWTH_SCORES, "gradient",
         Score(_gradient, frozenset({"gradient"}), rows=RowForm(_gradient), blocks=_gradient_rows))
for _name, _variant in (("ch3_l3", "CH3"), ("ch2_l3", "CH2"), ("ch3.1_l3", "CH3.1")):
    _builtin("regrowth score", REGROWTH_SCORES, _name, Score(_cannistraci_hebb(_variant)))
_builtin("regrowth score", REGROWTH_SCORES, "cosine", Score(_cosine, frozenset({"activations"})))
_BUILTIN.add(("regrowth score", "none"))
_builtin("density schedule", DENSITY_SCHEDULES, "constant", ConstantDensity)
for _name in ("sigmoid", "cubic", "linear"):
    _builtin("density schedule", DENSITY_SCHEDULES, _name, GradualDensity)
_builtin("density schedule", DENSITY_SCHEDULES, "ems", EMSDensity)
REGULARIZERS["preferential_attachment"] = Regularizer(preferential_attachment_shrink, preferential_attachment_shrink_links)

__all__ = [
    "BlockFn", "DENSITY_SCHEDULES", "REGROWTH_SCORES", "REGULARIZERS", "REMOVAL_SCORES", "Regularizer", "RowForm",
    "Score",
    "ScoreInput",
    "lookup", "register_density_schedule", "register_regrowth_score", "register_removal_score",
]
