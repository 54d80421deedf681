"""Degrees of a sparse layer's bipartite graph and their power-law exponent (algorithms.md §8).

A layer mask ``M`` of shape (out, in) is a bipartite graph: the degree of an output neuron is
its fan-in (row sum), of an input neuron its fan-out (column sum). ``scipy`` is imported when a
function needs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._optional import require
from ..errors import BrainsparseError

__all__ = ["degree_distribution", "power_law_exponent"]

_POWER_LAW_ESTIMATORS = ("approx", "exact")
#: range of exponents searched, as the papers' plfit calls (reference.md §8)
GAMMA_RANGE = (1.01, 10.0)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------


def _as_bool_array(mask: Any, name: str = "mask") -> np.ndarray:
    """A 2-D numpy bool array from a torch tensor, numpy array or nested list (nonzero = link)."""
    if isinstance(mask, torch.Tensor):
        arr = mask.detach().to("cpu")
        arr = (arr != 0).numpy() if arr.dtype != torch.bool else arr.numpy()
    else:
        try:
            arr = np.asarray(mask)
        except Exception:  # noqa: BLE001 - anything numpy cannot read is a bad argument
            raise BrainsparseError(f"{name} of type {type(mask).__name__} is not an array") from None
        if arr.dtype == object:
            raise BrainsparseError(f"{name} is not a numeric array; allowed: a 2-D bool (out, in) mask")
        arr = arr != 0
    if arr.ndim != 2:
        raise BrainsparseError(f"{name} has shape {tuple(arr.shape)}; allowed: a 2-D (out, in) mask")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BrainsparseError(f"{name} has shape {tuple(arr.shape)}; allowed: at least one output and one input")
    return np.ascontiguousarray(arr, dtype=bool)


def _biadjacency(mask: Any):
    """The mask as a scipy CSR matrix (float64 ones), plus its transpose in CSR."""
    sparse = require("scipy.sparse", "network measures")

    b = sparse.csr_matrix(_as_bool_array(mask), dtype=np.float64)
    return b, b.T.tocsr()


def _csr_row_sums(mat) -> np.ndarray:
    return np.asarray(mat.sum(axis=1)).ravel()


# ---------------------------------------------------------------------------
# degrees and power law
# ---------------------------------------------------------------------------


def degree_distribution(mask: Any) -> dict[str, np.ndarray]:
    """Degrees of a layer's neurons and their histograms.

    Returns a dict of int64 numpy arrays:

    - ``output_degrees`` (length ``out``): each output neuron's fan-in (row sums of the mask);
    - ``input_degrees`` (length ``in``): each input neuron's fan-out (column sums);
    - ``output_histogram`` / ``input_histogram``: ``h[k]`` = number of output / input neurons
      with degree ``k`` (``np.bincount``, index 0 counts the isolated ones);
    - ``histogram``: the same over all ``out + in`` nodes.
    """
    m = _as_bool_array(mask)
    out_deg = m.sum(axis=1, dtype=np.int64)
    in_deg = m.sum(axis=0, dtype=np.int64)
    return {
        "output_degrees": out_deg,
        "input_degrees": in_deg,
        "output_histogram": np.bincount(out_deg),
        "input_histogram": np.bincount(in_deg),
        "histogram": np.bincount(np.concatenate([out_deg, in_deg])),
    }


def _as_degrees(degrees: Any) -> np.ndarray:
    if isinstance(degrees, torch.Tensor):
        degrees = degrees.detach().to("cpu").numpy()
    try:
        x = np.asarray(degrees, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise BrainsparseError(f"degrees must be a sequence of non-negative integers, got {degrees!r}") from None
    if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x != np.round(x)):
        raise BrainsparseError("degrees must be non-negative integers (finite, whole numbers)")
    return x


def _gamma_approx(n: int, sum_log_x: float, xmin: float) -> float:
    # [power law] CSN 2009 Eq. 3.7: γ ≈ 1 + n / Σ ln(x_i / (xmin − 1/2)), kept in GAMMA_RANGE
    gamma = 1.0 + n / (sum_log_x - n * math.log(xmin - 0.5))
    return min(max(gamma, GAMMA_RANGE[0]), GAMMA_RANGE[1])


def _gamma_exact(n: int, sum_log_x: float, xmin: float) -> float:
    # [power law] discrete MLE: maximise L(γ) = −n ln ζ(γ, xmin) − γ Σ ln x_i (CSN 2009 Eq. 3.5)
    minimize_scalar = require("scipy.optimize", "network measures").minimize_scalar
    zeta = require("scipy.special", "network measures").zeta

    def neg_log_likelihood(g: float) -> float:
        return n * math.log(zeta(g, xmin)) + g * sum_log_x

    res = minimize_scalar(neg_log_likelihood, bounds=GAMMA_RANGE, method="bounded", options={"xatol": 1e-6})
    # the bounded search never evaluates the end points themselves
    best = min((float(res.x), *GAMMA_RANGE), key=neg_log_likelihood)
    return best


def _ks_distance(values: np.ndarray, counts: np.ndarray, gamma: float) -> float:
    """Kolmogorov–Smirnov distance between the tail's empirical CDF and the discrete power law
    with exponent ``gamma`` and ``xmin = values[0]``, taken over every integer in
    [xmin, max]: the empirical CDF is flat between observed values and the model CDF increases,
    so the supremum is reached at an observed value or just before the next one."""
    zeta = require("scipy.special", "network measures").zeta

    xmin = values[0]
    emp = np.cumsum(counts) / counts.sum()  # F_n(v_i)
    z0 = zeta(gamma, xmin)
    if not (math.isfinite(z0) and z0 > 0):
        return math.inf
    model_at = 1.0 - zeta(gamma, values + 1.0) / z0  # F(v_i) = 1 − P(X ≥ v_i + 1)
    d = np.abs(emp - model_at).max()
    if len(values) > 1:
        model_before_next = 1.0 - zeta(gamma, values[1:]) / z0  # F(v_{i+1} − 1)
        d = max(d, np.abs(emp[:-1] - model_before_next).max())
    return float(d)


def power_law_exponent(
    degrees: Any, xmin: int | None = None, estimator: str = "exact"
) -> tuple[float, float]:
    """Exponent γ of a discrete power law ``p(k) ∝ k^−γ`` (k ≥ xmin) fitted to degrees
    [power law] (Clauset, Shalizi & Newman 2009, "CSN").

    Zeros are dropped (a power law lives on k ≥ 1). For a given ``xmin`` the exponent of the
    tail ``x_1 … x_n`` (the degrees ≥ xmin) is

    - ``estimator="exact"`` (default): the discrete maximum-likelihood estimate, maximising
      ``−n ln ζ(γ, xmin) − γ Σ ln x_i`` (Hurwitz ζ; CSN Eq. 3.5, what the papers' ``plfit``
      computes for integer data);
    - ``estimator="approx"``: the closed-form discrete approximation
      ``γ = 1 + n / Σ ln(x_i / (xmin − 0.5))`` (CSN Eq. 3.7). It is biased low when xmin is
      small (CSN: accurate for xmin ≳ 6); e.g. on 20 000 draws of a γ = 3 law with xmin = 1 it
      gives 2.84 where the exact estimate gives 3.00.

    Both are restricted to ``GAMMA_RANGE`` = [1.01, 10], the range the papers' ``plfit`` calls
    search (reference.md §8): γ = 10 means the degrees have no heavy tail (e.g. a uniform
    random layer, whose degrees are binomial).

    With ``xmin=None`` every observed degree value except the largest is tried as ``xmin`` and
    the one whose fit has the smallest Kolmogorov–Smirnov distance to the tail is kept (CSN
    §3.3; no finite-size correction, no p-value). Returns ``(gamma, xmin)`` as floats;
    ``(nan, nan)`` when the data cannot be fitted: fewer than two distinct positive degrees
    (all equal, all zero, empty) or, with a given ``xmin``, fewer than two distinct values in
    the tail.
    """
    key = str(estimator).lower()
    if key not in _POWER_LAW_ESTIMATORS:
        raise BrainsparseError(f"unknown estimator {estimator!r}; allowed: {', '.join(_POWER_LAW_ESTIMATORS)}")
    fit = _gamma_approx if key == "approx" else _gamma_exact
    x = np.sort(_as_degrees(degrees))
    x = x[x >= 1]
    nan = (math.nan, math.nan)
    if xmin is not None:
        try:
            ok = not isinstance(xmin, bool) and float(xmin).is_integer() and xmin >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BrainsparseError(f"xmin {xmin!r} is invalid; allowed: an integer >= 1 or None")
        tail = x[x >= xmin]
        if np.unique(tail).size < 2:
            return nan
        return fit(tail.size, float(np.log(tail).sum()), float(xmin)), float(xmin)

    values, first, counts = np.unique(x, return_index=True, return_counts=True)
    if values.size < 2:
        return nan
    # suffix sums of ln x over the sorted data: Σ ln x over the tail starting at each value
    log_suffix = np.cumsum(np.log(x)[::-1])[::-1]
    best = (math.inf, math.nan, math.nan)
    for i in range(values.size - 1):
        n = x.size - first[i]
        gamma = fit(int(n), float(log_suffix[first[i]]), float(values[i]))
        d = _ks_distance(values[i:], counts[i:], gamma)
        if d < best[0]:
            best = (d, gamma, float(values[i]))
    return best[1], best[2]
