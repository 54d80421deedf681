"""Figures of sparse layer topologies: adjacency images and degree distributions (PNG)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import BrainsparseError
from ..metrics.network import _as_bool_array, degree_distribution  # noqa: E402
from .plots import save_figure  # noqa: E402

__all__ = ["plot_adjacency", "plot_degree_distributions", "downsample_mask"]


_REDUCTIONS = ("mean", "max")


def downsample_mask(mask: Any, max_pixels: int = 512, reduce: str = "mean") -> tuple[np.ndarray, int, int]:
    """Shrink an (out, in) mask to at most ``max_pixels`` per side by blocks.

    Blocks are ``ceil(out / max_pixels) × ceil(in / max_pixels)`` cells (the last ones padded
    with no links). ``reduce="mean"`` gives each block's link density, ``"max"`` whether it
    holds any link. Returns ``(image, block_rows, block_cols)``; a mask that already fits is
    returned as float 0/1 with blocks of 1.
    """
    m = _as_bool_array(mask)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise BrainsparseError(f"max_pixels {max_pixels!r} is invalid; allowed: an integer >= 1")
    key = str(reduce).lower()
    if key not in _REDUCTIONS:
        raise BrainsparseError(f"unknown reduce {reduce!r}; allowed: {', '.join(_REDUCTIONS)}")
    rows, cols = m.shape
    br, bc = math.ceil(rows / max_pixels), math.ceil(cols / max_pixels)
    if br == 1 and bc == 1:
        return m.astype(np.float32), 1, 1
    pr, pc = math.ceil(rows / br) * br, math.ceil(cols / bc) * bc
    padded = np.zeros((pr, pc), dtype=np.float32)
    padded[:rows, :cols] = m
    blocks = padded.reshape(pr // br, br, pc // bc, bc)
    image = blocks.mean(axis=(1, 3)) if key == "mean" else blocks.max(axis=(1, 3))
    return image, br, bc


def plot_adjacency(mask: Any, path: str | Path, title: str = "", max_pixels: int = 512,
                   reduce: str = "auto") -> Path:
    """Image of a layer's (out, in) mask: rows are output neurons, columns input neurons.

    A mask larger than ``max_pixels`` on a side is shrunk by blocks (:func:`downsample_mask`).
    ``reduce="max"`` paints a block black when it holds any link (block-max: single links stay
    visible); ``"mean"`` shades each block by its link density (square-root colour scale, so
    that a block with one link is still visible). ``"auto"`` (default) uses block-max while a
    block holds at most one link on average (density × block cells ≤ 1) and the density shading
    beyond, where block-max would paint nearly every block black. Writes a PNG atomically and
    returns its path.
    """
    from matplotlib.colors import PowerNorm

    m = _as_bool_array(mask)
    rows, cols = m.shape
    links = int(m.sum())
    key = str(reduce).lower()
    if key == "auto":
        cells = math.ceil(rows / max_pixels) * math.ceil(cols / max_pixels) if isinstance(max_pixels, int) else 1
        key = "max" if links / m.size * cells <= 1.0 else "mean"
    image, br, bc = downsample_mask(m, max_pixels, key)
    binary = br == 1 and bc == 1
    width = 7.0
    height = float(np.clip(width * rows / cols, 3.0, 10.0)) + 0.8
    fig, ax = plt.subplots(figsize=(width + 1.5, height))
    if binary or key == "max":
        norm = PowerNorm(gamma=1.0, vmin=0.0, vmax=1.0)
    else:
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(float(image.max()), 1e-12))
    shown = ax.imshow(image, cmap="Greys", norm=norm, interpolation="nearest", aspect="auto",
                      extent=(0, cols, rows, 0))
    ax.set_xlabel(f"input neuron ({cols})")
    ax.set_ylabel(f"output neuron ({rows})")
    note = f"{links} links, density {links / m.size:.4g}"
    if not binary:
        what = "any link" if key == "max" else "link density"
        note += f"; blocks of {br}×{bc} cells, {what} per block"
        if key == "mean":
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="link density in block")
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _ccdf(degrees: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values k ≥ 1 and P(K ≥ k) over the nodes with degree ≥ 1."""
    d = np.sort(degrees[degrees > 0])
    if d.size == 0:
        return d, d
    values, first = np.unique(d, return_index=True)
    return values, (d.size - first) / d.size


def _log_tick_values(lo: float, hi: float) -> list[float]:
    """Labelled ticks for a log axis over [lo, hi]: decades when the range spans several, else
    1-2-5 steps, else (less than a decade) at most six evenly spaced round numbers — the coarsest
    that still puts at least three ticks in range, so labels never run into each other."""
    from matplotlib.ticker import MaxNLocator

    first, last = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for subs in ((1.0,), (1.0, 2.0, 5.0)):
        ticks = [s * 10.0**e for e in range(first, last + 1) for s in subs]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            return ticks
    linear = MaxNLocator(nbins=6, steps=[1, 2, 5, 10]).tick_values(lo, hi)
    return [float(t) for t in linear if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


def _plain_number(value: float, _pos: Any = None) -> str:
    return f"{value:.0f}" if value >= 1 and value == round(value) else f"{value:g}"


def _tidy_log_axis(axis, lo: float, hi: float) -> None:
    """Labelled major ticks from :func:`_log_tick_values` as plain numbers, unlabelled minor
    ticks (matplotlib's default labels every minor tick of a short log axis: 2×10⁰, 3×10⁰, ...
    run into each other)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(FixedLocator(_log_tick_values(lo, hi)))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10)), numticks=50))
    axis.set_minor_formatter(NullFormatter())


def degree_distribution_figure(masks: Mapping[str, Any], title: str = ""):
    """The figure of :func:`plot_degree_distributions`, not yet saved (the caller closes it)."""
    if not isinstance(masks, Mapping):
        raise BrainsparseError("masks must be a dict {layer name: (out, in) mask}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("output_degrees", "output neurons: fan-in"), ("input_degrees", "input neurons: fan-out"))
    for ax, (key, label) in zip(axes, panels):
        drawn = False
        for name, mask in masks.items():
            degrees = degree_distribution(mask)[key]
            values, ccdf = _ccdf(degrees)
            zeros = int((degrees == 0).sum())
            legend = f"{name} ({zeros} isolated)" if zeros else str(name)
            if values.size:
                ax.step(values, ccdf, where="post", marker=".", markersize=3, label=legend)
                drawn = True
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            _tidy_log_axis(ax.xaxis, x0, x1)
            _tidy_log_axis(ax.yaxis, y0, y1)
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no links", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("degree k")
        ax.set_ylabel("P(K ≥ k)")
        ax.set_title(label)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_degree_distributions(masks: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Log-log complementary CDFs ``P(K ≥ k)`` of every layer's degrees: one panel for the
    output neurons' fan-in, one for the input neurons' fan-out, one line per layer. Isolated
    neurons (degree 0) cannot appear on a log axis; the legend gives their number. A power law
    ``p(k) ∝ k^−γ`` is a straight line of slope ``1 − γ``. Writes a PNG atomically.
    """
    return save_figure(degree_distribution_figure(masks, title), Path(path))
