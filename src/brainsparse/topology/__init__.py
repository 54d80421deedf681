"""Initial sparse connectivity: bool masks of shape (out_features, in_features).

Initialisers: uniform / Erdős–Rényi (``uniform``), ERK layer densities (``erk_densities``),
bipartite small-world (``bipartite_small_world``), bipartite scale-free
(``bipartite_scale_free``, ``equal_partition``, ``resort_chain``, ``scale_free_chain``),
bipartite receptive field (``bipartite_receptive_field``), correlated (``correlated``,
``feature_correlation``) and sparse weight initialisation (``sparse_weight_init``,
``kaiming_init``). ``initial_masks`` builds the masks of a chain of layers by name.
Every random function takes an explicit ``generator``; masks live on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._validation import check_choice, check_unit_interval
from ..errors import BrainsparseError
from .correlated import correlated, feature_correlation
from .random import _check_generator, check_shapes, erk_densities, uniform
from .receptive_field import bipartite_receptive_field
from .scale_free import _per_layer, bipartite_scale_free, equal_partition, resort_chain, scale_free_chain
from .small_world import bipartite_small_world, ring_lattice
from .weights import kaiming_init, sparse_weight_init

__all__ = [
    "INITIALISERS",
    "initial_masks",
    "uniform",
    "erk_densities",
    "ring_lattice",
    "bipartite_small_world",
    "bipartite_scale_free",
    "equal_partition",
    "resort_chain",
    "scale_free_chain",
    "bipartite_receptive_field",
    "feature_correlation",
    "correlated",
    "sparse_weight_init",
    "kaiming_init",
]

#: single-layer initialisers by name: f(out_features, in_features, density, *, generator, ...)
INITIALISERS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform,
    "er": uniform,
    "bsw": bipartite_small_world,
    "bsf": bipartite_scale_free,
    "brf": bipartite_receptive_field,
    "csti": correlated,
}

_INIT_NAMES = [*INITIALISERS, "erk"]


def _chain_runs(shapes: list[tuple[int, int]]) -> list[list[int]]:
    """Split layer indices into maximal runs whose consecutive shapes chain (in == previous out)."""
    runs: list[list[int]] = []
    for l, shape in enumerate(shapes):
        if runs and shape[1] == shapes[l - 1][0]:
            runs[-1].append(l)
        else:
            runs.append([l])
    return runs


def initial_masks(
    shapes: Sequence[tuple[int, int]],
    density: float | Sequence[float],
    init: str,
    *,
    generator: torch.Generator,
    beta: float = 0.25,
    r: float = 0.3,
    degree: str = "uniform",
    correlation: Tensor | None = None,
) -> list[Tensor]:
    """Initial bool masks for a list of layers, one per ``(out, in)`` shape, in order.

    ``init`` is one of ``uniform``/``er``, ``erk`` (uniform masks with ERK per-layer densities
    from the global ``density``), ``bsw`` (uses ``beta``), ``bsf`` (BSF with equal partition and
    resorting over each run of consecutive layers whose shapes chain), ``brf`` (uses ``r`` and
    ``degree``) or ``csti`` (needs ``correlation``, tiled over every layer). ``density`` is one
    value for all layers or one per layer (``erk`` takes a single global value).
    """
    # [init] dispatch to the initial topologies, algorithms.md §1
    key = check_choice(init, _INIT_NAMES, "init")
    generator = _check_generator(generator)
    shapes = check_shapes(shapes)

    if key == "erk":
        if not isinstance(density, (int, float)) or isinstance(density, bool):
            raise BrainsparseError(
                f"density {density!r} is not a single number; init 'erk' derives per-layer densities "
                "from one global density"
            )
        densities = erk_densities(shapes, density)
        return [uniform(o, i, d, generator=generator) for (o, i), d in zip(shapes, densities)]

    densities = _per_layer(density, len(shapes))
    if key in ("uniform", "er"):
        return [uniform(o, i, d, generator=generator) for (o, i), d in zip(shapes, densities)]
    if key == "bsw":
        beta = check_unit_interval(beta, "beta")
        return [
            bipartite_small_world(o, i, d, beta=beta, generator=generator) for (o, i), d in zip(shapes, densities)
        ]
    if key == "bsf":
        masks: list[Tensor] = []
        for run in _chain_runs(shapes):
            masks += scale_free_chain([shapes[l] for l in run], [densities[l] for l in run], generator=generator)
        return masks
    if key == "brf":
        r = check_unit_interval(r, "r")
        degree = check_choice(degree, ["uniform", "fixed"], "degree")
        return [
            bipartite_receptive_field(o, i, d, r=r, degree=degree, generator=generator)
            for (o, i), d in zip(shapes, densities)
        ]
    # csti
    if correlation is None:
        raise BrainsparseError(
            "init 'csti' needs input data (a correlation matrix): pass correlation="
            "feature_correlation(x) computed from a sample of the inputs, or choose another init "
            f"({', '.join(n for n in _INIT_NAMES if n != 'csti')})"
        )
    return [
        correlated(o, i, d, correlation=correlation, generator=generator) for (o, i), d in zip(shapes, densities)
    ]
