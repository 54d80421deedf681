"""Tables and plots."""

from .plots import plot_step_curves, plot_training_curves

__all__ = ["plot_step_curves", "plot_training_curves"]
