"""Training loops, checkpoints and run folders; one module per task."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import BrainsparseError
from .classification import TrainConfig, evaluate, train_classifier

#: task name → (module, config class, train function). Every config class has ``task``,
#: ``method``, ``seed``, ``dataset``, ``density``, ``validate()``, ``from_dict()`` and the
#: class attributes ``SCORE`` / ``BEST`` (summary keys of the final and best score), ``CURVE``
#: / ``CURVE_X`` (metrics.jsonl keys of the evaluation curve and its x axis) and
#: ``HIGHER_IS_BETTER``; its train function is ``train(config, out, *, resume, overwrite, progress)``.
TASKS: dict[str, tuple[str, str, str]] = {
    "classification": ("brainsparse.train.classification", "TrainConfig", "train_classifier"),
    "translation": ("brainsparse.train.translation", "TranslationConfig", "train_translation"),
    "lm": ("brainsparse.train.language_model", "LMConfig", "train_language_model"),
}


def task_entry(task: str) -> tuple[type, Callable[..., dict[str, Any]]]:
    """(config class, train function) of ``task``."""
    if task not in TASKS:
        raise BrainsparseError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    module_name, config_name, train_name = TASKS[task]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, train_name)


def config_for(data: dict[str, Any]) -> Any:
    """A task config from a stored ``config.json`` (classification when it names no task)."""
    config_cls, _ = task_entry(data.get("task", "classification"))
    return config_cls.from_dict(data)


__all__ = ["TASKS", "TrainConfig", "config_for", "evaluate", "task_entry", "train_classifier"]
