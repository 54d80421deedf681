"""Training an encoder–decoder Transformer for translation with any method, into a run folder.

The run folder holds ``config.json``, ``vocab.model`` (the sentencepiece vocabulary trained on
the training split), ``metrics.jsonl`` (one row per evaluation: train loss, validation loss,
perplexity and BLEU, the topology), ``updates.jsonl`` (one row per topology update), ``checkpoint.pt``, ``summary.json`` (test BLEU),
``test.hyp.<tgt>`` (the test set's translations) and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from .._validation import check_density, check_language_code, check_nonnegative, check_positive_int, check_seed, check_unit_interval
from ..data.translation import BOS, EOS, PAD, Batch, Vocabulary, load_parallel, make_batch, token_batches
from ..engine import sparsify
from ..errors import BrainsparseError
from ..methods import INITS, resolve_method
from ..models.decoding import beam_search
from ..models.functional import label_smoothed_cross_entropy
from ..models.transformer import PRESETS, Seq2SeqTransformer, transformer_config
from ..report.plots import plot_step_curves
from .checkpoint import atomic_write, load_checkpoint, read_json_file, write_json, write_text
from .common import (
    ConfigDict, RunFolder, check_init_params, fused_optimizer_options, method_option_overrides, open_run,
    resolve_device, stored_config, train_time_s, with_engine_masks,
)
from .loop import StepRun, run_steps
from .lr import iterative_noam

RUN_FILES = ("config.json", "vocab.model", "metrics.jsonl", "updates.jsonl", "checkpoint.pt", "summary.json", "curves.png")


@dataclass
class TranslationConfig(ConfigDict):
    """Settings of one translation run (defaults: a small model that trains on 2 CPU cores; the
    spec's Multi30k recipe is ``model="multi30k"``, batch 1024 tokens, 20k steps, warm-up 3000,
    lr 0.25, update every 200 steps — algorithms.md §9)."""

    SCORE: ClassVar[str] = "test_bleu"
    BEST: ClassVar[str] = "best_valid_bleu"
    CURVE: ClassVar[str] = "valid_bleu"
    CURVE_X: ClassVar[str] = "step"
    HIGHER_IS_BETTER: ClassVar[bool] = True

    task: str = "translation"
    dataset: str = "multi30k"
    source: str | None = None  # language codes; None: the corpus's usual direction (en→de)
    target: str | None = None
    model: str = "small"
    method: str = "chts"
    density: float = 0.1
    seed: int = 0
    steps: int = 3000
    batch_tokens: int = 1024  # padded source + target tokens per batch (the spec's Multi30k setting)
    lr: float = 1.0  # noam scale
    warmup: int = 800
    rewarm_steps: int = 20  # iterative noam: re-warm-up after each topology update
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    dropout: float | None = None  # None: the preset's
    eval_every: int = 1000
    beam: int = 2
    vocab_size: int = 5000
    max_len: int = 100  # training pairs longer than this (in tokens) are skipped
    update_every: int | None = None  # None: 200 steps (Multi30k setting)
    drop_fraction: float | None = None
    init: str | None = None
    beta: float | None = None
    r: float | None = None
    regrowth_exact: bool | None = None
    recipe: str | None = None  # whose per-task method choices apply: None = the task's recipe, "none" = bare preset
    method_options: dict[str, Any] | None = None  # the recipe's overrides of the method preset (filled at start)
    kernel: str = "dense"  # auto | dense | sparse
    device: str = "auto"  # auto (GPU when present) | cpu | cuda | cuda:N
    train_subset: int | None = None
    data_dir: str | None = None

    def validate(self) -> None:
        """Raise :class:`BrainsparseError` naming the first bad value."""
        check_density(self.density)
        for key in ("steps", "batch_tokens", "warmup", "eval_every", "beam", "vocab_size", "max_len"):
            check_positive_int(getattr(self, key), key.replace("_", "-"))
        for key in ("update_every", "train_subset"):
            if getattr(self, key) is not None:
                check_positive_int(getattr(self, key), key.replace("_", "-"))
        if self.model not in PRESETS:
            raise BrainsparseError(f"unknown translation model {self.model!r}; allowed: {', '.join(PRESETS)}")
        if self.kernel not in ("dense", "sparse", "auto"):
            raise BrainsparseError(f"unknown kernel {self.kernel!r}; allowed: auto, dense, sparse")
        resolve_device(self.device)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise BrainsparseError(f"lr {self.lr!r} is invalid; allowed: a positive number")
        if not 0 <= self.label_smoothing < 1:
            raise BrainsparseError(f"label_smoothing {self.label_smoothing!r} is invalid; allowed: [0, 1)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BrainsparseError(f"dropout {self.dropout!r} is invalid; allowed: [0, 1)")
        if self.init is not None and self.init.lower() not in INITS:
            raise BrainsparseError(f"unknown init {self.init!r}; allowed: {', '.join(INITS)}")
        check_seed(self.seed)
        check_beam(self.beam)
        check_language_code(self.source, "source")
        check_language_code(self.target, "target")
        check_nonnegative(self.weight_decay, "weight_decay")
        check_positive_int(self.rewarm_steps, "rewarm-steps")
        for key in ("beta", "r"):
            if getattr(self, key) is not None:
                check_unit_interval(getattr(self, key), key)
        check_init_params(self)
        resolve_method(self.method, **self.method_overrides())

    def method_overrides(self) -> dict[str, Any]:
        """Options that change the method preset (CSTI needs input features, which token ids are
        not: a preset asking for it starts from BSW instead unless ``init`` says otherwise)."""
        out = method_option_overrides(self)
        if self.init is None and out.get("init", resolve_method(self.method).init) == "csti":
            out["init"] = "bsw"
        return out

    @property
    def update_interval(self) -> int:
        return self.update_every or 200


@dataclass
class TranslationData:
    """Encoded splits, raw references and the training batches."""

    vocab: Vocabulary
    train: tuple[list[list[int]], list[list[int]]]
    valid: tuple[list[list[int]], list[list[int]]]
    valid_refs: list[str]
    test_src: list[list[int]]
    test_refs: list[str]
    batches: list[list[int]]
    pair: tuple[str, str]


def prepare_data(config: TranslationConfig, vocab: Vocabulary | None = None) -> TranslationData:
    """Load the corpus, train (or reuse) the vocabulary, encode and batch the training split."""
    splits = load_parallel(config.dataset, config.data_dir, config.source, config.target)
    from ..data.translation import CORPORA

    pair = (config.source or CORPORA[config.dataset].languages[0], config.target or CORPORA[config.dataset].languages[1])
    train_src, train_tgt = splits["train"]
    if config.train_subset is not None:
        train_src, train_tgt = train_src[: config.train_subset], train_tgt[: config.train_subset]
    if vocab is None:
        vocab = Vocabulary.train(train_src + train_tgt, vocab_size=config.vocab_size, seed=config.seed)
    enc_train = (vocab.encode(train_src), vocab.encode(train_tgt))
    for split in ("train", "valid", "test"):
        if not splits[split][0] or (split == "train" and not train_src):
            raise BrainsparseError(f"the {split} split of {config.dataset} ({pair[0]}-{pair[1]}) holds no sentences; "
                                   "allowed: a corpus whose train, valid and test splits all hold sentences")
    batches = token_batches(*enc_train, config.batch_tokens, max_len=config.max_len)
    if not batches:
        raise BrainsparseError(f"no training pair fits max_len {config.max_len}; raise --max-len")
    return TranslationData(
        vocab=vocab,
        train=enc_train,
        valid=(vocab.encode(splits["valid"][0]), vocab.encode(splits["valid"][1])),
        valid_refs=splits["valid"][1],
        test_src=vocab.encode(splits["test"][0]),
        test_refs=splits["test"][1],
        batches=batches,
        pair=pair,
    )


def build_model(config: TranslationConfig, vocab_size: int) -> Seq2SeqTransformer:
    overrides = {} if config.dropout is None else {"dropout": config.dropout}
    return Seq2SeqTransformer(transformer_config(config.model, vocab_size, **overrides), pad_id=PAD)


def translate_ids(
    model: Seq2SeqTransformer, sources: list[list[int]], beam: int, batch_sentences: int = 100
) -> list[list[int]]:
    """Beam-search translations of encoded sentences, in input order (batched by length)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    limit = model.cfg.max_positions - 1
    for start in range(0, len(order), batch_sentences):
        idx = order[start : start + batch_sentences]
        src = make_batch([sources[i][:limit] for i in idx], [[] for _ in idx]).src.to(next(model.parameters()).device)
        for i, hyp in zip(idx, beam_search(model, src, beam, BOS, EOS)):
            out[i] = hyp
    return out


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU of detokenised text (sacrebleu, its default 13a tokenisation)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def validation_loss(model: Seq2SeqTransformer, src: list[list[int]], tgt: list[list[int]], batch_tokens: int) -> float:
    """Mean per-token cross-entropy (no label smoothing) of the references."""
    model.eval()
    total, count = 0.0, 0
    for idx in token_batches(src, tgt, batch_tokens):
        b = make_batch([src[i] for i in idx], [tgt[i] for i in idx]).to(next(model.parameters()).device)
        logits = model(b.src, b.tgt_in)
        total += float(F.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD, reduction="sum"))
        count += b.n_tokens
    return total / max(count, 1)


