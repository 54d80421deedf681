"""The step-based training loop of the sequence tasks (translation, language modelling).

A task builds its model, optimizer, engine and data, then hands them to :func:`run_steps`,
which trains for ``steps`` optimizer steps, evaluates and checkpoints every ``eval_every``
steps (atomically: model, optimizer, engine, random state, history), and resumes from such a
checkpoint so that the resumed run equals the uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..engine import DynamicSparseEngine
from ..errors import BrainsparseError
from .checkpoint import save_checkpoint, write_jsonl
from .common import clear_grads, restore_training_state, topology_record


@dataclass
class StepRun:
    """The live objects of a step-based run and the task's callbacks.

    ``batch_at(i)`` returns the batch of 0-based step ``i`` (a pure function of the seed and
    ``i``, so a resumed run sees the same batches); ``loss_of(batch)`` returns the mean loss to
    back-propagate and the number of items (tokens) it averages over; ``lr_at(step,
    last_update)`` the learning rate of 1-based ``step`` given the step of the last topology
    update (None before the first); ``evaluate()`` the validation metrics as a dict.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    engine: DynamicSparseEngine
    batch_at: Callable[[int], Any]
    loss_of: Callable[[Any], tuple[Tensor, int]]
    lr_at: Callable[[int, int | None], float]
    evaluate: Callable[[], dict[str, float]]
    grad_clip: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "engine": self.engine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_training_state(state, self.engine, self.model, self.optimizer)


def progress_line(record: dict[str, Any], steps: int, keys: Sequence[tuple[str, str]] = ()) -> str:
    """One line per evaluation: step, train loss, the ``(key, label)`` metrics, topology, time."""
    metrics = "".join(f", {label} {record[key]:.2f}" for key, label in keys if record.get(key) is not None)
    return (f"step {record['step']}/{steps}: train loss {record['train_loss']:.4f}{metrics}, "
            f"density {record['density']:.4f}, active neurons {record['active_neuron_rate']:.3f}, "
            f"{record['time_s']:.1f}s")


def last_update_step(engine: DynamicSparseEngine) -> int | None:
    """Optimizer step of the engine's most recent topology update (None before the first)."""
    return int(engine.history[-1]["step"]) if engine.history else None


