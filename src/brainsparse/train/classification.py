"""Training an MLP on an MNIST-family dataset with any method, into a run folder.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(written atomically after every epoch), ``summary.json`` and ``curves.png``. ``resume=True``
continues from the checkpoint and reproduces the uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_density, check_nonnegative, check_positive_int, check_seed, check_unit_interval
from ..engine import DynamicSparseEngine, sparsify
from ..errors import BrainsparseError
from ..data.images import PixelImages
from ..methods import INITS, MethodConfig, resolve_method
from ..models import MLP
from ..report import plot_training_curves
from .checkpoint import load_checkpoint, save_checkpoint, write_json, write_jsonl
from .common import (
    ConfigDict, RunFolder, check_init_params, clear_grads, fused_optimizer_options, method_option_overrides, open_run,
    resolve_device,
    restore_training_state, topology_record, train_time_s,
)

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png")


@dataclass
class TrainConfig(ConfigDict):
    """Settings of one classification run (defaults: the papers' MLP recipe, algorithms.md §9)."""

    SCORE: ClassVar[str] = "final_test_accuracy"
    BEST: ClassVar[str] = "best_test_accuracy"
    CURVE: ClassVar[str] = "test_accuracy"
    CURVE_X: ClassVar[str] = "epoch"
    HIGHER_IS_BETTER: ClassVar[bool] = True

    task: str = "classification"
    dataset: str = "fashion-mnist"
    method: str = "chts"
    density: float = 0.01
    epochs: int = 10
    seed: int = 0
    init: str | None = None  # None: the method's default initial topology
    beta: float | None = None  # BSW rewiring probability
    r: float | None = None  # BRF locality
    hidden: list[int] = field(default_factory=lambda: [1568, 1568, 1568])
    batch_size: int = 32
    lr: float = 0.025
    lr_final_factor: float = 0.01  # linear decay to lr·factor at 90 % of the epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    update_every: int | None = None  # optimizer steps between topology updates; None = one epoch
    drop_fraction: float | None = None
    regrowth_exact: bool | None = None
    recipe: str | None = None  # whose per-task method choices apply: None = the task's recipe, "none" = bare preset
    method_options: dict[str, Any] | None = None  # the recipe's overrides of the method preset (filled at start)
    train_subset: int | None = None  # use only the first N training samples (quick runs)
    csti_samples: int = 10000  # samples used for the CSTI correlation
    eval_batch_size: int = 1000
    data_dir: str | None = None
    kernel: str = "auto"  # auto | dense | sparse: execution of the sparse layers
    device: str = "auto"  # auto (GPU when present) | cpu | cuda | cuda:N

    def validate(self) -> None:
        """Raise :class:`BrainsparseError` naming the first bad value."""
        check_density(self.density)
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        if self.update_every is not None:
            check_positive_int(self.update_every, "update_every")
        if self.train_subset is not None:
            check_positive_int(self.train_subset, "train_subset")
        if self.kernel not in ("dense", "sparse", "auto"):
            raise BrainsparseError(f"unknown kernel {self.kernel!r}; allowed: auto, dense, sparse")
        resolve_device(self.device)
        if self.init is not None and self.init.lower() not in INITS:
            raise BrainsparseError(f"unknown init {self.init!r}; allowed: {', '.join(INITS)}")
        if self.beta is not None:
            check_unit_interval(self.beta, "beta")
        if self.r is not None:
            check_unit_interval(self.r, "r")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise BrainsparseError(f"lr {self.lr!r} is invalid; allowed: a positive number")
        if not self.hidden:
            raise BrainsparseError("hidden widths [] are empty: the model would have no sparse layer; "
                                   "allowed: one or more positive integers such as 1568,1568,1568")
        for h in self.hidden:
            check_positive_int(h, "hidden width")
        check_seed(self.seed)
        check_nonnegative(self.momentum, "momentum", below=1.0)
        check_nonnegative(self.weight_decay, "weight_decay")
        check_unit_interval(self.lr_final_factor, "lr_final_factor")
        check_positive_int(self.csti_samples, "csti_samples")
        check_positive_int(self.eval_batch_size, "eval_batch_size")
        resolve_method(self.method, **self.method_overrides())
        check_init_params(self)

    def method_overrides(self) -> dict[str, Any]:
        """Options that change the method preset."""
        return method_option_overrides(self)


def _load_data(config: TrainConfig) -> tuple[PixelImages, Tensor, PixelImages, Tensor, int]:
    from ..data import load_mnist_family, num_classes

    # images stay uint8 in memory and become normalised float32 one batch at a time
    train_x, train_y, test_x, test_y = load_mnist_family(config.dataset, data_dir=config.data_dir, as_pixels=True)
    if config.train_subset is not None:
        train_x, train_y = train_x.rows(slice(None, config.train_subset)), train_y[: config.train_subset]
    for split, x in (("training", train_x), ("test", test_x)):
        if x.shape[0] == 0:
            raise BrainsparseError(f"the {split} split of {config.dataset} holds no images; allowed: a dataset with images in both splits")
    return train_x, train_y, test_x, test_y, num_classes(config.dataset)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor | PixelImages, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``x, y``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(out, target, reduction="sum"))
        correct += int((out.argmax(1) == target).sum())
    model.train()
    return loss_sum / x.shape[0], correct / x.shape[0]


