"""Shared argument checks that raise :class:`BrainsparseError` with one clear line."""

from __future__ import annotations

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