def run_steps(
    run: StepRun,
    *,
    steps: int,
    eval_every: int,
    out: Path,
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after_evals: int | None = None,
    progress_keys: Sequence[tuple[str, str]] = (),
    is_writer: bool = True,
    before_engine_step: Callable[[], None] | None = None,
    after_engine_step: Callable[[dict[str, Any] | None], None] | None = None,
    on_checkpoint: Callable[[], Path] | None = None,
    after_backward: Callable[[], None] | None = None,
    save_state: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Train ``run`` up to ``steps`` optimizer steps; returns (history, wall time in seconds).

    Every ``eval_every`` steps and at the last step, one metrics row (train loss, learning
    rate, ``run.evaluate()``, the network's topology) is appended to ``out/metrics.jsonl``, every
    topology update so far is written to ``out/updates.jsonl`` (step, drop fraction, temperature,
    per-layer removed/regrown/overlap) and ``out/checkpoint.pt`` is rewritten. ``state`` is a loaded checkpoint to resume from.
    ``stop_after_evals`` stops after that many evaluations of this call (an interrupted run).

    Distributed runs (see :mod:`brainsparse.train.distributed`): only the process with
    ``is_writer`` writes files and shows progress; ``before_engine_step()`` runs between the
    optimizer step and ``engine.step()`` (e.g. to all-reduce the gradients kept for scores) and
    ``after_engine_step(record)`` right after it with the update record or None (e.g. to
    broadcast rank 0's topology). ``on_checkpoint()`` runs after each checkpoint and returns the
    folder to write into from then on (a staged ``--overwrite`` run is swapped in there).
    ``after_backward()`` runs right after ``loss.backward()``, before gradient clipping (e.g. to
    average gradients over the ranks, or to mask sharded gradients). ``save_state(out, extra)``,
    when given, writes the checkpoint instead of ``run.state_dict()`` on the writer: it runs on
    every rank (a collective, e.g. a sharded checkpoint) with the run's bookkeeping ``extra``.
    A loss that is no longer finite stops the run with :class:`BrainsparseError`; the last
    checkpoint stays as it was.
    """
    if steps < 1 or eval_every < 1:
        raise BrainsparseError(f"steps {steps!r} and eval_every {eval_every!r} must be positive integers")
    history: list[dict[str, Any]] = []
    step, wall = 0, 0.0
    if state is not None:
        try:
            run.load_state_dict(state)
            history, step, wall = list(state["history"]), int(state["step"]), float(state["wall_time_s"])
            torch.set_rng_state(state["rng_state"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise BrainsparseError(f"checkpoint '{out / 'checkpoint.pt'}' does not fit this run ({type(exc).__name__}: "
                                   f"{str(exc)[:160]}); start the run again with --overwrite") from None
        if not 0 <= step <= steps or any(not isinstance(r, dict) for r in history):
            raise BrainsparseError(f"checkpoint '{out / 'checkpoint.pt'}' holds step {step} of {steps}; "
                                   "start the run again with --overwrite")
        if is_writer:  # a kill between the checkpoint and the metrics writes: the checkpoint is the truth
            write_jsonl(out / "metrics.jsonl", history)
            write_jsonl(out / "updates.jsonl", run.engine.history)
        if state.get("cuda_rng_state") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng_state"])  # dropout on the GPU
    loss_sum, items, evals = 0.0, 0, 0
    updates_before = len(run.engine.history)
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc="steps", disable=not (progress and is_writer), dynamic_ncols=True, leave=False)
    run.model.train()
    while step < steps:
        if stop_after_evals is not None and evals >= stop_after_evals:
            break
        batch = run.batch_at(step)
        step += 1
        lr = run.lr_at(step, last_update_step(run.engine))
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        clear_grads(run.optimizer)
        loss, n = run.loss_of(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            kept = (f"the last good checkpoint (step {history[-1]['step']}) is kept" if history
                    else "no checkpoint was written yet")
            raise BrainsparseError(f"training diverged: the training loss became {value} at step {step}; "
                                   f"{kept}; try a lower --lr")
        loss.backward()
        if after_backward is not None:
            after_backward()
        if run.grad_clip:
            nn.utils.clip_grad_norm_(run.model.parameters(), run.grad_clip)
        run.optimizer.step()
        if before_engine_step is not None:
            before_engine_step()
        update = run.engine.step()
        if after_engine_step is not None:
            after_engine_step(update)
        loss_sum += float(loss.detach()) * n
        items += n
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / max(items, 1):.3f}", lr=f"{lr:.2e}")
        if step % eval_every == 0 or step == steps:
            elapsed = time.perf_counter() - t0
            metrics = run.evaluate()
            run.model.train()
            record = topology_record(
                run.engine, updates_before, step=step, train_loss=loss_sum / max(items, 1), lr=lr,
                **metrics, time_s=elapsed,
            )
            history.append(record)
            wall += time.perf_counter() - t0
            extra = {"step": step, "history": history, "wall_time_s": wall, "rng_state": torch.get_rng_state(),
                     "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                     "config": config}
            if save_state is not None:
                save_state(out, extra)
            elif is_writer:
                save_checkpoint(out / "checkpoint.pt", {**run.state_dict(), **extra})
            if is_writer:
                write_jsonl(out / "metrics.jsonl", history)
                write_jsonl(out / "updates.jsonl", run.engine.history)  # one row per topology update
                if on_checkpoint is not None:
                    out = on_checkpoint()
            if progress and is_writer:
                tqdm.write(progress_line(record, steps, progress_keys))
            loss_sum, items, evals = 0.0, 0, evals + 1
            updates_before = len(run.engine.history)
            t0 = time.perf_counter()
    bar.close()
    return history, wall
