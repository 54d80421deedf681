"""A LLaMA-style decoder-only language model, and the sparse layout of LLaMA blocks.

Blocks are pre-norm: ``x + attn(RMSNorm(x))`` then ``x + mlp(RMSNorm(x))``, with rotary position
embeddings in the attention, SwiGLU feed-forward (``down(silu(gate(x)) ⊙ up(x))``), optional
grouped key/value heads and tied or untied input/output embeddings. Module names follow Hugging
Face's ``LlamaForCausalLM`` (``layers.0.self_attn.q_proj``, ``layers.0.mlp.gate_proj``, ...), so
:func:`llama_sparse_layout` describes both this model and a Hugging Face one.

Percolation layout (algorithms.md §3, structured blocks):

- q and k are a *pair*: output dimension i of q multiplies output dimension i of k in the
  attention scores, so one is useless when the other has no links. With grouped key/value heads
  q has more outputs than k; then no q/k pair is formed (a q dimension meets the same k dimension
  of every query head in its group, a many-to-one coupling the elementwise pairing of the engine
  does not express). Rotary embeddings also mix dimension i with dimension i + head_dim/2 of the
  same head; like the reference code we pair dimension i with dimension i only.
- v feeds o (chain v → o) when v's outputs equal o's inputs (no grouped heads).
- gate and up are a pair and both feed down. The chains are ``[gate, down]`` and ``[up]`` plus the
  pair (gate, up): because the pair forces gate and up to share their active outputs, this reaches
  the same fixed point as the two chains gate → down and up → down, while every layer stays in
  exactly one chain (the engine initialises and reports layers per chain).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import BrainsparseError

#: name patterns of the layers dynamic sparse training acts on (embeddings and lm_head stay dense)
LLAMA_SPARSE_PATTERNS = ("*self_attn.q_proj", "*self_attn.k_proj", "*self_attn.v_proj", "*self_attn.o_proj",
                         "*mlp.gate_proj", "*mlp.up_proj", "*mlp.down_proj")


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes of a LLaMA-style decoder. ``n_kv_heads`` None means as many as ``n_heads``."""

    vocab_size: int = 10000
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    hidden_dim: int = 384
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> LlamaConfig:
        """Raise :class:`BrainsparseError` naming the first inconsistent size."""
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BrainsparseError(f"llama {name} {value!r} is invalid; allowed: a positive integer")
        if self.dim % self.n_heads:
            raise BrainsparseError(f"llama dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise BrainsparseError(f"llama head dim {self.head_dim} is odd; rotary embeddings need an even one")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise BrainsparseError(
                f"llama n_kv_heads {self.n_kv_heads!r} is invalid; allowed: a divisor of n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise BrainsparseError(f"dropout {self.dropout!r} is outside [0, 1)")
        return self


#: presets; vocab_size is replaced by the dataset's. 60m/130m: the GaLore / NeurIPS'25 configs.
LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "llama-tiny": LlamaConfig(dim=128, n_layers=2, n_heads=4, hidden_dim=384, max_seq_len=256),
    "llama-60m": LlamaConfig(dim=512, n_layers=8, n_heads=8, hidden_dim=1376, max_seq_len=1024,
                             vocab_size=32000, tie_embeddings=False),
    "llama-130m": LlamaConfig(dim=768, n_layers=12, n_heads=12, hidden_dim=2048, max_seq_len=1024,
                              vocab_size=32000, tie_embeddings=False),
}


