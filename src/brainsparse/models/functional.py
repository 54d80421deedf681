"""Faster CPU forms of three training-step operations of the Transformer, equal in law or in math.

Measured on the ``small`` translation preset's step (1 CPU thread, 2-core AMD EPYC VM), where
the shared, non-sparse work decides how much the sparse projections can gain:

* :func:`dropout`: ``F.dropout`` on CPU draws its Bernoulli mask one float at a time from the
  Mersenne twister (~12 ns per element here, 25 % of the forward pass). Here the mask comes from
  32-bit words of NumPy's SFC64 generator (two per 64-bit draw, ~1.5 ns per element), seeded per
  call with one 64-bit draw from torch's default generator, so ``torch.manual_seed`` (and the
  RNG state a checkpoint saves) still fixes every mask. An element is kept with probability
  ``round((1 - p) 2^32) / 2^32`` (``1 - p`` to within 2^-32) and scaled by ``1 / (1 - p)``: the
  same distribution as ``F.dropout``, another random stream. Elsewhere (GPU, half precision)
  ``F.dropout`` itself.
* :func:`attention`: while training with attention dropout on CPU, ``scaled_dot_product_attention``
  takes its math path (with a float mask made per call and torch's dropout); the same formula
  written out, ``softmax(q kᵀ / √d + mask) v`` with :func:`dropout` on the weights, is faster.
  Without dropout (evaluation, beam search) and on other devices: SDPA itself.
* :func:`label_smoothed_cross_entropy`: ``F.cross_entropy(..., label_smoothing=ε,
  ignore_index=i)`` as one autograd function: the loss from the log-softmax's row means and target
  entries; the gradient ``(softmax - (1 - ε) onehot - ε / V) / n`` from the saved log-softmax in
  three in-place passes, instead of the separate backward passes of the NLL, the smoothing term
  and the log-softmax over the (tokens × vocabulary) logits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Dropout", "attention", "dropout", "label_smoothed_cross_entropy"]

_FAST_DTYPES = (torch.float32, torch.float64)


def _uniform_words(n: int, device: torch.device) -> Tensor:
    """``n`` uniform int32 words from SFC64 seeded by one draw of torch's default generator."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    raw = np.random.SFC64(seed).random_raw((n + 1) // 2)
    return torch.from_numpy(raw.view(np.int32)[:n]).to(device)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        threshold = round((1.0 - p) * 2.0**32) - 2**31  # int32 words below it: kept
        keep = _uniform_words(x.numel(), x.device).view(x.shape) < threshold
        noise = keep.to(x.dtype).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(noise)
        return x * noise

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (noise,) = ctx.saved_tensors
        return grad * noise, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` in law (see the module text): zeroes each element with
    probability ``p``, scales the rest by ``1 / (1 - p)``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype not in _FAST_DTYPES or p >= 1.0:
        return F.dropout(x, p, True)
    return _Dropout.apply(x, float(p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training form is :func:`dropout` (same ``p``, same state)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)`` for
    ``(B, heads, T, d)`` queries and ``(B, heads, S, d)`` keys/values; ``mask`` bool, True where
    attention is allowed, broadcast to ``(B, heads, T, S)``. Written out (CPU, dropout > 0) or
    SDPA itself (otherwise)."""
    if dropout_p == 0.0 or q.device.type != "cpu" or q.dtype not in _FAST_DTYPES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(dropout(weights, dropout_p), v)


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float, ignore_index: int) -> Tensor:
        valid = target != ignore_index
        classes = logits.shape[1]
        if bool(((target < 0) | (target >= classes))[valid].any()):
            raise IndexError(f"target out of bounds: {classes} classes")
        index = torch.where(valid, target, 0)[:, None]
        logp = torch.log_softmax(logits, dim=1)
        per_row = -(1.0 - smoothing) * logp.gather(1, index)[:, 0] - smoothing * logp.mean(1)
        count = valid.sum()
        ctx.save_for_backward(logp, index, valid, count)
        ctx.smoothing = smoothing
        return torch.where(valid, per_row, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad: Tensor):
        logp, index, valid, count = ctx.saved_tensors
        eps = ctx.smoothing
        scale = torch.where(valid, grad / count, 0.0).to(logp.dtype)[:, None]
        g = torch.exp(logp)  # the softmax
        if eps:
            g.sub_(eps / logp.shape[1])
        g.mul_(scale)
        g.scatter_add_(1, index, scale * -(1.0 - eps))
        return g, None, None, None


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0,
                                 ignore_index: int = -100) -> Tensor:
    """``F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)``
    (mean over the targets not ignored) for ``(N, V)`` logits and ``(N,)`` class indices, with a
    one-pass gradient on CPU (see the module text); other shapes, dtypes and devices:
    ``F.cross_entropy``."""
    if logits.dim() != 2 or target.dim() != 1 or logits.device.type != "cpu" or logits.dtype not in _FAST_DTYPES:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    return _SmoothedCrossEntropy.apply(logits, target, float(smoothing), int(ignore_index))
