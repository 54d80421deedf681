"""Dynamic sparse training under Lightning (``lightning.pytorch``).

::

    from brainsparse.integrations.lightning import SparseTrainingCallback
    trainer = L.Trainer(max_epochs=10, accumulate_grad_batches=2,
                        callbacks=[SparseTrainingCallback(method="rigl", density=0.1, update_every=100)])
    trainer.fit(module, data)                     # or trainer.fit(module, data, ckpt_path="last.ckpt")

What the callback does, by Lightning hook:

- ``load_state_dict`` (on a resume, before training starts): keeps the checkpoint's engine state.
- ``on_fit_start`` (the optimizer exists; on a resume the weights are loaded, the optimizer state
  is not yet): sparsifies the LightningModule — its LLaMA blocks with the LLaMA chains when it has
  any, else every ``nn.Linear`` but the head — with ``total_steps = trainer.estimated_stepping_batches``,
  and hooks the optimizer; on a resume it restores the engine from the checkpoint and puts the
  loaded weights back, after which Lightning loads the optimizer state.
- every optimizer step (a post-step hook on the optimizer): ``engine.step()``, so that
  RigL/MEST/GraNet score the dense gradient summed over every micro-batch of an
  ``accumulate_grad_batches`` window, and an AMP step the scaler skips is not counted.
- ``state_dict``: the engine's state, saved by Lightning inside its own checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback

from ..engine import DynamicSparseEngine
from ..errors import BrainsparseError
from ._common import build_engine, callback_options, engine_checkpoint, skip_unowned_masks, unwrap_optimizer

__all__ = ["SparseTrainingCallback"]


class SparseTrainingCallback(Callback):
    """Sparsify the LightningModule when fitting starts and evolve its topology.

    ``method``, ``density``, ``update_every`` (optimizer steps between topology updates) and any
    ``overrides`` (``init``, ``drop_fraction``, ``include``, ...) go to :func:`brainsparse.sparsify`;
    ``total_steps`` is Lightning's ``trainer.estimated_stepping_batches``. One optimizer. Weights
    start as the method's preset says (sparse weight initialisation for the sparse methods; LLaMA
    blocks keep their own, as under ``brainsparse train --task lm``); ``weight_init="keep"`` keeps
    pretrained weights on the kept links.

    Runs the masked-dense path only (``kernel="dense"``): Lightning saves and loads the module's
    own ``state_dict``, whose ``nn.Linear`` weights must keep their layout.

    After fitting starts, ``callback.engine`` is the :class:`~brainsparse.engine.DynamicSparseEngine`.
    """

    def __init__(self, method: str = "chts", density: float = 0.1, update_every: int | None = None,
                 seed: int | None = None, *, kernel: str = "dense", **overrides: Any) -> None:
        self.options = callback_options(method, density, update_every, seed, kernel, overrides)
        self.engine: DynamicSparseEngine | None = None
        self._saved: dict[str, Any] | None = None
        self._hook = None
        self._load_hook = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # a resume loads the checkpoint's weights (and weight_mask buffers) before on_fit_start
        # sparsifies the module: leave the masks to this callback's state
        if self._load_hook is None:
            self._load_hook = skip_unowned_masks(pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise BrainsparseError(f"SparseTrainingCallback supports one optimizer; configure_optimizers gave {len(trainer.optimizers)}")
        optimizer = unwrap_optimizer(trainer.optimizers[0])
        if self.engine is not None and self.engine.model is pl_module and self.engine.optimizer is optimizer:
            return  # fit() called again on the same module and optimizer: keep evolving the same engine
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise BrainsparseError("the run has no length (max_epochs=-1 and max_steps=-1): set max_steps or max_epochs")
        saved, self._saved = self._saved, None
        if saved is None and trainer.ckpt_path is not None and self.engine is None:
            raise BrainsparseError(
                f"resuming from {trainer.ckpt_path}, which holds no SparseTrainingCallback state: it was not "
                "written with this callback (sparsifying now would draw a fresh topology over trained weights)"
            )
        if self.engine is not None and self.engine.model is pl_module:
            # fit() again with a new optimizer: carry the topology over as on a resume
            saved = self.engine.state_dict()
            self.engine.detach()
        self.engine = build_engine(pl_module, optimizer, self.options, total_steps=int(total), saved=saved)
        engine = self.engine
        # registered after the engine's own post-step hook, which re-masks the weights first
        self._hook = optimizer.register_step_post_hook(lambda *_: engine.step())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def state_dict(self) -> dict[str, Any]:
        if self.engine is not None:
            return {"engine": engine_checkpoint(self.engine)}
        return {"engine": self._saved} if self._saved is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("engine") is not None:
            self._saved = state_dict["engine"]
            if self.engine is not None:
                self.engine.detach()
            self.engine = None
