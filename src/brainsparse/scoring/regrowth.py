"""Regrowth scores for absent links (algorithms.md §4 [regrowth]); zero at existing links."""

from __future__ import annotations

import torch
from torch import Tensor

from .._random import rand


def random_scores(mask: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Uniform (0, 1] scores on absent links [SET]: top-k of them is a uniform random choice."""
    u = rand(mask.shape, generator=generator, device=mask.device)
    return (1.0 - u) * ~mask.bool()


def gradient_magnitude(dense_grad: Tensor, mask: Tensor) -> Tensor:
    """|∂L/∂W_ij| on absent links from a dense gradient taken at the update step [RigL]."""
    return dense_grad.detach().abs().float() * ~mask.bool()


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
