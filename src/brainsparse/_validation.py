"""Shared argument checks that raise :class:`BrainsparseError` with one clear line."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .errors import BrainsparseError


def check_density(density: float, name: str = "density") -> float:
    """Return ``density`` as float if it lies in (0, 1], else raise."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise BrainsparseError(f"{name} {density!r} is not a number; allowed: a number in (0, 1]") from None
    if not (0.0 < value <= 1.0):
        raise BrainsparseError(f"{name} {density!r} is outside (0, 1]; allowed: 0 < {name} <= 1")
    return value


def check_unit_interval(value: float, name: str) -> float:
    """Return ``value`` as float if it lies in [0, 1], else raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BrainsparseError(f"{name} {value!r} is not a number; allowed: a number in [0, 1]") from None
    if not (0.0 <= v <= 1.0):
        raise BrainsparseError(f"{name} {value!r} is outside [0, 1]; allowed: 0 <= {name} <= 1")
    return v


def check_choice(value: str, allowed: Iterable[str], name: str) -> str:
    """Return ``value`` if it is one of ``allowed`` (case-insensitive), else raise."""
    allowed = list(allowed)
    key = str(value).lower()
    if key not in [a.lower() for a in allowed]:
        raise BrainsparseError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return key


def check_positive_int(value: int, name: str) -> int:
    """Return ``value`` if it is an integer >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BrainsparseError(f"{name} {value!r} is not a positive integer; allowed: an integer >= 1")
    return value


def link_count(density: float, out_features: int, in_features: int) -> int:
    """Target number of links K = round(density * out * in), at least 1."""
    return max(1, round(density * out_features * in_features))


#: the largest seed a run accepts (its derived per-epoch seeds stay within torch's 64-bit range)
MAX_SEED = 2**32 - 1


def check_seed(value: int, name: str = "seed") -> int:
    """Return ``value`` if it is an integer in [0, 2**32 - 1], else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise BrainsparseError(f"{name} {value!r} is invalid; allowed: an integer from 0 to {MAX_SEED}")
    return value


def check_nonnegative(value: float, name: str, below: float | None = None) -> float:
    """Return ``value`` if it is a finite number >= 0 (and < ``below`` when given), else raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not math.isfinite(v) or v < 0 or (below is not None and v >= below):
        allowed = f"a number in [0, {below:g})" if below is not None else "a finite number >= 0"
        raise BrainsparseError(f"{name} {value!r} is invalid; allowed: {allowed}")
    return v


def check_language_code(value: str | None, name: str) -> str | None:
    """Return ``value`` (None allowed) if it is a plain language code such as ``de`` or ``zh-CN``
    (letters, digits, ``-``, ``_``; no path separators), else raise."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,15}", value):
        raise BrainsparseError(f"{name} language {value!r} is invalid; allowed: a language code such as en or de "
                               "(letters, digits, - and _, at most 16 characters)")
    return value
