"""Regrowth scores for absent links (algorithms.md §4 [regrowth]); zero at existing links."""

from __future__ import annotations

import torch
from torch import Tensor


def random_scores(mask: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Uniform (0, 1] scores on absent links [SET]: top-k of them is a uniform random choice."""
    u = torch.rand(mask.shape, generator=generator, device=mask.device)
    return (1.0 - u) * ~mask.bool()


def gradient_magnitude(dense_grad: Tensor, mask: Tensor) -> Tensor:
    """|∂L/∂W_ij| on absent links from a dense gradient taken at the update step [RigL]."""
    return dense_grad.detach().abs().float() * ~mask.bool()
