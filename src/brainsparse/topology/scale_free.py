"""Bipartite scale-free (BSF) initial topology, equal partition and resorting of layer chains."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._validation import check_density, link_count
from ..errors import BrainsparseError
from .random import (
    _check_generator,
    _check_shape,
    _degrees,
    _first_occurrence,
    _multinomial,
    _rand,
    _randperm,
    _sample_free,
)

__all__ = ["bipartite_scale_free", "equal_partition", "resort_chain", "scale_free_chain"]

# rounds of vectorised retry before a step gives up on the links it could not place
_RETRY_ROUNDS = 8


def _barabasi_albert(n_nodes: int, n_links: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Edge list (u, v) of a Barabási–Albert graph on ``n_nodes`` nodes with (at most, and
    normally exactly) ``n_links`` links; the mean number of links per new node is fractional."""
    # [BSF] BA growth with fractional m = K / N, reference.md §2.4 step 1
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    m = n_links / n_nodes
    m0 = min(n_nodes, int(m) + 1)
    seed = np.triu_indices(m0, k=1)
    n_seed = len(seed[0])
    us, vs = [seed[0].astype(np.int64)], [seed[1].astype(np.int64)]
    deg = np.zeros(n_nodes, dtype=np.int64)
    deg[:m0] = m0 - 1
    # every link puts both endpoints in the pool: a uniform pool draw is a degree-∝ draw
    pool = np.empty(2 * max(n_links, n_seed) + 2, dtype=np.int64)
    fill = 2 * n_seed
    pool[:fill] = np.concatenate([seed[0], seed[1]])
    n_positive = m0 if m0 > 1 else 0  # predecessors with degree > 0
    n_new = n_nodes - m0
    if n_new > 0 and n_links > n_seed:
        base, extra = divmod(n_links - n_seed, n_new)
        m_t = np.full(n_new, base, dtype=np.int64)
        m_t[rng.permutation(n_new)[:extra]] += 1
        m_t = np.minimum(m_t, np.arange(m0, n_nodes))  # node t has only t predecessors
        for t, mt in zip(range(m0, n_nodes), m_t.tolist()):
            if mt == 0:
                continue
            if mt == t:
                targets = np.arange(t)
            elif mt >= n_positive:
                # too few nodes with links: all of them plus random isolated ones
                positive = np.flatnonzero(deg[:t] > 0)
                isolated = np.flatnonzero(deg[:t] == 0)
                targets = np.concatenate([positive, rng.choice(isolated, mt - positive.size, replace=False)])
            else:
                targets = _distinct_pool_draws(pool[:fill], mt, rng)
                if targets is None:  # heavily skewed: exact weighted draw without replacement
                    w = deg[:t].astype(np.float64)
                    targets = rng.choice(t, mt, replace=False, p=w / w.sum())
            n_positive += int(np.count_nonzero(deg[targets] == 0)) + 1
            deg[targets] += 1
            deg[t] = mt
            pool[fill : fill + mt] = targets
            pool[fill + mt : fill + 2 * mt] = t
            fill += 2 * mt
            us.append(np.full(mt, t, dtype=np.int64))
            vs.append(targets.astype(np.int64))
    return torch.from_numpy(np.concatenate(us)), torch.from_numpy(np.concatenate(vs))


