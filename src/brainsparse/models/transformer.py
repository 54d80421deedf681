"""An encoder–decoder Transformer for translation whose every projection is an ``nn.Linear``
(so the engine can sparsify it), with the percolation structure of attention.

Pre-norm residual blocks (LayerNorm before each sub-layer, one final LayerNorm per stack): they
train stably without the long warm-up post-norm needs, which matters for short CPU budgets.
Source, target and generator share one embedding matrix (a joint vocabulary), scaled by
sqrt(d_model) and added to sinusoidal positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import BrainsparseError
from ..kernels.grouped import grouped_linear
from .functional import Dropout, attention


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the model (``vocab_size`` is set from the vocabulary)."""

    layers: int = 6
    d_model: int = 512
    heads: int = 8
    ffn: int = 1024
    dropout: float = 0.1
    vocab_size: int = 8000
    max_positions: int = 512

    def validate(self) -> None:
        for key in ("layers", "d_model", "heads", "ffn", "vocab_size", "max_positions"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise BrainsparseError(f"transformer {key} {value!r} is invalid; allowed: a positive integer")
        if self.d_model % self.heads:
            raise BrainsparseError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise BrainsparseError(f"dropout {self.dropout!r} is invalid; allowed: [0, 1)")


#: model presets: the spec's Multi30k model (algorithms.md §9), the same with FFN 2048 ("base",
#: IWSLT/WMT), a small one that trains on 2 CPU cores in minutes, and a tiny one for tests.
PRESETS: dict[str, dict[str, int | float]] = {
    "tiny": dict(layers=1, d_model=32, heads=2, ffn=64, dropout=0.0),
    "small": dict(layers=3, d_model=256, heads=4, ffn=512, dropout=0.1),
    "multi30k": dict(layers=6, d_model=512, heads=8, ffn=1024, dropout=0.1),
    "base": dict(layers=6, d_model=512, heads=8, ffn=2048, dropout=0.1),
}


def transformer_config(preset: str, vocab_size: int, **overrides) -> TransformerConfig:
    """The config of a preset (small, multi30k, base) with ``overrides``."""
    if preset not in PRESETS:
        raise BrainsparseError(f"unknown translation model {preset!r}; allowed: {', '.join(PRESETS)}")
    cfg = TransformerConfig(**{**PRESETS[preset], **overrides, "vocab_size": vocab_size})
    cfg.validate()
    return cfg


class MultiHeadAttention(nn.Module):
    """Attention with separate q/k/v/out projections (heads are slices of their outputs)."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values (B, heads, S, d/heads) of ``memory``."""
        k, v = grouped_linear(memory, (self.k_proj, self.v_proj))
        return self._split(k), self._split(v)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention of queries from ``x`` over given per-head keys and values."""
        return self._heads(self._split(self.q_proj(x)), k, v, mask)

    def _heads(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, h * dh))

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``mask``: bool (B, 1, 1, S) or (B, 1, T, S), True where attention is allowed. With
        ``memory is x`` (self-attention) the three projections run as one sparse call
        (:func:`~brainsparse.kernels.grouped.grouped_linear`) on the sparse path."""
        if causal:
            t = x.shape[1]
            allowed = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            mask = allowed if mask is None else mask & allowed
        if memory is x:
            q, k, v = grouped_linear(x, (self.q_proj, self.k_proj, self.v_proj))
            return self._heads(self._split(q), self._split(k), self._split(v), mask)
        return self.attend(x, *self.keys_values(memory), mask)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn)
        self.fc2 = nn.Linear(ffn, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn, cfg.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, src_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn, cfg.dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.dropout = Dropout(cfg.dropout)

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor, tgt_mask: Tensor | None,
                memory_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``memory_kv``: the cross-attention's keys and values of ``memory``, if already made."""
        h = self.norm1(y)
        y = y + self.dropout(self.self_attn(h, h, tgt_mask, causal=True))
        kv = memory_kv if memory_kv is not None else self.cross_attn.keys_values(memory)
        y = y + self.dropout(self.cross_attn.attend(self.norm2(y), *kv, src_mask))
        return y + self.dropout(self.ffn(self.norm3(y)))

    def step(self, y: Tensor, cache: dict[str, Tensor], src_mask: Tensor) -> Tensor:
        """One new position ``y`` (B, 1, d) given the cached keys/values of the earlier ones
        (``cache`` holds "k", "v" of the self-attention, grown here, and "mk", "mv" of the memory)."""
        h = self.norm1(y)
        k, v = self.self_attn.keys_values(h)
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        y = y + self.self_attn.attend(h, k, v)
        y = y + self.cross_attn.attend(self.norm2(y), cache["mk"], cache["mv"], src_mask)
        return y + self.ffn(self.norm3(y))


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(·)   [Vaswani et al. 2017, §3.5]"""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder Transformer; ``forward(src, tgt_in)`` returns logits (B, T, vocab)."""

    def __init__(self, cfg: TransformerConfig, pad_id: int = 0):
        super().__init__()
        cfg.validate()
        self.cfg, self.pad_id = cfg, pad_id
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.generator = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.generator.weight = self.embed.weight  # tied (joint vocabulary)
        self.dropout = Dropout(cfg.dropout)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        t = ids.shape[1]
        if offset + t > self.cfg.max_positions:
            raise BrainsparseError(f"sequence of {offset + t} tokens exceeds max_positions {self.cfg.max_positions}")
        x = self.embed(ids) * math.sqrt(self.cfg.d_model) + self.positions[offset : offset + t]
        return self.dropout(x)

    def src_mask(self, src: Tensor) -> Tensor:
        return (src != self.pad_id)[:, None, None, :]

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """(memory (B, S, d), source mask) of source ids (B, S)."""
        mask = self.src_mask(src)
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Logits (B, T, vocab) of the next token after every prefix of ``tgt_in``."""
        y = self._embed(tgt_in)
        for layer, kv in zip(self.decoder, self.memory_keys_values(memory)):
            y = layer(y, memory, src_mask, None, kv)
        return self.generator(self.dec_norm(y))

    def memory_keys_values(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every decoder layer's cross-attention keys and values of ``memory`` (B, heads, S, d/heads):
        one sparse call for all of them on the sparse path (they share the input)."""
        attn = [layer.cross_attn for layer in self.decoder]
        out = grouped_linear(memory, [p for a in attn for p in (a.k_proj, a.v_proj)])
        return [(a._split(out[2 * i]), a._split(out[2 * i + 1])) for i, a in enumerate(attn)]

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: Tensor) -> list[dict[str, Tensor]]:
        """Per-layer caches for :meth:`decode_next`: the memory's keys and values."""
        return [{"mk": mk, "mv": mv} for mk, mv in self.memory_keys_values(memory)]

    def decode_next(self, tokens: Tensor, caches: list[dict[str, Tensor]], src_mask: Tensor, position: int) -> Tensor:
        """Logits (B, vocab) after feeding the tokens (B,) at ``position``; equals the last row of
        :meth:`decode` on the whole prefix (in eval mode)."""
        y = self._embed(tokens[:, None], offset=position)
        for layer, cache in zip(self.decoder, caches):
            y = layer.step(y, cache, src_mask)
        return self.generator(self.dec_norm(y))[:, 0]

    @staticmethod
    def reorder_caches(caches: list[dict[str, Tensor]], index: Tensor) -> list[dict[str, Tensor]]:
        """Caches of the rows ``index`` (beam search keeps the surviving hypotheses)."""
        return [{k: v.index_select(0, index) for k, v in cache.items()} for cache in caches]

    # ------------------------------------------------------------------ sparse structure
    def _attention_blocks(self) -> list[str]:
        names = [f"encoder.{i}.self_attn" for i in range(len(self.encoder))]
        for i in range(len(self.decoder)):
            names += [f"decoder.{i}.self_attn", f"decoder.{i}.cross_attn"]
        return names

    def _ffn_blocks(self) -> list[str]:
        return [f"encoder.{i}.ffn" for i in range(len(self.encoder))] + [
            f"decoder.{i}.ffn" for i in range(len(self.decoder))
        ]

    def sparse_chains(self) -> list[list[str]]:
        """Percolation chains (algorithms.md §3): value → output projection in every attention,
        fc1 → fc2 in every feed-forward block; queries and keys are chains of one (paired by
        :meth:`sparse_pairs`)."""
        chains: list[list[str]] = []
        for a in self._attention_blocks():
            chains += [[f"{a}.q_proj"], [f"{a}.k_proj"], [f"{a}.v_proj", f"{a}.out_proj"]]
        for f in self._ffn_blocks():
            chains.append([f"{f}.fc1", f"{f}.fc2"])
        return chains

    def sparse_pairs(self) -> list[tuple[str, str]]:
        """Elementwise percolation pairs: query dimension i multiplies key dimension i (within
        its head), so one without links makes the other inactive."""
        return [(f"{a}.q_proj", f"{a}.k_proj") for a in self._attention_blocks()]

    def attention_heads(self) -> dict[str, int]:
        """Attention block name → number of heads (for per-head measures)."""
        return {a: self.cfg.heads for a in self._attention_blocks()}
