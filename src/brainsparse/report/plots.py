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
    ax_anp.plot(epochs, [m["active_neuron_rate"] for m in metrics], marker="o", label="active-neuron rate")
    ax_anp.plot(epochs, [m["density"] for m in metrics], marker=".", linestyle="--", label="density (sparse layers)")
    ax_anp.set_xlabel("epoch")
    ax_anp.set_ylim(0, 1.05)
    ax_anp.set_title("topology")
    ax_anp.grid(alpha=0.3)
    ax_anp.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
