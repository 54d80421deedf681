"""Training loops, checkpoints and run folders."""

from .classification import TrainConfig, evaluate, train_classifier

__all__ = ["TrainConfig", "evaluate", "train_classifier"]