class _TranslationRun:
    """Model, optimizer, engine and the callbacks of the step loop."""

    def __init__(self, config: TranslationConfig, data: TranslationData):
        torch.manual_seed(config.seed)
        self.config, self.data = config, data
        self.device = resolve_device(config.device)
        self.model = build_model(config, len(data.vocab)).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                                          weight_decay=config.weight_decay, **fused_optimizer_options(self.device))
        self.engine = sparsify(
            self.model, self.optimizer, method=resolve_method(config.method, **config.method_overrides()),
            density=config.density, update_every=config.update_interval, total_steps=config.steps,
            pairs=self.model.sparse_pairs(), seed=config.seed, kernel=config.kernel,
            batch_size=max(1, config.batch_tokens // 2),
        )
        self.loop = StepRun(
            model=self.model, optimizer=self.optimizer, engine=self.engine, batch_at=self.batch_at,
            loss_of=self.loss_of, lr_at=self.lr_at, evaluate=self.evaluate,
        )

    def batch_at(self, step: int) -> Batch:
        """Batch of 0-based ``step``: the batches in a fresh seeded order every pass."""
        n = len(self.data.batches)
        epoch, i = divmod(step, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100003 + epoch))
        idx = self.data.batches[int(order[i])]
        src, tgt = self.data.train
        return make_batch([src[j] for j in idx], [tgt[j] for j in idx]).to(self.device)

    def loss_of(self, batch: Batch) -> tuple[Tensor, int]:
        logits = self.model(batch.src, batch.tgt_in)
        loss = label_smoothed_cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), self.config.label_smoothing, PAD)
        return loss, batch.n_tokens

    def lr_at(self, step: int, last_update: int | None) -> float:
        c = self.config
        return iterative_noam(step, self.model.cfg.d_model, c.warmup, c.lr, last_update, c.rewarm_steps)

    def evaluate(self) -> dict[str, float]:
        src, tgt = self.data.valid
        loss = validation_loss(self.model, src, tgt, self.config.batch_tokens)
        hyps = self.data.vocab.decode(translate_ids(self.model, src, self.config.beam))
        return {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 50.0)), "valid_bleu": bleu(hyps, self.data.valid_refs)}