def _distinct_pool_draws(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray | None:
    """``count`` distinct nodes by successive uniform draws from ``pool`` (first occurrences in
    draw order, i.e. degree-proportional sampling without replacement); None if that takes too long."""
    drawn = np.empty(0, dtype=np.int64)
    for _ in range(_RETRY_ROUNDS):
        drawn = np.concatenate([drawn, pool[rng.integers(0, pool.size, size=2 * count + 8)]])
        _, first = np.unique(drawn, return_index=True)
        if first.size >= count:
            return drawn[np.sort(first)[:count]]
    return None


def _add_preferential(
    taken: Tensor,
    sources: Tensor,
    source_is_row: bool,
    weights: Tensor,
    n_rows: int,
    n_cols: int,
    generator: torch.Generator,
) -> None:
    """Link every node in ``sources`` (rows if ``source_is_row`` else columns) to a node of the
    other side drawn with probability ∝ ``weights``, skipping duplicates; updates ``taken`` in
    place and gives up on a source after a few failed rounds."""
    pending = sources
    for _ in range(_RETRY_ROUNDS):
        if pending.numel() == 0:
            return
        partners = _multinomial(weights, pending.numel(), True, generator)
        if source_is_row:
            ids = pending * n_cols + partners
        else:
            ids = partners * n_cols + pending
        ok = ~taken[ids] & _first_occurrence(ids)
        taken[ids[ok]] = True
        pending = pending[~ok]


def bipartite_scale_free(
    out_features: int, in_features: int, density: float, *, generator: torch.Generator
) -> Tensor:
    """Bipartite scale-free mask (BSF) with exactly ``link_count(density, out, in)`` links.

    A Barabási–Albert graph on ``out + in`` nodes with K links; nodes are randomly typed as
    inputs or outputs; links between two nodes of the same type are rewired into input–output
    links keeping the endpoints' degrees where possible; the count is then fixed to exactly K
    (preferential-attachment links added, or random links removed). The degree distribution
    is heavy-tailed (power-law exponent typically 2.5–3).

    Returns a ``torch.bool`` tensor of shape ``(out_features, in_features)``.
    """
    # [BSF] BA graph → bipartite by rewiring frustrated links, algorithms.md §1 / reference.md §2.4
    out_features, in_features = _check_shape(out_features, in_features)
    density = check_density(density)
    generator = _check_generator(generator)
    k_total = link_count(density, out_features, in_features)
    n_nodes = out_features + in_features
    u, v = _barabasi_albert(n_nodes, k_total, generator)

    # random node types: the first in_features nodes of a permutation are inputs (step 2)
    perm = _randperm(n_nodes, generator)
    is_input = torch.zeros(n_nodes, dtype=torch.bool)
    is_input[perm[:in_features]] = True
    local = torch.empty(n_nodes, dtype=torch.long)
    local[perm[:in_features]] = torch.arange(in_features)
    local[perm[in_features:]] = torch.arange(out_features)

    taken = torch.zeros(out_features * in_features, dtype=torch.bool)
    inter = is_input[u] != is_input[v]
    ui, vi = u[inter], v[inter]
    out_node = torch.where(is_input[ui], vi, ui)
    in_node = torch.where(is_input[ui], ui, vi)
    taken[local[out_node] * in_features + local[in_node]] = True

    # endpoints of frustrated (intra-type) links, paired across types (step 3)
    intra_in = is_input[u] & is_input[v]
    intra_out = ~is_input[u] & ~is_input[v]
    ends_in = local[torch.cat([u[intra_in], v[intra_in]])]
    ends_out = local[torch.cat([u[intra_out], v[intra_out]])]
    ends_in = ends_in[_randperm(ends_in.numel(), generator)]
    ends_out = ends_out[_randperm(ends_out.numel(), generator)]
    for _ in range(_RETRY_ROUNDS):
        p = min(ends_in.numel(), ends_out.numel())
        if p == 0:
            break
        ids = ends_out[:p] * in_features + ends_in[:p]
        ok = ~taken[ids] & _first_occurrence(ids)
        taken[ids[ok]] = True
        if bool(ok.all()):
            ends_in, ends_out = ends_in[p:], ends_out[p:]
            break
        ends_in = torch.cat([ends_in[:p][~ok], ends_in[p:]])
        ends_out = torch.cat([ends_out[:p][~ok], ends_out[p:]])
        ends_in = ends_in[_randperm(ends_in.numel(), generator)]
        ends_out = ends_out[_randperm(ends_out.numel(), generator)]

    # half of the unpaired endpoints attach preferentially to the other side
    for ends, is_row in ((ends_out, True), (ends_in, False)):
        half = ends[: ends.numel() // 2]
        if half.numel() == 0:
            continue
        row_deg, col_deg = _degrees(taken, out_features, in_features)
        other_deg = (col_deg if is_row else row_deg).double()
        _add_preferential(taken, half, is_row, other_deg + 1.0, out_features, in_features, generator)

    # fix the count to exactly K
    count = int(torch.count_nonzero(taken))
    if count > k_total:
        links = torch.nonzero(taken, as_tuple=False).flatten()
        taken[links[_randperm(links.numel(), generator)[: count - k_total]]] = False
        count = k_total
    for _ in range(_RETRY_ROUNDS):
        if count >= k_total:
            break
        row_deg, col_deg = _degrees(taken, out_features, in_features)
        rows = _multinomial(row_deg.double() + 1.0, k_total - count, True, generator)
        cols = _multinomial(col_deg.double() + 1.0, k_total - count, True, generator)
        ids = rows * in_features + cols
        ok = ~taken[ids] & _first_occurrence(ids)
        taken[ids[ok]] = True
        count += int(torch.count_nonzero(ok))
    if count < k_total:  # saturated hubs: fill the rest uniformly
        taken[_sample_free(taken, k_total - count, generator)] = True
    return taken.view(out_features, in_features)


def equal_partition(mask: Tensor, *, generator: torch.Generator) -> Tensor:
    """Equal partition of a layer's inputs: a new mask in which every output neuron (row) keeps
    its degree and every input neuron (column) has ⌊K/in⌋ or ⌈K/in⌉ links.

    Which inputs a row links to is random (drawn from ``generator``); rows have no duplicate
    links by construction. The input mask is not modified.
    """
    # [BSF] equal partition (EP) of the first layer, algorithms.md §1 / reference.md §2.4
    _check_mask(mask, "mask")
    generator = _check_generator(generator)
    out_features, in_features = mask.shape
    row_deg = mask.sum(dim=1).tolist()
    k_total = sum(row_deg)
    # every column starts with capacity ceil(K / in); each row takes the columns with the most
    # capacity left (random tie-break), which keeps all capacities within 1 of each other
    capacity = torch.full((in_features,), float(-(-k_total // in_features)), dtype=torch.float32)
    out = torch.zeros(out_features, in_features, dtype=torch.bool)
    chunk = max(1, (1 << 22) // in_features)  # rows of tie-break noise drawn at once
    for lo in range(0, out_features, chunk):
        noise = _rand((min(chunk, out_features - lo), in_features), generator)
        for offset, deg in enumerate(row_deg[lo : lo + chunk]):
            if deg == 0:
                continue
            cols = torch.topk(capacity + noise[offset], deg, sorted=False).indices
            out[lo + offset, cols] = True
            capacity[cols] -= 1.0
    return out


def resort_chain(masks: Sequence[Tensor]) -> list[Tensor]:
    """Rigid resort of a layer chain: for every hidden layer, the columns of ``masks[l + 1]``
    are permuted so that the hidden neuron with the k-th highest degree in ``masks[l]`` (row
    sum) gets the k-th highest degree in ``masks[l + 1]`` (column sum).

    ``masks[0]`` is returned unchanged (as a copy); link counts and row degrees are kept.
    Ties are ordered by neuron index (deterministic).
    """
    # [BSF] rigid resort of middle-layer neurons, algorithms.md §1 / reference.md §2.4
    masks = list(masks)
    if not masks:
        return []
    for l, m in enumerate(masks):
        _check_mask(m, f"masks[{l}]")
    for l in range(len(masks) - 1):
        if masks[l + 1].shape[1] != masks[l].shape[0]:
            raise BrainsparseError(
                f"masks[{l + 1}] has {masks[l + 1].shape[1]} inputs but masks[{l}] has "
                f"{masks[l].shape[0]} outputs; a chain needs masks[l + 1].shape[1] == masks[l].shape[0]"
            )
    result = [masks[0].clone()]
    for l in range(1, len(masks)):
        prev_deg = result[l - 1].sum(dim=1)
        next_deg = masks[l].sum(dim=0)
        rank_prev = torch.argsort(prev_deg, descending=True, stable=True)
        rank_next = torch.argsort(next_deg, descending=True, stable=True)
        perm = torch.empty_like(rank_prev)
        perm[rank_prev] = rank_next
        result.append(masks[l][:, perm].clone())
    return result


def scale_free_chain(
    shapes: Sequence[tuple[int, int]],
    density: float | Sequence[float],
    *,
    generator: torch.Generator,
) -> list[Tensor]:
    """BSF masks for a chain of layers: one :func:`bipartite_scale_free` mask per layer, the
    first layer equally partitioned (:func:`equal_partition`), then :func:`resort_chain`.

    ``shapes`` are the ``(out, in)`` shapes in order, with ``shapes[l + 1][1] == shapes[l][0]``;
    ``density`` is one value for all layers or one per layer.
    """
    # [BSF] + EP + resort, algorithms.md §1 / reference.md §2.4
    generator = _check_generator(generator)
    shapes = [tuple(s) for s in shapes]
    for l in range(len(shapes) - 1):
        if shapes[l + 1][1] != shapes[l][0]:
            raise BrainsparseError(
                f"shapes {shapes!r} do not form a chain: layer {l + 1} has {shapes[l + 1][1]} inputs "
                f"but layer {l} has {shapes[l][0]} outputs"
            )
    densities = _per_layer(density, len(shapes))
    masks = [bipartite_scale_free(o, i, d, generator=generator) for (o, i), d in zip(shapes, densities)]
    if masks:
        masks[0] = equal_partition(masks[0], generator=generator)
    return resort_chain(masks)


def _per_layer(density: float | Sequence[float], n_layers: int) -> list[float]:
    """One validated density per layer from a single value or a sequence."""
    if isinstance(density, (str, bytes)) or not hasattr(density, "__iter__"):
        return [check_density(density)] * n_layers  # type: ignore[arg-type]
    values = list(density)  # type: ignore[arg-type]
    if len(values) != n_layers:
        raise BrainsparseError(
            f"density {values!r} has {len(values)} values for {n_layers} layers; "
            "allowed: one number, or one per layer"
        )
    return [check_density(d, f"density[{l}]") for l, d in enumerate(values)]


def _check_mask(mask: object, name: str) -> None:
    """Raise unless ``mask`` is a 2-D torch.bool tensor."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise BrainsparseError(f"{name} is not a 2-D torch.bool tensor; allowed: a (out, in) bool mask")
