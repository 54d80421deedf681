"""Removal scores: how much each existing link deserves to stay (algorithms.md §2 [removal]).

Each function returns a float tensor shaped like the weight (out, in), zero off the mask.
"""

from __future__ import annotations

from torch import Tensor


def weight_magnitude(weight: Tensor, mask: Tensor) -> Tensor:
    """|W_ij| on links, 0 elsewhere [WM]."""
    return weight.detach().abs().float() * mask


def relative_importance(weight: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """RI_ij = |W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik| over links [Eq. 1 of the CHTs preprint]."""
    w = weight.detach().abs().float() * mask
    column = w.sum(dim=0, keepdim=True) + eps  # Σ_k |W_kj|: strength of input j
    row = w.sum(dim=1, keepdim=True) + eps  # Σ_k |W_ik|: strength of output i
    return (w / column + w / row) * mask


def mest(weight: Tensor, grad: Tensor | None, mask: Tensor, factor: float = 0.01) -> Tensor:
    """|W_ij| + λ·|∇W_ij| on links [MEST]; falls back to |W| without a gradient."""
    score = weight.detach().abs().float()
    if grad is not None:
        score = score + factor * grad.detach().abs().float()
    return score * mask


REMOVAL_SCORES = ("magnitude", "relative_importance", "mest")


def removal_scores(name: str, weight: Tensor, mask: Tensor, grad: Tensor | None = None) -> Tensor:
    """Dispatch by name: ``magnitude``, ``relative_importance`` or ``mest``."""
    if name == "magnitude":
        return weight_magnitude(weight, mask)
    if name == "relative_importance":
        return relative_importance(weight, mask)
    if name == "mest":
        return mest(weight, grad, mask)
    raise ValueError(f"unknown removal score {name!r}; allowed: {', '.join(REMOVAL_SCORES)}")


__all__ = ["weight_magnitude", "relative_importance", "mest", "removal_scores", "REMOVAL_SCORES"]
