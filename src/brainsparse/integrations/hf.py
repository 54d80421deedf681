"""Dynamic sparse training under ``transformers.Trainer``.

::

    from brainsparse.integrations.hf import SparseTrainingCallback
    trainer = Trainer(model, args, train_dataset=data,
                      callbacks=[SparseTrainingCallback(method="rigl", density=0.1, update_every=100)])
    trainer.train()                               # or trainer.train(resume_from_checkpoint=True)

What the callback does, by ``Trainer`` hook:

- ``on_train_begin`` (the model, the optimizer and, on a resume, the checkpoint's weights and
  optimizer state are in place by then): sparsifies the model — its LLaMA blocks with the
  LLaMA chains for percolation when it has any, else every ``nn.Linear`` but the head — with
  ``total_steps = state.max_steps``, and hooks the optimizer. On a resume it restores the engine
  from ``checkpoint-N/brainsparse_engine.pt`` and leaves the loaded weights and optimizer state as
  they are.
- ``on_optimizer_step``: ``engine.step()``, once per optimizer step, so that RigL/MEST/GraNet
  score the dense gradient summed over every micro-batch of a ``gradient_accumulation_steps``
  window.
- ``on_save``: writes the engine's state next to the checkpoint (``checkpoint-N/brainsparse_engine.pt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..engine import DynamicSparseEngine
from ..errors import BrainsparseError
from ._common import ENGINE_FILE, build_engine, callback_options, engine_checkpoint, unwrap_optimizer

__all__ = ["SparseTrainingCallback", "ENGINE_FILE"]

if not hasattr(TrainerCallback, "on_optimizer_step"):  # the hook came with transformers 4.42
    raise ImportError("brainsparse.integrations.hf needs transformers >= 4.42 (TrainerCallback.on_optimizer_step)")


class SparseTrainingCallback(TrainerCallback):
    """Sparsify the ``Trainer``'s model when training begins and evolve its topology.

    ``method``, ``density``, ``update_every`` (optimizer steps between topology updates) and any
    ``overrides`` (``init``, ``drop_fraction``, ``include``, ...) go to :func:`brainsparse.sparsify`;
    ``total_steps`` is the Trainer's ``max_steps``; ``seed`` defaults to ``args.seed``. A model with
    LLaMA blocks keeps its own (or pretrained) weights on the kept links (``weight_init="keep"``, as
    ``brainsparse train --task lm``); pass ``weight_init="swi"`` for the sparse re-initialisation.

    Runs the masked-dense path only (``kernel="dense"``): the Trainer saves and loads the model's
    own ``state_dict``, whose ``nn.Linear`` weights must keep their layout.

    ``resume_from`` names the checkpoint folder to take the engine's state from on a resume; by
    default ``<output_dir>/checkpoint-<global step>``, the folder ``trainer.train(resume_from_checkpoint=...)``
    loads when the checkpoint lives in this run's ``output_dir``.

    After training begins, ``callback.engine`` is the :class:`~brainsparse.engine.DynamicSparseEngine`.
    """

    def __init__(self, method: str = "chts", density: float = 0.1, update_every: int | None = None,
                 seed: int | None = None, *, kernel: str = "dense", resume_from: str | os.PathLike | None = None,
                 **overrides: Any) -> None:
        self.options = callback_options(method, density, update_every, seed, kernel, overrides)
        self.resume_from = resume_from
        self.engine: DynamicSparseEngine | None = None

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise BrainsparseError("SparseTrainingCallback needs the Trainer's model and optimizer at on_train_begin")
        inner = unwrap_optimizer(optimizer)
        if self.engine is not None and self.engine.model is model and self.engine.optimizer is inner:
            return  # train() called again on the same run: keep evolving the same engine
        if state.global_step > 0:  # resuming: the checkpoint's engine state
            saved = self._saved_state(args, state)
        elif self.engine is not None and self.engine.model is model:
            saved = self.engine.state_dict()  # a new optimizer for the same model: carry the topology over
        else:
            saved = None
        if self.engine is not None:
            self.engine.detach()
        options = dict(self.options)
        if options["seed"] is None:
            options["seed"] = int(args.seed)
        self.engine = build_engine(model, inner, options, total_steps=int(state.max_steps), saved=saved)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.engine is not None:
            self.engine.step()

    def on_save(self, args, state, control, **kwargs):
        if self.engine is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            torch.save(engine_checkpoint(self.engine), folder / ENGINE_FILE)

    # ------------------------------------------------------------------ resume
    def _saved_state(self, args, state) -> dict[str, Any]:
        """The engine state of the checkpoint this run resumes from (global step > 0 at train begin)."""
        folder = Path(self.resume_from) if self.resume_from is not None else \
            Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        path = folder / ENGINE_FILE
        if not path.is_file():
            raise BrainsparseError(
                f"resuming at step {state.global_step}, but {path} does not exist: the checkpoint was not written "
                "with SparseTrainingCallback, or lives outside this run's output_dir (pass "
                "SparseTrainingCallback(..., resume_from='<checkpoint folder>'))"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if int(saved["step"]) != int(state.global_step):
            raise BrainsparseError(
                f"{path} holds the engine at step {saved['step']}, but the Trainer resumes at step {state.global_step}"
            )
        return saved