def default_update_every(method: MethodConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Steps between topology updates when none is given: one epoch (the papers' MLP setting),
    but for a density-decay schedule at most a tenth of the decay window, so that short runs
    still decay gradually instead of in one jump."""
    every = steps_per_epoch
    if method.density_schedule in ("sigmoid", "cubic", "linear"):
        window = int(method.prune_end_fraction * total_steps)
        every = min(every, max(1, window // 10))
    return every


class _Run:
    """The live objects of one run (model, optimizer, schedule, engine)."""

    def __init__(self, config: TrainConfig, in_features: int, n_classes: int, steps_per_epoch: int, init_data: Tensor):
        torch.manual_seed(config.seed)
        self.model = MLP([in_features, *config.hidden, n_classes]).to(init_data.device)
        # fused where this torch has it: one kernel per parameter instead of one per operation
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            **fused_optimizer_options(init_data.device, torch.optim.SGD),
        )
        # lr: linear decay 0.025 → 2.5e-4 reached at 90 % of training, stepped every batch
        decay_steps = max(1, int(0.9 * config.epochs * steps_per_epoch))
        final = config.lr_final_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: 1.0 - (1.0 - final) * min(1.0, t / decay_steps)
        )
        method = resolve_method(config.method, **config.method_overrides())
        total_steps = config.epochs * steps_per_epoch
        update_every = config.update_every or default_update_every(method, steps_per_epoch, total_steps)
        self.engine: DynamicSparseEngine = sparsify(
            self.model,
            self.optimizer,
            method=method,
            density=config.density,
            update_every=update_every,
            total_steps=total_steps,
            seed=config.seed,
            init_data=init_data,
            kernel=config.kernel,
            batch_size=config.batch_size,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "engine": self.engine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_training_state(state, self.engine, self.model, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])


def train_classifier(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, and write the run folder; returns the summary.

    ``stop_after_epochs`` ends the process early after that many epochs of this call (used to
    simulate an interrupted run); the folder then resumes with ``resume=True``.
    """
    out = Path(out)
    config = open_run(config, out, RUN_FILES, resume, overwrite)

    # Everything that can fail on bad input happens before the run folder is touched.
    train_x, train_y, test_x, test_y, n_classes = _load_data(config)
    device = resolve_device(config.device)
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    steps_per_epoch = math.ceil(train_x.shape[0] / config.batch_size)
    init_data = train_x.rows(slice(None, config.csti_samples))  # CSTI reads it a block of rows at a time
    run = _Run(config, train_x.shape[1], n_classes, steps_per_epoch, init_data)

    history: list[dict[str, Any]] = []
    start_epoch, wall_before = 0, 0.0
    if resume:
        state = load_checkpoint(out / "checkpoint.pt")
        try:
            run.load_state_dict(state)
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            wall_before = float(state["wall_time_s"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise BrainsparseError(
                f"checkpoint '{out / 'checkpoint.pt'}' does not fit this run ({type(exc).__name__}: {str(exc)[:160]}); "
                "start the run again with --overwrite"
            ) from None
        if not 0 <= start_epoch <= config.epochs or len(history) != start_epoch:
            raise BrainsparseError(f"checkpoint '{out / 'checkpoint.pt'}' holds epoch {start_epoch} of {config.epochs} "
                                   f"with {len(history)} metrics rows; start the run again with --overwrite")
    with RunFolder(out, RUN_FILES, resume=resume, overwrite=overwrite) as folder:
        if not resume:
            write_json(folder.path / "config.json", dataclasses.asdict(config))
        elif history:  # a kill between the checkpoint and the metrics write: the checkpoint is the truth
            write_jsonl(folder.path / "metrics.jsonl", history)
        return _train_epochs(config, folder, run, train_x, train_y, test_x, test_y, steps_per_epoch, history,
                             start_epoch, wall_before, progress, stop_after_epochs)


#: batches gathered from the uint8 images (and converted to float) at a time: one gather per
#: block instead of one per step (the paper MLP: 6.4 MB of float32 for 64 batches of 32)
GATHER_BATCHES = 64


def epoch_batches(images: PixelImages, labels: Tensor, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches ``(x, y)`` of one epoch in ``order``, ``batch_size`` rows each (the last may be
    shorter); each ``x`` is a view of a block of :data:`GATHER_BATCHES` batches gathered at once,
    with the values one gather of its rows gives."""
    block = GATHER_BATCHES * batch_size
    for start in range(0, order.numel(), block):
        idx = order[start : start + block]
        xs, ys = images.batch(idx), labels.index_select(0, idx)
        for i in range(0, idx.numel(), batch_size):
            yield xs[i : i + batch_size], ys[i : i + batch_size]


def _train_epochs(config, folder, run, train_x, train_y, test_x, test_y, steps_per_epoch, history, start_epoch,
                  wall_before, progress, stop_after_epochs):
    """The epoch loop of :func:`train_classifier`, writing into ``folder`` (a :class:`RunFolder`)."""
    title = f"{config.method} on {config.dataset}, density {config.density:g}, seed {config.seed}"
    epochs_run = 0
    for epoch in range(start_epoch, config.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        t0 = time.perf_counter()
        updates_before = len(run.engine.history)
        order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
            leave=False, dynamic_ncols=True,
        )
        for b, (x, y) in zip(bar, epoch_batches(train_x, train_y, order, config.batch_size)):
            clear_grads(run.optimizer)
            logits = run.model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            run.optimizer.step()
            run.engine.step()
            run.scheduler.step()
            value = loss.item()
            if not math.isfinite(value):
                _diverged(config, folder, value, epoch, b, steps_per_epoch)
            loss_sum += value * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            seen += y.shape[0]
            if b % 50 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        train_time = time.perf_counter() - t0
        lr = run.optimizer.param_groups[0]["lr"]
        test_loss, test_acc = evaluate(run.model, test_x, test_y, config.eval_batch_size)
        epoch_time = time.perf_counter() - t0
        record = topology_record(
            run.engine, updates_before, epoch=epoch + 1,
            train_loss=loss_sum / seen, train_accuracy=correct / seen,
            test_loss=test_loss, test_accuracy=test_acc, lr=lr, epoch_time_s=epoch_time, train_time_s=train_time,
        )
        history.append(record)
        wall_before += epoch_time
        if not math.isfinite(test_loss):
            _diverged(config, folder, test_loss, epoch, steps_per_epoch - 1, steps_per_epoch, what="test loss")
        save_checkpoint(
            folder.path / "checkpoint.pt",
            {**run.state_dict(), "epoch": epoch + 1, "history": history, "wall_time_s": wall_before,
             "config": dataclasses.asdict(config)},
        )
        write_jsonl(folder.path / "metrics.jsonl", history)
        folder.started()
        epochs_run += 1
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                f"test accuracy {test_acc:.4f}, active neurons {record['active_neuron_rate']:.3f}, "
                f"density {record['density']:.4f}, {epoch_time:.1f}s"
            )

    if history:
        plot_training_curves(history, folder.path / "curves.png", title=title)
    summary = summarize(config, history, wall_before)
    if len(history) == config.epochs:
        write_json(folder.path / "summary.json", summary)
    return summary


def _diverged(config: TrainConfig, folder: RunFolder, value: float, epoch: int, batch: int, steps_per_epoch: int,
              what: str = "training loss") -> None:
    """Stop a run whose loss is no longer finite; the last good checkpoint stays."""
    step = epoch * steps_per_epoch + batch + 1
    kept = (f"the last good checkpoint (epoch {epoch}) is kept in '{folder.final}'" if epoch > 0
            else "no epoch finished, so no checkpoint was written")
    raise BrainsparseError(
        f"training diverged: the {what} became {value} at step {step} (epoch {epoch + 1}); {kept}; "
        f"try a lower --lr than {config.lr:g}"
    )


def summarize(config: TrainConfig, history: list[dict[str, Any]], wall_time: float) -> dict[str, Any]:
    """Final and best test accuracy, wall time and topology of a run."""
    if not history:
        return {"epochs_completed": 0}
    best = max(history, key=lambda r: r["test_accuracy"])
    last = history[-1]
    return {
        "dataset": config.dataset,
        "method": config.method,
        "density": config.density,
        "seed": config.seed,
        "epochs_completed": len(history),
        "final_test_accuracy": last["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "final_train_loss": last["train_loss"],
        "active_neuron_rate": last["active_neuron_rate"],
        "final_density": last["density"],
        "wall_time_s": wall_time,
        "train_time_s": train_time_s(history, "train_time_s"),
        "links": {n: v["links"] for n, v in last["layers"].items()},
    }

