"""Figures of a run: accuracy and active-neuron curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (temporary file, then rename) and close it."""
    from ..train.checkpoint import atomic_write  # here: train imports report

    path = Path(path)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return path


def _topology_panel(ax, xs: Sequence[float], metrics: Sequence[dict[str, Any]], xlabel: str) -> None:
    ax.plot(xs, [m["active_neuron_rate"] for m in metrics], marker="o", label="active-neuron rate")
    ax.plot(xs, [m["density"] for m in metrics], marker=".", linestyle="--", label="density (sparse layers)")
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 1.05)
    ax.set_title("topology")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_training_curves(metrics: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Two panels over epochs: train/test accuracy and active-neuron rate with density."""
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_acc, ax_anp) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(epochs, [m["test_accuracy"] for m in metrics], marker="o", label="test")
    ax_acc.plot(epochs, [m["train_accuracy"] for m in metrics], marker=".", linestyle="--", label="train")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    _topology_panel(ax_anp, epochs, metrics, "epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_step_curves(
    metrics: Sequence[dict[str, Any]], path: Path, score: str, title: str = "", log_score: bool = False
) -> Path:
    """Three panels over optimizer steps: train loss, the validation ``score`` (e.g. BLEU or
    perplexity, on a log axis with ``log_score``) and active-neuron rate with density."""
    steps = [m["step"] for m in metrics]
    fig, (ax_loss, ax_score, ax_anp) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(steps, [m["train_loss"] for m in metrics], marker="o")
    ax_loss.set_title("train loss")
    ax_score.plot(steps, [m[score] for m in metrics], marker="o")
    ax_score.set_title(score.replace("_", " "))
    if log_score:
        ax_score.set_yscale("log")
    for ax in (ax_loss, ax_score):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _topology_panel(ax_anp, steps, metrics, "step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
