"""Training-time measures the papers report: AAE, change relative to dense, ANP, overlap, ITOP.

Pure functions on plain numbers and bool masks (algorithms.md §3, §5, §8; reference.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from ..errors import BrainsparseError
from ..percolation import active_hidden_neurons

__all__ = [
    "area_across_epochs",
    "relative_to_dense",
    "active_neuron_rate",
    "overlap_rate",
    "itop_rate",
]

_AAE_RULES = ("mean", "trapezoid")


def _finite_floats(values: Sequence[float], name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise BrainsparseError(f"{name} must be a sequence of numbers, got {values!r}") from None
    for i, v in enumerate(out):
        if not math.isfinite(v):
            raise BrainsparseError(f"{name}[{i}] is {v!r}; allowed: finite numbers")
    return out


def area_across_epochs(accuracies: Sequence[float], rule: str = "mean") -> float:
    """Area across epochs [AAE] (algorithms.md §8, ICLR24): the area under the
    test-accuracy-per-epoch curve, normalised by the number of epochs.

    With ``a_1 … a_E`` the test accuracy after each epoch:

    - ``rule="mean"`` (default): ``AAE = (1/E) · Σ_{e=1..E} a_e``. This is the area of the
      accuracy curve drawn as one unit-wide step per epoch over ``[0, E]`` divided by ``E`` —
      the cumulative accuracy over epochs divided by the number of epochs, i.e. exactly the
      mean accuracy over epochs, which is how the papers describe AAE. It rewards a method
      that reaches high accuracy early.
    - ``rule="trapezoid"``: the trapezoid rule over epochs ``1..E`` divided by ``E − 1``:
      ``(a_1/2 + a_2 + … + a_{E−1} + a_E/2) / (E − 1)``; it weights the first and last epoch
      by half and is close to, but not equal to, the mean.

    With one epoch both rules return that epoch's accuracy. Accuracies may be fractions or
    percentages; AAE has the same unit.
    """
    values = _finite_floats(accuracies, "accuracies")
    if not values:
        raise BrainsparseError("area_across_epochs needs at least one epoch's accuracy, got none")
    key = str(rule).lower()
    if key not in _AAE_RULES:
        raise BrainsparseError(f"unknown AAE rule {rule!r}; allowed: {', '.join(_AAE_RULES)}")
    if len(values) == 1:
        return values[0]
    if key == "mean":
        return math.fsum(values) / len(values)
    return (math.fsum(values) - 0.5 * (values[0] + values[-1])) / (len(values) - 1)


def relative_to_dense(value: float, dense_value: float) -> float:
    """Percentage change of ``value`` with respect to the dense (fully connected) network:
    ``100 · (value − dense_value) / |dense_value|`` (algorithms.md §8; PRE24 Fig. 4d/5 plot
    accuracy and AAE this way — a sparse method in the first quadrant learns faster and better).

    Positive means larger than dense (better for accuracy and AAE, worse for perplexity).
    Raises :class:`BrainsparseError` when ``dense_value`` is 0 (the change is undefined).
    """
    v, d = _finite_floats([value, dense_value], "relative_to_dense arguments")
    if d == 0.0:
        raise BrainsparseError("dense_value is 0: a percentage change relative to it is undefined")
    return 100.0 * (v - d) / abs(d)


def _check_mask(mask: object, what: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise BrainsparseError(f"{what} is a {type(mask).__name__}; allowed: a torch.Tensor mask")
    if mask.dim() != 2:
        raise BrainsparseError(f"{what} has shape {tuple(mask.shape)}; allowed: a 2-D (out, in) mask")
    return mask.bool()


def active_neuron_rate(chains_masks: Sequence[Sequence[Tensor]]) -> float:
    """Active-neuron post-percolation rate [ANP] (algorithms.md §3):
    ``ANP = active hidden neurons / all hidden neurons``.

    ``chains_masks`` is a list of chains, each a list of (out, in) masks in which the outputs of
    one layer are the inputs of the next. The outputs of every sparse layer count as hidden
    neurons. An output neuron is active when it has an incoming link and, unless its layer is the
    last of its chain, an outgoing link in the next layer; the last layer's outputs (which feed a
    dense layer) are active when they have an incoming link — the rule of
    :func:`brainsparse.percolation.active_hidden_neurons`, so this equals the engine's
    ``active_neuron_rate``. Input pixels are not counted (the official code's ``--record_anp``
    counts them too, reference.md §8; algorithms.md decides). No chains → 1.0, as the engine.
    """
    if isinstance(chains_masks, Tensor) or not isinstance(chains_masks, Sequence):
        raise BrainsparseError("chains_masks must be a list of chains, each a list of (out, in) masks")
    active = total = 0
    for c, chain in enumerate(chains_masks):
        if isinstance(chain, Tensor) or not isinstance(chain, Sequence):
            raise BrainsparseError(
                f"chains_masks[{c}] is a {type(chain).__name__}; allowed: a list of (out, in) masks "
                "(wrap a single chain as [chain])"
            )
        masks = [_check_mask(m, f"chains_masks[{c}][{i}]") for i, m in enumerate(chain)]
        for i, (a, b) in enumerate(zip(masks[:-1], masks[1:])):
            if a.shape[0] != b.shape[1]:
                raise BrainsparseError(
                    f"chains_masks[{c}]: layer {i} has {a.shape[0]} outputs but layer {i + 1} has "
                    f"{b.shape[1]} inputs; consecutive layers of a chain must share neurons"
                )
        for alive in active_hidden_neurons(masks):
            active += int(alive.sum())
            total += alive.numel()
    return active / total if total else 1.0


def overlap_rate(removed: Tensor, regrown: Tensor) -> float:
    """Overlap rate of one topology update [early stop] (algorithms.md §5):
    ``|removed ∩ regrown| / |regrown|`` on bool masks of the same shape; 0 when nothing regrew.

    An overlap above θ (0.9 in the official code) marks an epitopological local minimum.
    """
    for name, m in (("removed", removed), ("regrown", regrown)):
        if not isinstance(m, Tensor):
            raise BrainsparseError(f"{name} is a {type(m).__name__}; allowed: a torch.Tensor bool mask")
    removed, regrown = removed.bool(), regrown.bool()
    if removed.shape != regrown.shape:
        raise BrainsparseError(
            f"removed has shape {tuple(removed.shape)} but regrown has {tuple(regrown.shape)}; they must match"
        )
    n_regrown = int(regrown.sum())
    if n_regrown == 0:
        return 0.0
    return int((removed & regrown).sum()) / n_regrown


def itop_rate(ever_active: Tensor | Mapping[str, Tensor] | Sequence[Tensor]) -> float:
    """In-time over-parameterisation rate [ITOP] (algorithms.md §8, Liu et al. 2021):
    ``|∪_t M_t| / (out · in)``, the share of a layer's positions that were ever a link.

    ``ever_active`` is the bool union of a layer's masks over training (the engine keeps it as
    ``ever_active``). Given several layers (a dict or list of masks), returns the mean of the
    per-layer rates, as the engine and the official ``--itop`` flag do.
    """
    if isinstance(ever_active, Tensor):
        if ever_active.numel() == 0:
            raise BrainsparseError("ever_active is empty; allowed: a mask with at least one position")
        return float(ever_active.bool().float().mean())
    layers = list(ever_active.values()) if isinstance(ever_active, Mapping) else list(ever_active)
    if not layers:
        raise BrainsparseError("itop_rate needs at least one layer's ever-active mask, got none")
    for i, m in enumerate(layers):
        if not isinstance(m, Tensor):
            raise BrainsparseError(f"ever_active[{i}] is a {type(m).__name__}; allowed: a torch.Tensor mask")
    return sum(itop_rate(m) for m in layers) / len(layers)
