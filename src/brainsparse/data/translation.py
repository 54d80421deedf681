"""Parallel corpora for machine translation: Multi30k, IWSLT14 and WMT17 in their standard text
layout, a sentencepiece vocabulary trained on the training split, and token-count batches.

Layout: one sentence per line, ``<split>.<lang>`` files (optionally ``.gz``), line *i* of the
source file translating line *i* of the target file. Multi30k names its splits ``train``,
``val`` and ``test_2016_flickr``; the fairseq-prepared IWSLT14 and WMT17 folders use ``train``,
``valid`` and ``test``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BrainsparseError
from .locate import TextDatasetInfo, find_dataset, register_dataset

#: special token ids of every vocabulary built here
PAD, UNK, BOS, EOS = 0, 1, 2, 3


@dataclass(frozen=True)
class TranslationCorpus:
    """A parallel corpus: its split names and default language pair."""

    name: str
    splits: dict[str, str]  # "train" / "valid" / "test" → file stem
    languages: tuple[str, str]  # (source, target) default
    how_to_get: str


CORPORA: dict[str, TranslationCorpus] = {
    "multi30k": TranslationCorpus(
        "multi30k", {"train": "train", "valid": "val", "test": "test_2016_flickr"}, ("en", "de"),
        "download data/task1/raw/{train,val,test_2016_flickr}.{en,de}.gz from the multi30k/dataset "
        "repository on GitHub into a folder 'multi30k' and pass its parent with --data-dir",
    ),
    "iwslt14": TranslationCorpus(
        "iwslt14", {"train": "train", "valid": "valid", "test": "test"}, ("de", "en"),
        "run fairseq's examples/translation/prepare-iwslt14.sh, then put the detokenised "
        "train/valid/test.{de,en} files in a folder 'iwslt14' and pass its parent with --data-dir",
    ),
    "wmt17": TranslationCorpus(
        "wmt17", {"train": "train", "valid": "valid", "test": "test"}, ("en", "de"),
        "download WMT17 en-de (e.g. with sacrebleu --echo or fairseq's prepare-wmt14en2de.sh) as "
        "train/valid/test.{en,de} files in a folder 'wmt17' and pass its parent with --data-dir",
    ),
}


def _register(corpus: TranslationCorpus, pair: tuple[str, str]) -> str:
    """Register the files of ``corpus`` in direction ``pair`` with the dataset finder; its key."""
    key = corpus.name if pair == corpus.languages else f"{corpus.name}-{pair[0]}-{pair[1]}"
    files = {f"{split}_{side}": f"{stem}.{lang}"
             for split, stem in corpus.splits.items() for side, lang in zip(("src", "tgt"), pair)}
    register_dataset(TextDatasetInfo(name=key, files=files, how_to_get=corpus.how_to_get, subdirs=(corpus.name,)))
    return key


for _c in CORPORA.values():
    _register(_c, _c.languages)


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzip-compressed or not), without line ends."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\n").rstrip("\r") for line in fh]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise BrainsparseError(f"cannot read '{path}': {exc}") from None


def load_parallel(
    dataset: str, data_dir: str | None = None, source: str | None = None, target: str | None = None
) -> dict[str, tuple[list[str], list[str]]]:
    """``{"train"|"valid"|"test": (source sentences, target sentences)}`` of a corpus."""
    name = dataset.lower()
    if name not in CORPORA:
        raise BrainsparseError(f"unknown translation dataset {dataset!r}; allowed: {', '.join(CORPORA)}")
    corpus = CORPORA[name]
    pair = (source or corpus.languages[0], target or corpus.languages[1])
    if pair[0] == pair[1]:
        raise BrainsparseError(f"source and target language are both {pair[0]!r}")
    key = _register(corpus, pair)
    folder = find_dataset(key, data_dir)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for split, stem in corpus.splits.items():
        src, tgt = (read_lines(_file(folder, f"{stem}.{lang}")) for lang in pair)
        if len(src) != len(tgt):
            raise BrainsparseError(
                f"{name} {split}: {len(src)} source lines ({pair[0]}) but {len(tgt)} target lines ({pair[1]})"
            )
        out[split] = (src, tgt)
    return out


def _file(folder: Path, base: str) -> Path:
    for cand in (base, base + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    raise BrainsparseError(f"'{folder}' lacks {base}[.gz]")


# ------------------------------------------------------------------------------------ vocabulary
class Vocabulary:
    """A sentencepiece model shared by source and target (ids: pad 0, unk 1, bos 2, eos 3)."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram", seed: int = 0) -> Vocabulary:
        """Train a joint vocabulary on ``sentences`` (deterministic for a given input)."""
        import sentencepiece as spm

        buffer = io.BytesIO()
        sentences = [s for s in sentences if s.strip()]
        if not sentences:
            raise BrainsparseError("cannot train a vocabulary on an empty corpus")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS,
                eos_id=EOS, num_threads=1, input_sentence_size=len(sentences), shuffle_input_sentence=False,
                minloglevel=2, hard_vocab_limit=False,
            )
        except RuntimeError as exc:
            raise BrainsparseError(f"training the sentencepiece vocabulary failed: {exc}") from None
        return cls(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(sentences), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenised text of id sequences (specials dropped, stops at the first eos)."""
        clean = []
        for seq in ids:
            seq = list(seq)
            if EOS in seq:
                seq = seq[: seq.index(EOS)]
            clean.append([i for i in seq if i > EOS])
        return self.sp.decode(clean)


# ------------------------------------------------------------------------------------ batching
@dataclass
class Batch:
    """Padded source ids (B, S), decoder input (B, T) starting with bos, decoder target (B, T)
    ending with eos, and how many target tokens it holds."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    n_tokens: int

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.n_tokens)


def pad(seqs: Sequence[Sequence[int]]) -> Tensor:
    """(len(seqs), max length) tensor of ``seqs`` right-padded with PAD."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    return Batch(
        src=pad([list(s) + [EOS] for s in src]),
        tgt_in=pad([[BOS, *t] for t in tgt]),
        tgt_out=pad([[*t, EOS] for t in tgt]),
        n_tokens=sum(len(t) + 1 for t in tgt),
    )


def token_batches(
    src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], batch_tokens: int, max_len: int | None = None
) -> list[list[int]]:
    """Sentence indices grouped into batches of at most ``batch_tokens`` padded tokens (source +
    target), sentences of similar length together; pairs longer than ``max_len`` are dropped."""
    if batch_tokens < 1:
        raise BrainsparseError(f"batch_tokens {batch_tokens!r} is invalid; allowed: a positive integer")
    lengths = [(len(s) + 1, len(t) + 1) for s, t in zip(src, tgt)]
    order = sorted(
        (i for i, (a, b) in enumerate(lengths) if max_len is None or max(a, b) <= max_len),
        key=lambda i: (lengths[i][1], lengths[i][0], i),
    )
    batches: list[list[int]] = []
    current: list[int] = []
    width_s = width_t = 0
    for i in order:
        ws, wt = max(width_s, lengths[i][0]), max(width_t, lengths[i][1])
        if current and (len(current) + 1) * (ws + wt) > batch_tokens:
            batches.append(current)
            current, ws, wt = [], lengths[i][0], lengths[i][1]
        current.append(i)
        width_s, width_t = ws, wt
    if current:
        batches.append(current)
    return batches
