"""Tables and plots."""

from .plots import plot_training_curves

__all__ = ["plot_training_curves"]
