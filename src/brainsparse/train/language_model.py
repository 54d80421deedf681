"""Training a LLaMA-style language model with any method, into a run folder; also under torchrun.

The run folder holds ``config.json``, ``metrics.jsonl`` (one row per evaluation: train loss,
validation perplexity, the topology), ``updates.jsonl`` (one row per topology update), ``checkpoint.pt`` (atomic, resumable on any number of
processes), ``summary.json`` (validation and test perplexity, per word for PTB, per character
for Tiny Shakespeare) and ``curves.png``.

Under ``torchrun --nproc_per_node N`` every process trains on its slice of each global batch
(``batch_size`` sequences in all), the model is wrapped in DDP and rank 0 decides every
topology update (:mod:`brainsparse.train.distributed`); only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._validation import check_density, check_positive_int, check_seed, check_unit_interval
from ..data.text import Corpus, eval_windows, lm_batch, load_corpus, pack_windows, text_dataset_name
from ..engine import DynamicSparseEngine, sparsify
from ..errors import BrainsparseError
from ..methods import INITS, resolve_method
from ..models.llama import LLAMA_PRESETS, LLAMA_SPARSE_PATTERNS, LlamaLM, hf_llama_tiny
from ..models.llama import llama_config, llama_sparse_layout
from ..report.plots import plot_step_curves
from . import distributed as dd
from .checkpoint import load_checkpoint, write_json
from .common import (
    ConfigDict, RunFolder, check_init_params, method_option_overrides, open_run, resolve_device, restore_training_state,
    stored_config, train_time_s,
)
from .loop import StepRun, run_steps
from .lr import warmup_cosine

PARALLEL = ("ddp", "fsdp")
RUN_FILES = ("config.json", "metrics.jsonl", "updates.jsonl", "checkpoint.pt", "summary.json", "curves.png")
MODELS = (*LLAMA_PRESETS, "hf-llama-tiny")
#: the spec's LLaMA settings for the Cannistraci-Hebb methods (algorithms.md §9): cosine-annealed
#: ζ, soft removal temperature 1 → 9, CH2-L3 in matrix form
@dataclass
class LMConfig(ConfigDict):
    """Settings of one language-model run. Defaults: ``llama-tiny`` on PTB, sized to train on
    2 CPU cores in under half an hour; the spec's LLaMA recipe (AdamW lr 3e-3, ζ = 0.1 cosine,
    update every 100 steps, density 0.3 / 0.1) with a lower peak lr for the tiny model."""

    SCORE: ClassVar[str] = "test_ppl"
    BEST: ClassVar[str] = "best_valid_ppl"
    CURVE: ClassVar[str] = "valid_ppl"
    CURVE_X: ClassVar[str] = "step"
    HIGHER_IS_BETTER: ClassVar[bool] = False

    task: str = "lm"
    dataset: str = "ptb"
    model: str = "llama-tiny"
    method: str = "chtss"
    density: float = 0.3
    seed: int = 0
    steps: int = 2400
    batch_size: int = 16  # sequences per global batch (split over the processes)
    seq_len: int = 64
    lr: float = 3e-3  # AdamW peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.1  # on matrices and embeddings, not on norm gains
    grad_clip: float = 1.0
    eval_every: int = 300
    dropout: float = 0.1
    update_every: int = 100
    drop_fraction: float = 0.1  # ζ (spec LLaMA: 0.1, cosine-annealed for the CH methods)
    init: str | None = None
    beta: float | None = None
    r: float | None = None
    regrowth_exact: bool | None = None
    recipe: str | None = None  # whose per-task method choices apply: None = the task's recipe, "none" = bare preset
    method_options: dict[str, Any] | None = None  # the recipe's overrides of the method preset (filled at start)
    weight_init: str = "keep"  # the model's own N(0, 0.02²) initialisation, masked
    kernel: str = "auto"  # auto | dense | sparse (auto is dense under torchrun)
    parallel: str = "ddp"  # under torchrun: ddp (replicated weights) | fsdp (FSDP2: weights, masks, optimizer state sharded)
    device: str = "auto"  # auto (GPU when present) | cpu | cuda | cuda:N; under torchrun: cuda:LOCAL_RANK or cpu
    train_subset: int | None = None  # train on the first N tokens only
    eval_batch_size: int = 32
    data_dir: str | None = None

    def validate(self) -> None:
        """Raise :class:`BrainsparseError` naming the first bad value."""
        text_dataset_name(self.dataset)
        if self.model not in MODELS:
            raise BrainsparseError(f"unknown model {self.model!r} for task lm; allowed: {', '.join(MODELS)}")
        check_density(self.density)
        for name in ("steps", "batch_size", "seq_len", "eval_every", "update_every", "eval_batch_size"):
            check_positive_int(getattr(self, name), name)
        if self.train_subset is not None:
            check_positive_int(self.train_subset, "train_subset")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise BrainsparseError(f"warmup {self.warmup!r} is invalid; allowed: an integer >= 0")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise BrainsparseError(f"{name} {value!r} is invalid; allowed: a positive number")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise BrainsparseError(f"weight_decay {self.weight_decay!r} is invalid; allowed: a number >= 0")
        check_unit_interval(self.min_lr_ratio, "min_lr_ratio")
        if not 0.0 <= self.dropout < 1.0:
            raise BrainsparseError(f"dropout {self.dropout!r} is invalid; allowed: [0, 1)")
        if self.kernel not in ("auto", "dense", "sparse"):
            raise BrainsparseError(f"unknown kernel {self.kernel!r}; allowed: auto, dense, sparse")
        resolve_device(self.device)
        self.check_parallel()
        if self.init is not None and self.init.lower() not in INITS:
            raise BrainsparseError(f"unknown init {self.init!r}; allowed: {', '.join(INITS)}")
        if self.init is not None and self.init.lower() == "csti":
            raise BrainsparseError("init 'csti' needs input features; a language model's sparse layers see "
                                   "hidden states, so choose uniform, er, erk, bsw, bsf or brf")
        check_seed(self.seed)
        for name in ("beta", "r"):
            if getattr(self, name) is not None:
                check_unit_interval(getattr(self, name), name)
        check_init_params(self)
        if resolve_method(self.method, **self.method_overrides()).init == "csti":
            raise BrainsparseError(f"method {self.method!r} starts from CSTI, which needs input features; a language "
                                   "model's sparse layers see hidden states: pass --init uniform, er, erk, bsw, bsf or brf")

    def check_parallel(self) -> None:
        """Refuse a ``parallel`` mode this run cannot use (naming the value)."""
        if self.parallel not in PARALLEL:
            raise BrainsparseError(f"unknown parallel mode {self.parallel!r}; allowed: {', '.join(PARALLEL)}")
        if self.parallel != "fsdp":
            return
        if self.kernel == "sparse":
            raise BrainsparseError("--kernel sparse is not supported with --parallel fsdp (sparse-path parameters change "
                                   "shape at every update); allowed with fsdp: --kernel dense or auto")
        method = resolve_method(self.method, **self.method_overrides())
        for what, value, ok in (("regrowth", method.regrowth, method.regrowth != "cosine"),
                                ("head pruning", method.head_pruning, not method.head_pruning),
                                ("regularizer", method.regularizer, method.regularizer == "none")):
            if method.sparse and not ok:
                raise BrainsparseError(
                    f"--parallel fsdp does not support method {self.method!r} ({what} {value!r}: it needs unsharded "
                    "weights or activations); allowed with fsdp: dense, static, set, rigl, mest, granet, cht, chts, chtss")

    def method_overrides(self) -> dict[str, Any]:
        """The LLaMA settings of the spec and the options that change the method preset."""
        out = method_option_overrides(self)
        if self.method not in ("dense", "neuroprune"):
            out["weight_init"] = self.weight_init
        return out


def build_model(config: LMConfig, vocab_size: int) -> nn.Module:
    """The config's model with the corpus's vocabulary (draws from torch's global generator)."""
    if config.model == "hf-llama-tiny":
        return hf_llama_tiny(vocab_size, seq_len=config.seq_len)
    cfg = llama_config(config.model, vocab_size=vocab_size, dropout=config.dropout,
                       max_seq_len=max(config.seq_len, LLAMA_PRESETS[config.model].max_seq_len))
    return LlamaLM(cfg)


def logits_of(model: nn.Module, tokens: Tensor) -> Tensor:
    """Logits (B, T, vocab) of this package's model or a Hugging Face causal LM."""
    out = model(tokens)
    return out if torch.is_tensor(out) else out.logits


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (β = 0.9, 0.95) with weight decay on matrices and embeddings only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def sparsify_llama(model: nn.Module, optimizer: torch.optim.Optimizer | None, **options: Any) -> DynamicSparseEngine:
    """:func:`brainsparse.sparsify` on the attention and SwiGLU projections of a LLaMA model (this
    package's or Hugging Face's), with the LLaMA chains and pairs for percolation; embeddings and
    ``lm_head`` stay dense. ``options`` go to :func:`brainsparse.sparsify`."""
    chains, pairs = llama_sparse_layout(model)
    if not chains:
        raise BrainsparseError("the model has no LLaMA blocks (modules with self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj)")
    method = options.pop("method", "chts")
    if not resolve_method(method).sparse:  # dense: no layers, so no chains
        chains, pairs = None, []
    return sparsify(model, optimizer, method=method, include=LLAMA_SPARSE_PATTERNS, chains=chains, pairs=pairs, **options)


@torch.no_grad()
def evaluate_nll(model: nn.Module, tokens: Tensor, seq_len: int, batch_size: int,
                 ctx: dd.DistContext | None = None) -> tuple[float, int]:
    """(summed negative log-likelihood, predicted tokens) over a stream; under torchrun each rank
    takes every world_size-th group of windows and the sums are all-reduced."""
    ctx = ctx or dd.DistContext()
    was_training = model.training
    model.eval()
    device = ctx.device
    windows = eval_windows(tokens, seq_len)
    nll, count = 0.0, 0
    groups = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    for g in groups[ctx.rank :: ctx.world_size]:
        full = [w for w in g if w.numel() == seq_len + 1]
        parts = [torch.stack(full)] if full else []
        parts += [w[None] for w in g if w.numel() != seq_len + 1]  # the last, shorter window
        for batch in parts:
            batch = batch.to(device)
            logits = logits_of(model, batch[:, :-1])
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
    nll, count = dd.allreduce_sum([nll, float(count)], ctx)
    model.train(was_training)
    return nll, int(count)


def perplexity(nll: float, count: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    # perplexity = exp(−(1/N) Σ log p(x_t | x_<t))
    return math.exp(nll / max(count, 1))


class _LMRun:
    """Model, optimizer, engine and data of one run, with the callbacks of :class:`StepRun`."""

    def __init__(self, config: LMConfig, corpus: Corpus, ctx: dd.DistContext):
        self.config, self.corpus, self.ctx = config, corpus, ctx
        train = corpus.splits["train"]
        if config.train_subset is not None:
            train = train[: config.train_subset]
        self.windows = pack_windows(train, config.seq_len)
        if config.batch_size % ctx.world_size:
            raise BrainsparseError(
                f"batch size {config.batch_size} is not divisible by the {ctx.world_size} processes; "
                f"allowed: a multiple of {ctx.world_size}")
        torch.manual_seed(config.seed)
        self.model = build_model(config, corpus.vocab_size).to(ctx.device)
        #: FSDP2 (weights, masks and optimizer state sharded over the ranks)
        self.fsdp = ctx.distributed and config.parallel == "fsdp"
        #: DDP semantics on the sparse kernel path: gradients averaged by hand after backward
        self.manual_dp = ctx.distributed and not self.fsdp and config.kernel == "sparse"
        self.mesh = None
        if self.fsdp:
            from ..distributed.fsdp import default_mesh, shard_model

            self.mesh = default_mesh()
            shard_model(self.model, self.mesh)
        self.optimizer = adamw(self.model, config.lr, config.weight_decay)
        method = resolve_method(config.method, **config.method_overrides())
        kernel = config.kernel
        if ctx.distributed and not self.manual_dp:
            if kernel == "sparse":
                raise BrainsparseError("kernel 'sparse' is not supported with --parallel fsdp; allowed there: dense, auto")
            kernel = "dense"
        options: dict[str, Any] = {
            "method": method, "density": config.density, "update_every": config.update_every,
            "total_steps": config.steps, "seed": config.seed, "kernel": kernel,
            "batch_size": config.batch_size * config.seq_len,
        }
        if self.fsdp:
            from ..distributed.fsdp import sparsify_sharded

            options.pop("kernel")
            self.engine = sparsify_sharded(self.model, self.optimizer, sparsify_fn=sparsify_llama, **options)
        else:
            self.engine = sparsify_llama(self.model, self.optimizer, **options)
        self.net: nn.Module = self.model
        if self.manual_dp:
            from ..distributed.data_parallel import broadcast_parameters

            broadcast_parameters(self.model)
        elif ctx.distributed and not self.fsdp:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        dd.seed_rank_rng(config.seed, ctx)

    def batch_at(self, step: int) -> Tensor:
        batch = lm_batch(self.windows, step, self.config.batch_size, self.config.seed)
        return dd.shard(batch, self.ctx).to(self.ctx.device)

    def loss_of(self, batch: Tensor) -> tuple[Tensor, int]:
        logits = logits_of(self.net, batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        return loss, batch[:, 1:].numel()

    def lr_at(self, step: int, last_update: int | None) -> float:
        # warm-up then cosine decay, evaluated at the 0-based step index
        return self.config.lr * warmup_cosine(step - 1, self.config.steps, self.config.warmup, self.config.min_lr_ratio)

    def evaluate(self, split: str = "valid") -> dict[str, float]:
        # FSDP: every rank runs every forward (its collectives need all ranks), so each rank
        # evaluates the whole split in one process's order
        ctx = dataclasses.replace(dd.DistContext(), device=self.ctx.device) if self.fsdp else self.ctx
        nll, count = evaluate_nll(self.model, self.corpus.splits[split], self.config.seq_len,
                                  self.config.eval_batch_size, ctx)
        return ppl_metrics(split, nll, count, self.corpus)

    def after_backward(self) -> None:
        if self.fsdp:
            self.engine.mask_gradients()  # type: ignore[attr-defined]  # before clipping, as in one process
        elif self.manual_dp:
            from ..distributed.data_parallel import average_gradients

            average_gradients(self.model)

    def before_engine_step(self) -> None:
        # FSDP: the shards' gradients are already averaged (reduce-scatter) and every rank decides
        if not self.fsdp and self.engine.is_update_step(self.engine.step_count + 1):
            dd.allreduce_dense_grads(self.engine, self.ctx)

    def after_engine_step(self, update: dict[str, Any] | None) -> None:
        if update is not None and not self.fsdp:
            dd.broadcast_engine(self.engine, self.ctx)

    def save_state(self, out: Path, extra: dict[str, Any]) -> None:
        """FSDP: a sharded checkpoint (every rank writes its shards)."""
        from ..distributed.checkpoint import save_sharded

        save_sharded(out, self.model, self.optimizer, self.engine, extra, self.mesh)  # type: ignore[arg-type]

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: sharded ones (and one-process ones into FSDP) through
        :mod:`brainsparse.distributed.checkpoint`."""
        from ..distributed.checkpoint import SHARDED, restore

        if SHARDED in state or self.fsdp:
            restore(state, self.engine, self.model, self.optimizer, self.mesh)
        else:
            restore_training_state(state, self.engine, self.model, self.optimizer)

    def step_run(self) -> StepRun:
        run = StepRun(self.model, self.optimizer, self.engine, self.batch_at, self.loss_of, self.lr_at,
                      self.evaluate, grad_clip=self.config.grad_clip)
        run.load_state_dict = self.load_state  # type: ignore[method-assign]
        return run


def ppl_metrics(split: str, nll: float, count: int, corpus: Corpus) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_ppl`` per token (per word for PTB); for character corpora also
    bits per character and perplexity per whitespace word."""
    out = {f"{split}_loss": nll / max(count, 1), f"{split}_ppl": perplexity(nll, count)}
    if corpus.level == "char":
        out[f"{split}_bpc"] = nll / max(count, 1) / math.log(2)  # bits per character = nats / ln 2
        out[f"{split}_word_ppl"] = perplexity(nll, corpus.words[split])
    return out


def train_language_model(
    config: LMConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_evals: int | None = None,
) -> dict[str, Any]:
    """Train, validate every ``eval_every`` steps, checkpoint, test at the end; returns the summary.

    Works in one process or under ``torchrun`` (then only rank 0 writes). ``stop_after_evals``
    ends early after that many evaluations of this call (an interrupted run; resume with
    ``resume=True``, on any number of processes).
    """
    out = Path(out)
    if not resume and config.parallel == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise BrainsparseError("--parallel fsdp needs several processes: run under torchrun (e.g. torchrun "
                               "--nproc-per-node 2 -m brainsparse train --task lm --parallel fsdp ...); allowed in one "
                               "process: --parallel ddp (the default, which then trains in plain single-process mode)")
    if dd.env_rank() == 0:  # checks the folder before anything is written
        config = open_run(config, out, RUN_FILES, resume, overwrite)
    else:  # rank 0 may already be writing the folder: only read the stored config
        config = stored_config(LMConfig, out, given=config) if resume else config
        config.validate()
    device = resolve_device(config.device)
    ctx = dd.init_distributed(cuda=device.type == "cuda")
    if not ctx.distributed:
        ctx = dataclasses.replace(ctx, device=device)
    corpus = load_corpus(config.dataset, config.data_dir)
    run = _LMRun(config, corpus, ctx)
    state = None
    if resume:
        from ..distributed.checkpoint import resolve

        state = resolve(load_checkpoint(out / "checkpoint.pt"), out)
        if ctx.rank > 0:
            state["rng_state"] = torch.get_rng_state()  # this rank's own dropout stream
    with RunFolder(out, RUN_FILES, resume=resume, overwrite=overwrite, lock=ctx.is_main) as folder:
        if not resume and ctx.is_main:
            write_json(folder.path / "config.json", dataclasses.asdict(config))
        history, wall = run_steps(
            run.step_run(), steps=config.steps, eval_every=config.eval_every, out=folder.path,
            config=dataclasses.asdict(config), state=state, progress=progress, stop_after_evals=stop_after_evals,
            progress_keys=(("valid_ppl", "valid ppl"),), is_writer=ctx.is_main, before_engine_step=run.before_engine_step,
            after_engine_step=run.after_engine_step, on_checkpoint=folder.started if ctx.is_main else None,
            after_backward=run.after_backward, save_state=run.save_state if run.fsdp else None,
        )
        done = bool(history) and history[-1]["step"] == config.steps
        test = run.evaluate("test") if done else {}
        summary = summarize(config, corpus, history, wall, test, ctx.world_size)
        if ctx.distributed:
            summary["parallel"] = "fsdp" if run.fsdp else "ddp"
        if ctx.is_main and history:
            plot_step_curves(history, folder.path / "curves.png", score="valid_ppl", title=_title(config), log_score=True)
            if done:
                write_json(folder.path / "summary.json", summary)
    dd.shutdown(ctx)
    return summary


def _title(config: LMConfig) -> str:
    density = "" if config.method == "dense" else f", density {config.density:g}"
    return f"{config.model} on {config.dataset}: {config.method}{density}, seed {config.seed}"


def summarize(config: LMConfig, corpus: Corpus, history: list[dict[str, Any]], wall: float,
              test: dict[str, float], processes: int) -> dict[str, Any]:
    """Final and best validation perplexity, test perplexity, wall time and topology of a run."""
    if not history:
        return {"steps_completed": 0}
    last = history[-1]
    best = min(history, key=lambda r: r["valid_ppl"])
    summary = {
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "density": config.density,
        "seed": config.seed,
        "unit": corpus.level,
        "steps_completed": last["step"],
        "final_valid_ppl": last["valid_ppl"],
        "best_valid_ppl": best["valid_ppl"],
        "best_step": best["step"],
        **{k: v for k, v in test.items()},
        "final_train_loss": last["train_loss"],
        "active_neuron_rate": last["active_neuron_rate"],
        "final_density": last["density"],
        "wall_time_s": wall,
        "train_time_s": train_time_s(history, "time_s"),
        "processes": processes,
        "threads": torch.get_num_threads(),
        "links": {n: v["links"] for n, v in last["layers"].items()},
    }
    return summary