def train_translation(
    config: TranslationConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_evals: int | None = None,
) -> dict[str, Any]:
    """Train, validate (loss, perplexity, BLEU) every ``eval_every`` steps, checkpoint, then
    translate the test set; returns the summary (test BLEU with beam ``config.beam``)."""
    out = Path(out)
    config = open_run(config, out, RUN_FILES, resume, overwrite)

    vocab = load_vocabulary(out / "vocab.model") if resume else None
    data = prepare_data(config, vocab)
    run = _TranslationRun(config, data)
    state = load_checkpoint(out / "checkpoint.pt") if resume else None
    hyp_name = f"test.hyp.{check_language_code(data.pair[1], 'target')}"
    with RunFolder(out, [*RUN_FILES, hyp_name], resume=resume, overwrite=overwrite) as folder:
        if not resume:
            write_json(folder.path / "config.json", dataclasses.asdict(config))
            write_bytes(folder.path / "vocab.model", data.vocab.proto)
        history, wall = run_steps(
            run.loop, steps=config.steps, eval_every=config.eval_every, out=folder.path, config=dataclasses.asdict(config),
            state=state, progress=progress, stop_after_evals=stop_after_evals,
            progress_keys=(("valid_ppl", "valid ppl"), ("valid_bleu", "valid BLEU")), on_checkpoint=folder.started,
        )
        if history:
            plot_step_curves(history, folder.path / "curves.png", score="valid_bleu", title=_title(config))
        if not history or history[-1]["step"] < config.steps:
            return {"steps_completed": history[-1]["step"] if history else 0}
        hyps = data.vocab.decode(translate_ids(run.model, data.test_src, config.beam))
        write_text(folder.path / hyp_name, "".join(h + "\n" for h in hyps))
        summary = summarize(config, history, wall, bleu(hyps, data.test_refs), data.pair)
        write_json(folder.path / "summary.json", summary)
        return summary


#: the widest beam search a run or ``translate`` accepts (wider beams cost time and give nothing)
MAX_BEAM = 64


