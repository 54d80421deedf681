"""Models trained by brainsparse."""

from .mlp import MLP, PAPER_SIZES

__all__ = ["MLP", "PAPER_SIZES"]