def llama_config(name: str, **overrides: Any) -> LlamaConfig:
    """A preset's :class:`LlamaConfig` with ``overrides`` (e.g. ``vocab_size=10000``)."""
    if name not in LLAMA_PRESETS:
        raise BrainsparseError(f"unknown model {name!r}; allowed: {', '.join(LLAMA_PRESETS)}")
    return replace(LLAMA_PRESETS[name], **overrides).validate()


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # RMSNorm: y = x / sqrt(mean(x²) + ε) · g   [Zhang & Sennrich 2019, Eq. 4]
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(seq_len: int, head_dim: int, theta: float = 10000.0,
                  dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin) of shape (seq_len, head_dim) for rotary embeddings, halves repeated."""
    # RoPE frequencies: θ_i = theta^(−2i/d), angle(p, i) = p · θ_i   [Su et al. 2021, Eq. 15]
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (…, seq, head_dim) by position: dimension i pairs with i + head_dim/2."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    # RoPE: x' = x ⊙ cos + rotate_half(x) ⊙ sin   [Su et al. 2021, Eq. 34]
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings and optional grouped KV heads."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.dropout = config.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_heads != self.n_heads:
            group = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # softmax(q kᵀ / √d_head + causal mask) v   [Vaswani et al. 2017, Eq. 1]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) ⊙ up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # SwiGLU(x) = (Swish(x W_gate) ⊙ x W_up) W_down   [Shazeer 2020, Eq. 6]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm decoder block."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class LlamaLM(nn.Module):
    """LLaMA-style causal language model: ``forward(tokens (B, T)) → logits (B, T, vocab)``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rotary_tables(config.max_seq_len, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, init_std²) for linear layers and embeddings (draws from torch's global generator;
        seed it with ``torch.manual_seed``); residual output projections scaled by 1/√(2·layers)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = 1.0 / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj", "down_proj")) else 1.0
                nn.init.normal_(module.weight, 0.0, std * scale)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.config.max_seq_len:
            raise BrainsparseError(f"sequence length {t} exceeds the model's max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:t].to(self.embed_tokens.weight.dtype), self.rope_sin[:t].to(self.embed_tokens.weight.dtype)
        x = self.drop(self.embed_tokens(tokens))
        for block in self.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))

    def sparse_chains(self) -> list[list[str]]:
        """Percolation chains of the sparse layers (see :func:`llama_sparse_layout`)."""
        return llama_sparse_layout(self)[0]

    def sparse_pairs(self) -> list[tuple[str, str]]:
        """Elementwise percolation pairs (q with k, gate with up)."""
        return llama_sparse_layout(self)[1]

    def describe(self) -> dict[str, Any]:
        """The config as a dict plus the parameter count."""
        return {**asdict(self.config), "parameters": sum(p.numel() for p in self.parameters())}


def llama_sparse_layout(model: nn.Module) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(chains, pairs) for percolation over the LLaMA blocks of ``model``.

    Works on :class:`LlamaLM` and on Hugging Face ``LlamaForCausalLM`` (names such as
    ``model.layers.0.self_attn.q_proj``): every module with ``self_attn`` holding q/k/v/o
    projections and ``mlp`` holding gate/up/down projections. Chains: ``[v, o]`` (when v's outputs
    equal o's inputs), ``[gate, down]``, ``[up]``, ``[q]``, ``[k]``; pairs: ``(q, k)`` when their
    shapes match, ``(gate, up)``. See the module docstring for why.
    """
    chains: list[list[str]] = []
    pairs: list[tuple[str, str]] = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        attn = getattr(module, "self_attn", None)
        mlp = getattr(module, "mlp", None)
        if attn is None or mlp is None:
            continue
        prefix = f"{name}." if name else ""
        q, k, v, o = (getattr(attn, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        if all(isinstance(m, nn.Linear) for m in (q, k, v, o)):
            qn, kn, vn, on = (f"{prefix}self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            if v.out_features == o.in_features:
                chains.append([vn, on])
            else:
                chains += [[vn], [on]]
            chains += [[qn], [kn]]
            if q.weight.shape == k.weight.shape:
                pairs.append((qn, kn))
        gate, up, down = (getattr(mlp, p, None) for p in ("gate_proj", "up_proj", "down_proj"))
        if all(isinstance(m, nn.Linear) for m in (gate, up, down)):
            gn, un, dn = (f"{prefix}mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj"))
            chains += [[gn, dn], [un]]
            pairs.append((gn, un))
    return chains, pairs


def hf_llama_tiny(vocab_size: int, *, seq_len: int = 256, n_kv_heads: int | None = None) -> nn.Module:
    """A small Hugging Face ``LlamaForCausalLM`` built from a config (no download), the size of
    ``llama-tiny``; needs the ``transformers`` package."""
    try:
        from transformers import LlamaConfig as HFConfig, LlamaForCausalLM
    except ImportError:  # pragma: no cover - optional dependency
        raise BrainsparseError("model 'hf-llama-tiny' needs the transformers package: pip install transformers") from None
    base = LLAMA_PRESETS["llama-tiny"]
    cfg = HFConfig(
        vocab_size=vocab_size, hidden_size=base.dim, intermediate_size=base.hidden_dim,
        num_hidden_layers=base.n_layers, num_attention_heads=base.n_heads,
        num_key_value_heads=n_kv_heads or base.n_heads, max_position_embeddings=max(seq_len, base.max_seq_len),
        tie_word_embeddings=True, rms_norm_eps=base.norm_eps, attention_dropout=0.0,
    )
    return LlamaForCausalLM(cfg)
