"""The exact CH L3 path form in PyTorch: paths enumerated as index tensors, chunk by chunk.

The body of :func:`brainsparse.scoring.cannistraci_hebb.ch_l3_exact` when the compiled scorer is
not used (``method="sparse"`` or ``"enumerate"``); the algorithm is described there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["exact_scores", "path_factor"]

# Cap on rows × (out + in) dense cells per chunk (per-chunk counts and output block).
_MAX_CELLS_PER_CHUNK = 1 << 24


def path_factor(di: Tensor, deg: Tensor, variant: str) -> Tensor:
    """Factor of one path node given its internal degree ``di`` and degree ``deg`` (float64).

    The path term of every variant is the product of the two nodes' factors:
    CH3 ``1/sqrt(1+de)``, CH2 ``sqrt((1+di)/(1+de))``, CH3.1 ``1/sqrt(1/(1+di) + de)``, with
    ``de = deg − di − 1``. Pairs that cannot lie on a path to a candidate (``di = 0`` or
    ``de < 0``, which only happens on paths ending at an existing link) get factor 0.
    """
    de = deg - di - 1.0
    valid = (di > 0) & (de >= 0)
    de = de.clamp_min(0.0)
    if variant == "CH3":
        f = torch.rsqrt(1.0 + de)
    elif variant == "CH2":
        f = torch.sqrt((1.0 + di) / (1.0 + de))
    else:  # CH3.1
        f = torch.rsqrt(1.0 / (1.0 + di) + de)
    return torch.where(valid, f, torch.zeros_like(f))


def _chunks(costs: Tensor, cap: int, max_items: int) -> Iterator[tuple[int, int]]:
    """Greedy contiguous ranges ``[a, b)`` with ``sum(costs[a:b]) <= cap`` (at least one item)
    and at most ``max_items`` items each."""
    n = costs.numel()
    if n == 0:
        return
    cum = torch.cumsum(costs.to(torch.int64), 0).cpu()
    start = 0
    while start < n:
        before = int(cum[start - 1]) if start > 0 else 0
        limit = torch.tensor(before + cap, dtype=torch.int64)
        end = int(torch.searchsorted(cum, limit, right=True))
        end = min(max(end, start + 1), start + max_items, n)
        yield start, end
        start = end


def _expand(counts: Tensor, output_size: int) -> tuple[Tensor, Tensor]:
    """For items with ``counts``: the item id of every expanded element, and its rank within
    its item (0 .. count−1)."""
    dev = counts.device
    ids = torch.arange(counts.numel(), device=dev)
    src = torch.repeat_interleave(ids, counts, output_size=output_size)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(output_size, device=dev) - first[src]
    return src, rank


def _csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def exact_scores(m: Tensor, var: str, chunk_size: int, meth: str) -> Tensor:
    """Body of :func:`ch_l3_exact` (validated input); existing links are not yet zeroed."""
    n_out, n_in = m.shape
    dev = m.device
    out = torch.zeros(n_out, n_in, dtype=torch.float32, device=dev)
    rows, cols = m.nonzero(as_tuple=True)  # row-major order = CSR
    n_links = rows.numel()
    if n_links == 0:
        return out
    i64 = torch.int64
    deg_o = torch.bincount(rows, minlength=n_out)
    deg_i = torch.bincount(cols, minlength=n_in)
    zero = torch.zeros(1, dtype=i64, device=dev)
    row_ptr = torch.cat([zero, torch.cumsum(deg_o, 0)])
    col_ptr = torch.cat([zero, torch.cumsum(deg_i, 0)])
    csr_col = cols
    # links in CSC order (sorted by input z1, then output z2): link id e indexes these arrays
    order = torch.argsort(cols * n_out + rows)
    csc_z2 = rows[order]
    csc_z1 = cols[order]
    del order

    # ---- last-hop table Q: row e = link (z2, z1), entries v ∈ N(z2), value f_I(v, z1).
    # Its entries are the paths z1 – z2 – v, so di(z1) = CN_I[v, z1] = #entries with key (z1, v).
    q_cnt = deg_o[csc_z2]
    q_crow = torch.cat([zero, torch.cumsum(q_cnt, 0)])
    n_q = int(q_crow[-1])
    q_src, q_rank = _expand(q_cnt, n_q)
    q_col = csr_col[row_ptr[csc_z2][q_src] + q_rank]
    del q_rank
    z1q = csc_z1[q_src]
    del q_src
    key = z1q * n_in + q_col
    cn_i = torch.bincount(key, minlength=n_in * n_in)[key]
    del key
    q_val = path_factor(cn_i.to(torch.float64), deg_i[z1q].to(torch.float64), var)
    del z1q, cn_i
    if meth == "sparse":
        # materialised per seed row: triples (u, z1, z2), Σ_{z1∈N(u)} deg(z1)
        row_cost = torch.zeros(n_out, dtype=i64, device=dev).index_add_(0, rows, deg_i[cols])
        # int32 indices when they fit: the CPU sparse product then skips an index conversion
        fits = max(n_q, n_links, n_in, int(row_cost.sum())) < 2**31 - 1
        idx_t = torch.int32 if fits else i64
        q_mat = _csr(q_crow.to(idx_t), q_col.to(idx_t), q_val, (n_links, n_in))
        del q_crow, q_col, q_val
    else:
        # materialised per seed row: paths, Σ_{z1∈N(u)} Σ_{z2∈N(z1)} deg(z2)
        s1 = torch.zeros(n_in, dtype=i64, device=dev).index_add_(0, cols, deg_o[rows])
        row_cost = torch.zeros(n_out, dtype=i64, device=dev).index_add_(0, rows, s1[cols])
    max_rows = max(1, _MAX_CELLS_PER_CHUNK // (n_out + n_in))

    for r0, r1 in _chunks(row_cost, chunk_size, max_rows):
        n_rows = r1 - r0
        l0, l1 = int(row_ptr[r0]), int(row_ptr[r1])
        if l1 == l0:
            continue
        z1 = csr_col[l0:l1]
        lu = rows[l0:l1] - r0  # local seed row of each link (u, z1)
        t_cnt = deg_i[z1]
        n_t = int(t_cnt.sum())
        t_src, t_rank = _expand(t_cnt, n_t)
        e = col_ptr[z1][t_src] + t_rank  # CSC link id of (z2, z1)
        del t_rank
        tu = lu[t_src]
        del t_src
        z2 = csc_z2[e]
        # di(z2) = CN_O[u, z2] = number of triples (u, ·, z2)
        key = tu * n_out + z2
        cn_o = torch.bincount(key, minlength=n_rows * n_out)[key]
        w = path_factor(cn_o.to(torch.float64), deg_o[z2].to(torch.float64), var)
        del key, cn_o, z2
        keep = w != 0
        tu, e, w = tu[keep], e[keep], w[keep]
        if w.numel() == 0:
            continue
        if meth == "sparse":
            # triples of a row are ordered by (z1, z2), i.e. by increasing e: a valid CSR
            p_crow = torch.cat([zero, torch.cumsum(torch.bincount(tu, minlength=n_rows), 0)])
            prod = _csr(p_crow.to(idx_t), e.to(idx_t), w, (n_rows, n_links)) @ q_mat
            r_idx = torch.repeat_interleave(
                torch.arange(n_rows, device=dev),
                prod.crow_indices().diff(),
                output_size=prod.values().numel(),
            )
            # write the (row, v, value) entries of the product into the contiguous rows of `out`
            flat = r_idx * n_in + prod.col_indices().to(i64)
            out[r0:r1].view(-1).index_add_(0, flat, prod.values().to(torch.float32))
        else:
            # every path (u, z1, z2, v) explicitly: triple t expands over Q's row e_t (v ∈ N(z2))
            block = torch.zeros(n_rows * n_in, dtype=torch.float64, device=dev)
            p_cnt = q_cnt[e]
            for a, b in _chunks(p_cnt, chunk_size, p_cnt.numel()):
                cnt = p_cnt[a:b]
                p_src, p_rank = _expand(cnt, int(cnt.sum()))
                qi = q_crow[e[a:b]][p_src] + p_rank
                v = q_col[qi]
                block.index_add_(0, tu[a:b][p_src] * n_in + v, w[a:b][p_src] * q_val[qi])
            out[r0:r1] = block.view(n_rows, n_in).to(torch.float32)
    return out
