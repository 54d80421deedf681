"""Network percolation: remove inactive neurons and the links that dangle from them.

A layer's mask has shape (out, in). In a *chain* ``[A, B, C]`` the outputs (rows) of ``A`` are the
inputs (columns) of ``B``. A hidden neuron with no incoming links, or no outgoing links, is
inactive and loses all its links (algorithms.md §3 [percolation]). The first layer's inputs and
the last layer's outputs are never inactive by this rule. *Pairs* ``(A, B)`` couple two layers
whose outputs multiply elementwise (attention q·k, gated MLP gate⊙up): output ``t`` of either is
useless when the same output of the other has no links.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def percolate_chain(masks: Sequence[Tensor]) -> list[Tensor]:
    """Percolate a chain of layer masks to its fixed point; returns new masks."""
    out = [m.clone().bool() for m in masks]
    _percolate_chain_(out)
    return out


def _percolate_chain_(out: list[Tensor]) -> bool:
    """:func:`percolate_chain` in place on the bool masks ``out``; whether any link went. A dead
    neuron's row or column is cleared in place (no mask-sized temporaries)."""
    for a, b in zip(out[:-1], out[1:]):
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"chain mismatch: a layer with {a.shape[0]} outputs feeds one with {b.shape[1]} inputs")
    changed, any_change = True, False
    while changed:
        changed = False
        # backward sweep: a hidden neuron without outgoing links loses its incoming links
        for layer in range(len(out) - 2, -1, -1):
            dead = ~out[layer + 1].any(dim=0)
            if bool(out[layer][dead].any()):
                out[layer].masked_fill_(dead[:, None], False)
                changed = any_change = True
        # forward sweep: a hidden neuron without incoming links loses its outgoing links
        for layer in range(1, len(out)):
            dead = ~out[layer - 1].any(dim=1)
            if bool(out[layer][:, dead].any()):
                out[layer].masked_fill_(dead[None, :], False)
                changed = any_change = True
    return any_change


def percolate(
    masks: Mapping[str, Tensor],
    chains: Sequence[Sequence[str]] = (),
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, Tensor]:
    """Percolate named masks over chains and elementwise pairs until nothing changes."""
    out = {name: m.clone().bool() for name, m in masks.items()}
    changed = True
    while changed:
        changed = False
        for first, second in pairs:
            a, b = out[first], out[second]
            alive = a.any(dim=1) & b.any(dim=1)
            new_a, new_b = a & alive[:, None], b & alive[:, None]
            if not (torch.equal(new_a, a) and torch.equal(new_b, b)):
                out[first], out[second], changed = new_a, new_b, True
        for chain in chains:
            masks = [out[n] for n in chain]  # the copies above, percolated in place
            if len({id(m) for m in masks}) < len(masks):  # a layer twice in one chain: its own copies
                masks = [m.clone() for m in masks]
                before = [out[n] for n in chain]
                _percolate_chain_(masks)
                for name, old, new in zip(chain, before, masks):
                    if not torch.equal(old, new):
                        out[name], changed = new, True
            elif _percolate_chain_(masks):
                changed = True
    return out


def active_hidden_neurons(masks: Sequence[Tensor]) -> list[Tensor]:
    """For each layer of a chain, which of its output neurons are active.

    An output neuron is active when it has an incoming link and, unless its layer is the last of
    the chain (whose outputs feed a dense layer or the model output), an outgoing link.
    """
    active = []
    for layer, mask in enumerate(masks):
        alive = mask.any(dim=1)
        if layer + 1 < len(masks):
            alive = alive & masks[layer + 1].any(dim=0)
        active.append(alive)
    return active
