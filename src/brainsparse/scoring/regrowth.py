"""Regrowth scores for absent links (algorithms.md §4 [regrowth]); zero at existing links."""

from __future__ import annotations

import torch
from torch import Tensor

from .._random import rand


def random_scores(mask: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Uniform (0, 1] scores on absent links [SET]: top-k of them is a uniform random choice."""
    u = rand(mask.shape, generator=generator, device=mask.device)
    return (1.0 - u) * ~mask.bool()


def random_score_rows(mask: Tensor, start: int, stop: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Rows ``[start, stop)`` of :func:`random_scores`: called for consecutive blocks of rows
    in order, the same numbers as one call for the whole mask (uniform draws are sequential)."""
    u = rand((stop - start, mask.shape[1]), generator=generator, device=mask.device)
    return (1.0 - u) * ~mask[start:stop].bool()


def gradient_magnitude(dense_grad: Tensor, mask: Tensor) -> Tensor:
    """|∂L/∂W_ij| on absent links from a dense gradient taken at the update step [RigL]."""
    return dense_grad.detach().abs().float() * ~mask.bool()


class GradFactors:
    """The dense gradient ∂L/∂W = Σ gyᵀ x of the batch(es) before an update, kept as its
    factors: per batch ``gy`` (rows × out) and ``x`` (rows × in), i.e. rows · (in + out)
    numbers instead of out · in. The sparse path records this; gradient regrowth forms a
    block of rows at a time (:meth:`rows`), never the whole ``(out, in)`` array."""

    def __init__(self, gy: Tensor, x: Tensor) -> None:
        self.shape = (int(gy.shape[1]), int(x.shape[1]))
        self.pairs: list[tuple[Tensor, Tensor]] = [(gy, x)]

    @property
    def factor_numel(self) -> int:
        """Numbers held by the factors."""
        return sum(gy.numel() + x.numel() for gy, x in self.pairs)

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of the gradient: Σ over the batches, in the order recorded."""
        out: Tensor | None = None
        for gy, x in self.pairs:
            part = gy[:, start:stop].T @ x
            out = part if out is None else out + part
        assert out is not None
        return out

    def dense(self) -> Tensor:
        """The whole ``(out, in)`` gradient."""
        return self.rows(0, self.shape[0])


def factored_gradient(gy: Tensor, x: Tensor) -> Tensor | GradFactors:
    """∂L/∂W of one batch: its factors when they are smaller than the dense gradient, else the
    dense ``gyᵀ x`` (large batches of narrow layers)."""
    gy = gy.reshape(-1, gy.shape[-1])
    x = x.reshape(-1, x.shape[-1])
    if gy.shape[0] * (gy.shape[1] + x.shape[1]) < gy.shape[1] * x.shape[1]:
        return GradFactors(gy.clone(), x.clone())
    return gy.T @ x


def add_gradients(total: Tensor | GradFactors | None, grad: Tensor | GradFactors) -> Tensor | GradFactors:
    """``total + grad`` (summed over the micro-batches of an accumulation window): factors stay
    factors while they are smaller than the dense gradient; a dense sum adds in the order of
    the micro-batches either way, so the numbers do not depend on the form."""
    if total is None:
        return grad
    if isinstance(total, GradFactors) and isinstance(grad, GradFactors):
        if total.factor_numel + grad.factor_numel < total.shape[0] * total.shape[1]:
            total.pairs.extend(grad.pairs)
            return total
    return dense_gradient(total) + dense_gradient(grad)


def dense_gradient(grad: Tensor | GradFactors | None) -> Tensor | None:
    """The ``(out, in)`` tensor of a gradient recorded in either form (``None`` stays ``None``)."""
    return grad.dense() if isinstance(grad, GradFactors) else grad


def cosine_similarity_scores(inputs: Tensor, preactivations: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """|cos(x_j, y_i)| between input neuron j's and output neuron i's activation vectors [CTRE].

    ``inputs`` is (samples, in), ``preactivations`` (samples, out); each neuron's vector runs
    over the samples. Returns (out, in) scores, zero at existing links.
    """
    x = inputs.float()
    y = preactivations.float()
    x = x / x.norm(dim=0, keepdim=True).clamp_min(eps)
    y = y / y.norm(dim=0, keepdim=True).clamp_min(eps)
    return (y.T @ x).abs() * ~mask.bool()  # |Ŷᵀ X̂|
