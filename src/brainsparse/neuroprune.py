"""NeuroPrune's two mechanisms as pure functions (algorithms.md §7; no public code exists).

1. Preferential-attachment shrinkage of MLP links: a re-weighted ℓ1 proximal step whose
   threshold for link (i, j) falls with the strength of the neurons it joins, so well-connected
   neurons keep their links ("rich get richer"):
   ``W_ij ← sign(W_ij) · max(|W_ij| − η λ / (ε + r_i + c_j), 0)``, r_i = Σ_k |W_ik|, c_j = Σ_k |W_kj|.
   Our choices where the paper is silent: strengths are the ℓ1 norms of the current (masked)
   weights, recomputed every step; η is the optimizer's learning rate; λ defaults to 0.01 (per step, relative to the learning rate); the
   network is then hard-thresholded to the target density by magnitude on the engine's density
   schedule (cubic by default).
2. Redundant attention heads: heads whose outputs on a batch are near-duplicates (cosine
   similarity above τ) are linked in a redundancy graph; a greedy dominating set is kept and
   the other heads are pruned (every pruned head has a kept near-duplicate).
"""

from __future__ import annotations

import torch
from torch import Tensor


def preferential_attachment_shrink(weight: Tensor, mask: Tensor, step_size: float, eps: float = 1e-3) -> Tensor:
    """One proximal step of the preferential-attachment penalty; returns the new weight."""
    w = weight.detach()
    magnitude = w.abs().mul_(mask)
    rows = magnitude.sum(dim=1, keepdim=True)  # r_i, strength of output neuron i
    cols = magnitude.sum(dim=0, keepdim=True)  # c_j, strength of input neuron j
    threshold = (rows + cols).add_(eps).reciprocal_().mul_(step_size)  # ηλ / (ε + r_i + c_j)
    return magnitude.sub_(threshold).clamp_(min=0.0).mul_(torch.sign(w))


def preferential_attachment_shrink_links(values: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int],
                                         step_size: float, eps: float = 1e-3) -> Tensor:
    """:func:`preferential_attachment_shrink` on a layer stored as links (the sparse path):
    ``values[k]`` is the weight of link ``(rows[k], cols[k])`` of an ``shape`` matrix; returns the
    new link values. The strengths are the same sums, accumulated over the links only."""
    v = values.detach()
    magnitude = v.abs()
    r = magnitude.new_zeros(shape[0]).index_add_(0, rows, magnitude)  # r_i
    c = magnitude.new_zeros(shape[1]).index_add_(0, cols, magnitude)  # c_j
    threshold = (r[rows] + c[cols]).add_(eps).reciprocal_().mul_(step_size)
    return magnitude.sub_(threshold).clamp_(min=0.0).mul_(torch.sign(v))


def redundant_heads(head_outputs: Tensor, threshold: float = 0.9) -> list[int]:
    """Heads to keep: a greedy dominating set of the graph "cosine similarity > threshold".

    ``head_outputs`` is (heads, features): each head's output on a batch, flattened. Returns the
    sorted indices of the kept heads; the others are redundant with at least one kept head.
    """
    h = head_outputs.float().reshape(head_outputs.shape[0], -1)
    h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similar = (h @ h.T) > threshold
    similar.fill_diagonal_(True)  # every head dominates itself
    undominated = torch.ones(h.shape[0], dtype=torch.bool)
    kept: list[int] = []
    while undominated.any():
        gain = (similar & undominated[None, :]).sum(dim=1)  # undominated heads each head would cover
        best = int(torch.argmax(gain))  # ties: lowest index
        kept.append(best)
        undominated &= ~similar[best]
    return sorted(kept)


def head_outputs(o_inputs: Tensor, heads: int) -> Tensor:
    """(heads, features): each head's output on a batch, from the input of the output projection
    (..., heads · head_dim), flattened per head."""
    x = o_inputs.detach().float().reshape(-1, heads, o_inputs.shape[-1] // heads)
    return x.transpose(0, 1).reshape(heads, -1)


def remove_heads(masks: dict[str, Tensor], block: dict[str, object], removed: list[int]) -> dict[str, Tensor]:
    """Masks of ``block`` with ``removed`` heads cut out: their rows of q, k, v (the head's
    slice of their outputs) and their columns of the output projection."""
    heads = int(block["heads"])
    width = masks[str(block["q"])].shape[0] // heads
    out = dict(masks)
    for key in ("q", "k", "v", "o"):
        name = str(block[key])
        mask = out[name].clone()
        for h in removed:
            part = slice(h * width, (h + 1) * width)
            if key == "o":
                mask[:, part] = False
            else:
                mask[part, :] = False
        out[name] = mask
    return out