def check_beam(beam: int) -> int:
    """Return ``beam`` if it is an integer in [1, MAX_BEAM], else raise."""
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
        raise BrainsparseError(f"beam {beam!r} is invalid; allowed: an integer from 1 to {MAX_BEAM}")
    return beam


#: the largest vocabulary file read back from a run folder
MAX_VOCAB_BYTES = 1 << 26


def load_vocabulary(path: Path) -> Vocabulary:
    """The sentencepiece vocabulary of a run folder (bounded read); a missing or damaged file
    raises :class:`BrainsparseError` naming it."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise BrainsparseError(f"vocabulary '{path}' is missing or not a file; the run cannot be used: start it again with --overwrite")
    with open(path, "rb") as fh:
        proto = fh.read(MAX_VOCAB_BYTES + 1)
    if len(proto) > MAX_VOCAB_BYTES or not proto:
        raise BrainsparseError(f"vocabulary '{path}' is {'empty' if not proto else 'too large'}; start the run again with --overwrite")
    try:
        return Vocabulary(proto)
    except Exception as exc:  # sentencepiece raises RuntimeError or its own errors on a damaged model
        raise BrainsparseError(f"vocabulary '{path}' is damaged ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
                               "start the run again with --overwrite") from None


def _title(config: TranslationConfig) -> str:
    return f"{config.method} on {config.dataset} ({config.model}), density {config.density:g}, seed {config.seed}"


def summarize(
    config: TranslationConfig, history: list[dict[str, Any]], wall: float, test_bleu: float, pair: tuple[str, str]
) -> dict[str, Any]:
    """Test BLEU, best validation BLEU, wall time and topology of a finished run."""
    best = max(history, key=lambda r: r["valid_bleu"])
    last = history[-1]
    return {
        "task": "translation",
        "dataset": config.dataset,
        "direction": f"{pair[0]}-{pair[1]}",
        "model": config.model,
        "method": config.method,
        "density": config.density,
        "seed": config.seed,
        "steps": config.steps,
        "beam": config.beam,
        "test_bleu": test_bleu,
        "final_valid_bleu": last["valid_bleu"],
        "best_valid_bleu": best["valid_bleu"],
        "best_step": best["step"],
        "final_valid_ppl": last["valid_ppl"],
        "active_neuron_rate": last["active_neuron_rate"],
        "final_density": last["density"],
        "wall_time_s": wall,
        "train_time_s": train_time_s(history, "time_s"),
        "links": {n: v["links"] for n, v in last["layers"].items()},
    }


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def load_translator(run_folder: str | Path) -> tuple[Seq2SeqTransformer, Vocabulary, TranslationConfig]:
    """The trained model (with its sparse masks applied), vocabulary and config of a run folder."""
    folder = Path(run_folder)
    if not folder.is_dir():
        raise BrainsparseError(f"'{folder}' is not a translation run folder: it does not exist or is not a folder")
    for name in ("config.json", "vocab.model", "checkpoint.pt"):
        if not (folder / name).exists():
            raise BrainsparseError(f"'{folder}' is not a translation run folder: it lacks {name}")
    raw = read_json_file(folder / "config.json", "run config")
    if raw.get("task") != "translation":
        raise BrainsparseError(f"'{folder}' holds a run of task {raw.get('task')!r:.40}, not translation")
    config = stored_config(TranslationConfig, folder)
    config.validate()
    vocab = load_vocabulary(folder / "vocab.model")
    torch.manual_seed(config.seed)
    model = build_model(config, len(vocab)).to(resolve_device(config.device))
    engine = sparsify(
        model, None, method=resolve_method(config.method, **config.method_overrides()), density=config.density,
        update_every=config.update_interval, total_steps=config.steps, pairs=model.sparse_pairs(),
        seed=config.seed, kernel=config.kernel, batch_size=max(1, config.batch_tokens // 2),
    )
    state = load_checkpoint(folder / "checkpoint.pt")
    try:
        engine.load_state_dict(state["engine"])
        model.load_state_dict(with_engine_masks(state["model"], state["engine"], model))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise BrainsparseError(f"checkpoint '{folder / 'checkpoint.pt'}' does not fit the run's model "
                               f"({type(exc).__name__}: {str(exc)[:160]}); it cannot be used") from None
    model.eval()
    return model, vocab, config


def translate_lines(run_folder: str | Path, lines: list[str], beam: int | None = None) -> list[str]:
    """Translate raw sentences with the model of a run folder (beam: the run's by default)."""
    model, vocab, config = load_translator(run_folder)
    ids = vocab.encode(lines)
    return vocab.decode(translate_ids(model, ids, beam or config.beam))
