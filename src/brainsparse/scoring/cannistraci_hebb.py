"""Cannistraci–Hebb (CH) link prediction on paths of length 3 for one bipartite sparse layer.

A layer's bool mask ``M`` of shape ``(out, in)`` is read as a bipartite graph: rows are output
neurons ``u``, columns are input neurons ``v``, a link is a true entry. For an absent pair
``(u, v)`` the L3 paths are ``u – z1 – z2 – v`` with ``z1`` an input neuron linked to ``u``,
``z2`` an output neuron linked to ``v`` and ``z1 – z2`` a link. The *local community* of
``(u, v)`` is the set of all ``z1`` and ``z2`` on those paths. For a community node ``z``:

* internal degree ``di_z`` = its links to other community nodes;
* external degree ``de_z = deg(z) − di_z − (1 if z is linked to u or to v)``.

In a bipartite layer ``di(z1) = |N(z1) ∩ N(v)| = CN_I[v, z1]`` (common outputs of ``z1`` and
``v``) and ``di(z2) = |N(z2) ∩ N(u)| = CN_O[u, z2]`` (common inputs of ``z2`` and ``u``), so
``de(z1) = deg(z1) − CN_I[v, z1] − 1`` and ``de(z2) = deg(z2) − CN_O[u, z2] − 1``, with
``CN_O = M Mᵀ`` and ``CN_I = Mᵀ M``.

Path-based scores (exact, "L3p"):

* [CH3-L3]   ``CH3(u, v)   = Σ_paths 1 / sqrt((1 + de_z1)(1 + de_z2))``
* [CH2-L3]   ``CH2(u, v)   = Σ_paths sqrt((1 + di_z1)(1 + di_z2)) / sqrt((1 + de_z1)(1 + de_z2))``
* [CH3.1-L3] ``CH3.1(u, v) = Σ_paths 1 / sqrt((1/(1 + di_z1) + de_z1) · (1/(1 + di_z2) + de_z2))``

Matrix form ("L3n", [CH-L3 matrix approximation], NeurIPS'25): each community node counted once
with a node weight, summed arithmetically (see :func:`ch_l3_matrix`).

Public functions: :func:`ch_l3` (dispatcher), :func:`ch_l3_exact` (vectorised path form),
:func:`ch_l3_matrix` (matrix form), and the slow test oracles :func:`ch_l3_reference` (path form
straight from the definition) and :func:`ch_l3_node_reference` (node-based definition that the
matrix form equals). All return a float32 ``(out, in)`` tensor that is zero at existing links.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from .._validation import check_choice, check_positive_int
from ..errors import BrainsparseError
from ..kernels import cpu_kernels

__all__ = [
    "VARIANTS",
    "ch_l3",
    "ch_l3_exact",
    "ch_l3_matrix",
    "l3_path_count",
    "ch_l3_reference",
    "ch_l3_node_reference",
]

#: Supported CH variants (case-insensitive on input).
VARIANTS: tuple[str, ...] = ("CH2", "CH3", "CH3.1")

#: Default cap on the index entries materialised per chunk of seed rows (see ch_l3_exact).
DEFAULT_CHUNK_SIZE = 1 << 24
# Cap on rows × (out + in) dense cells per chunk (per-chunk counts and output block).
_MAX_CELLS_PER_CHUNK = 1 << 24

_EXACT_METHODS = ("auto", "compiled", "sparse", "enumerate")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _as_mask(mask) -> Tensor:
    """Return ``mask`` as a 2-D bool tensor; accept bool or 0/1 numeric input, else raise."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except Exception:
            raise BrainsparseError(
                f"mask must be a 2-D bool tensor of shape (out, in); got {type(mask).__name__}"
            ) from None
    if mask.dim() != 2:
        raise BrainsparseError(
            f"mask must be 2-D of shape (out, in); got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
        raise BrainsparseError(
            f"mask must be bool or contain only 0 and 1; got dtype {mask.dtype} with other values"
        )
    return mask != 0


def _canonical_variant(variant) -> str:
    key = check_choice(variant, VARIANTS, "variant")
    return {v.lower(): v for v in VARIANTS}[key]


def _compiled_scorer(m: Tensor):
    """The C++ kernels for a CPU mask when the active kernel backend is ``"cpp"``, else ``None``."""
    return cpu_kernels() if m.device.type == "cpu" else None


# --------------------------------------------------------------------------------------------
# per-node factors
# --------------------------------------------------------------------------------------------
def _path_factor(di: Tensor, deg: Tensor, variant: str) -> Tensor:
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


def _node_weight_matrix(c: Tensor, deg: Tensor, variant: str) -> Tensor:
    """Steps 2–3 of the matrix form for one side: ``c`` common-neighbour counts, ``deg`` degrees
    broadcast along the last index."""
    b = (c != 0).to(c.dtype)
    e = (deg.unsqueeze(0) - c) * b
    e = (e - 1.0).clamp_min(0.0)  # entries 0 and 1 both become 0
    if variant == "CH3":
        return b / (e + 1.0)
    if variant == "CH2":
        return (c + b) / (e + 1.0)
    # CH3.1 (REPO-B node weight): (C + B) / (1 + E)^(1 + E/(1 + E))
    return (c + b) / torch.pow(e + 1.0, 1.0 + e / (e + 1.0))


def _kernel_problem(m: Tensor) -> str:
    """Why the compiled scorer is not used for ``m``."""
    if m.device.type != "cpu":
        return f"mask on {m.device}"
    from ..kernels import _cpu_ext, backend

    return _cpu_ext.error() or f"kernel backend {backend()!r}"


# --------------------------------------------------------------------------------------------
# exact, vectorised path form
# --------------------------------------------------------------------------------------------
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


def _exact_scores(m: Tensor, var: str, chunk_size: int, meth: str) -> Tensor:
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
    q_val = _path_factor(cn_i.to(torch.float64), deg_i[z1q].to(torch.float64), var)
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
        w = _path_factor(cn_o.to(torch.float64), deg_o[z2].to(torch.float64), var)
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


def ch_l3_exact(
    mask: Tensor,
    variant: str = "CH3",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    method: str = "auto",
) -> Tensor:
    """Exact path-based CH score on L3 paths, vectorised: [CH3-L3], [CH2-L3] or [CH3.1-L3].

    ``score(u, v) = Σ_{paths u–z1–z2–v} f_I(v, z1) · f_O(u, z2)`` where the node factors come
    from the local-community degrees ``di(z1) = CN_I[v, z1]``, ``de(z1) = deg(z1) − di(z1) − 1``,
    ``di(z2) = CN_O[u, z2]``, ``de(z2) = deg(z2) − di(z2) − 1``:

    * [CH3-L3]   ``Σ 1/sqrt((1+de_z1)(1+de_z2))``
    * [CH2-L3]   ``Σ sqrt((1+di_z1)(1+di_z2)) / sqrt((1+de_z1)(1+de_z2))``
    * [CH3.1-L3] ``Σ 1/sqrt((1/(1+di_z1)+de_z1)(1/(1+di_z2)+de_z2))``

    ``method="compiled"`` (what ``"auto"`` picks on CPU when the C++ kernels are available, see
    :func:`brainsparse.kernels.backend`): one pass per output row ``u`` in C++ (OpenMP over
    rows): ``di(z2) = CN_O[u, z2]`` counted into a scratch row from the neighbour lists, then every
    path ``u – z1 – z2 – v`` adds ``f_O(u, z2) · f_I(v, z1)`` in float64, the ``f_I`` values read
    from a per-link table built once (one entry per link ``z1 – z2`` and ``v ∈ N(z2)``). Same
    sums in the same order as ``"sparse"``; nothing of size ``out × out`` or ``in × in``.

    Algorithm of the PyTorch methods (``"auto"`` without the compiled kernels: ``"sparse"``):
    CSR/CSC neighbour lists of the mask; for each chunk of seed rows ``u`` the
    triples ``(u, z1, z2)`` are enumerated as index tensors (``repeat_interleave`` + gathers);
    ``di(z2) = CN_O[u, z2]`` is the number of triples sharing ``(u, z2)`` and gives ``f_O``. The
    last hop ``z2 → v`` uses a table ``Q`` with one entry per (link ``z1–z2``, ``v ∈ N(z2)``)
    holding ``f_I(v, z1)``, where ``di(z1) = CN_I[v, z1]`` is the number of entries sharing
    ``(z1, v)``. ``method="sparse"`` sums the paths as one CSR × CSR product per chunk
    (triples weighted by ``f_O`` times ``Q``: each product term is one L3 path);
    ``method="enumerate"`` expands every path ``(u, z1, z2, v)`` explicitly and accumulates
    with ``index_add_``. Both add exactly the path terms in float64; paths ending on an existing
    link are discarded by zeroing the existing links at the end.

    Complexity: time O(#L3 paths) ≈ O(N · k³) for N neurons of mean degree k (the sparse
    product does this work in compiled code), plus O(in²) to count ``CN_I``; memory O(in²) for
    ``CN_I``, O(Σ_z2 deg(z2)²) ≈ O(N · k²) for ``Q``, and per chunk O(chunk_size) index
    entries plus at most 2²⁴ dense cells.

    Args:
        mask: bool (or 0/1) tensor of shape ``(out, in)``.
        variant: ``"CH2"``, ``"CH3"`` or ``"CH3.1"`` (case-insensitive).
        chunk_size: cap on the index entries materialised at once — triples ``(u, z1, z2)`` for
            ``method="sparse"``, whole paths for ``method="enumerate"`` (≥ 1; a single seed row
            or triple is never split; unused by ``"compiled"``). Does not change the result.
        method: ``"auto"`` (default: ``"compiled"`` when available, else ``"sparse"``),
            ``"compiled"`` (C++; raises when the kernels are unavailable), ``"sparse"`` or
            ``"enumerate"``.

    Returns:
        float32 tensor ``(out, in)`` on the mask's device, zero at existing links.
    """
    m = _as_mask(mask)
    var = _canonical_variant(variant)
    meth = check_choice(method, _EXACT_METHODS, "method")
    check_positive_int(chunk_size, "chunk_size")
    if meth in ("auto", "compiled"):
        kernels = _compiled_scorer(m)
        if kernels is not None:
            return kernels.ch_l3(m, var, matrix=False)
        if meth == "compiled":
            raise BrainsparseError(
                "method 'compiled' needs the C++ kernels on a CPU mask; they are unavailable "
                f"({_kernel_problem(m)}); allowed instead: sparse, enumerate"
            )
        meth = "sparse"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        out = _exact_scores(m, var, chunk_size, meth)
    return out.masked_fill_(m, 0.0)


# --------------------------------------------------------------------------------------------
# matrix form
# --------------------------------------------------------------------------------------------
#: Below this density the CPU matrix form takes the sparse route (fused kernel, else CSR
#: products). Measured crossover of the fused kernel against dense matmuls (bench.json, quiet
#: machine): ahead at 5 % (1.0–1.3× for n = 784…4096), behind at 10 % (0.4–0.6×).
_SPARSE_MATMUL_MAX_DENSITY = 0.06


def ch_l3_matrix(mask: Tensor, variant: str = "CH3", *, use_sparse: bool | None = None) -> Tensor:
    """Matrix form of CH on L3 [CH-L3 matrix approximation] (NeurIPS'25 "L3n"), float32.

    With ``A = M`` as a 0/1 float32 matrix ``(out, in)``:

    1. ``C = A·Aᵀ`` (common inputs of two output neurons), ``B = (C ≠ 0)``;
    2. ``E_ab = (deg(b) − C_ab)·B_ab``, then ``E ← max(E − 1, 0)`` (``deg`` along the last index);
    3. node weights — CH3: ``Wt = B/(E+1)``; CH2: ``Wt = (C+B)/(E+1)``;
       CH3.1: ``Wt = (C+B)/(E+1)^(1 + E/(E+1))``;
    4. ``S_out = Wt·A`` (out × in);
    5. the same from the input side with ``Aᵀ``: ``S_in = Wt'·Aᵀ`` (in × out);
    6. ``scores = S_out + S_inᵀ``, zero at existing links.

    It equals the node-based sum over the local community ``Z_I ∪ Z_O`` of ``(u, v)``
    (see :func:`ch_l3_node_reference`): CH3 ``Σ_z 1/(1+de_z)``, CH2 ``Σ_z (1+di_z)/(1+de_z)``,
    CH3.1 ``Σ_z (1+di_z)/(1+de_z)^(1+de_z/(1+de_z))``. Same support as the exact path form.

    Routes (same result up to float rounding):

    * dense: four dense matmuls, O(out²·in + in²·out) time, O(out² + in²) memory;
    * sparse, compiled (CPU with the C++ kernels, see :func:`brainsparse.kernels.backend`): a
      fused kernel that never forms ``C``: per output row ``u`` it counts ``C[u, :]`` from the
      neighbour lists (``z1 ∈ N(u)``, ``z2 ∈ N(z1)``), forms ``Wt[u, z2]`` on the touched
      entries and adds ``Wt[u, z2]·A[z2, :]`` into the row; the input side adds, for each
      ``z1 ∈ N(u)``, the non-zeros of column ``z1`` of ``Wt'`` (listed once per input, from the
      same two-hop counts). Time O(N·k²·k) ≈ the number of L3 walks, memory O(in·min(k², in));
    * sparse, PyTorch (the fallback): sparse CSR × dense products, O(nnz·(out + in)) time,
      O(out² + in²) memory.

    Args:
        mask: bool (or 0/1) tensor of shape ``(out, in)``.
        variant: ``"CH2"``, ``"CH3"`` or ``"CH3.1"`` (case-insensitive).
        use_sparse: the sparse route (compiled when available) instead of dense matmuls.
            ``None`` (default): on CPU when the density is below 0.1.
    """
    m = _as_mask(mask)
    var = _canonical_variant(variant)
    if m.numel() == 0:
        return torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    if use_sparse is None:
        links = int(torch.count_nonzero(m))
        use_sparse = m.device.type == "cpu" and links < _SPARSE_MATMUL_MAX_DENSITY * m.numel()
    if use_sparse:
        kernels = _compiled_scorer(m)
        if kernels is not None:
            return kernels.ch_l3(m, var, matrix=True)
    a = m.to(torch.float32)
    deg_o, deg_i = a.sum(1), a.sum(0)
    if use_sparse:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            a_sp = a.to_sparse_csr()
            at_sp = a.t().contiguous().to_sparse_csr()
            wt_o = _node_weight_matrix(a_sp @ a.t(), deg_o, var)  # C = A·Aᵀ (out, out)
            scores = (at_sp @ wt_o.t()).t()  # S_out = Wt·A = (Aᵀ·Wtᵀ)ᵀ
            del wt_o
            wt_i = _node_weight_matrix(at_sp @ a, deg_i, var)  # C' = Aᵀ·A (in, in)
            scores = scores + a_sp @ wt_i.t()  # S_inᵀ = (Wt'·Aᵀ)ᵀ = A·Wt'ᵀ
    else:
        at = a.t()
        wt_o = _node_weight_matrix(a @ at, deg_o, var)  # (out, out)
        scores = wt_o @ a  # S_out
        del wt_o
        wt_i = _node_weight_matrix(at @ a, deg_i, var)  # (in, in)
        scores = scores + (wt_i @ at).t()  # + S_inᵀ
    return scores.masked_fill_(m, 0.0)


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------
def l3_path_count(mask: Tensor) -> int:
    """Number of L3 paths u – z1 – z2 – v in the layer (the work of the exact form).

    Every link (z2, z1) lies on deg(z1) · deg(z2) paths: u ranges over z1's outputs and v over
    z2's inputs (paths that end on existing links included).
    """
    m = _as_mask(mask)
    rows, cols = m.nonzero(as_tuple=True)
    deg_out = m.sum(dim=1, dtype=torch.float64)  # inputs per output neuron
    deg_in = m.sum(dim=0, dtype=torch.float64)  # outputs per input neuron
    return int((deg_out[rows] * deg_in[cols]).sum())


def ch_l3(mask: Tensor, variant: str = "CH3", exact: bool = True) -> Tensor:
    """Cannistraci–Hebb L3 scores of every absent link of a bipartite layer, float32 ``(out, in)``.

    ``exact=True``: path form [CH3-L3] / [CH2-L3] / [CH3.1-L3] (:func:`ch_l3_exact`, cost ∝
    number of L3 paths ≈ N·k³). ``exact=False``: matrix form [CH-L3 matrix approximation]
    (:func:`ch_l3_matrix`, dense O(N³)). ``variant`` in CH2, CH3, CH3.1 (case-insensitive).
    Scores are zero at existing links and at candidates with no L3 path.
    """
    if not isinstance(exact, bool):
        raise BrainsparseError(f"exact {exact!r} is not a bool; allowed: True, False")
    if exact:
        return ch_l3_exact(mask, variant)
    return ch_l3_matrix(mask, variant)


# --------------------------------------------------------------------------------------------
# slow references (tests only)
# --------------------------------------------------------------------------------------------
def _graph(mask: Tensor) -> tuple[int, int, list[set[int]]]:
    """Monopartite adjacency sets: outputs are nodes 0..out−1, inputs out..out+in−1."""
    n_out, n_in = mask.shape
    nbr: list[set[int]] = [set() for _ in range(n_out + n_in)]
    for a, j in mask.nonzero().tolist():
        nbr[a].add(n_out + j)
        nbr[n_out + j].add(a)
    return n_out, n_in, nbr


def _l3_paths(nbr: list[set[int]], u: int, v: int) -> list[tuple[int, int]]:
    """All simple paths u – z1 – z2 – v as (z1, z2)."""
    return [
        (z1, z2)
        for z1 in sorted(nbr[u])
        if z1 != v
        for z2 in sorted(nbr[z1])
        if z2 not in (u, v) and v in nbr[z2]
    ]


def _community_degrees(
    nbr: list[set[int]], community: set[int], u: int, v: int, z: int
) -> tuple[int, int]:
    """(di, de) of community node z: links inside the community, and links leaving it
    (not counting one link to the seeds u or v)."""
    di = len(nbr[z] & community)
    de = len(nbr[z]) - di - (1 if (u in nbr[z] or v in nbr[z]) else 0)
    return di, de


def _absent_pairs(mask: Tensor):
    """For the slow references: yield (u, i, v, paths, community) for every absent pair,
    with v = out + i the input node, its L3 paths and their local community."""
    n_out, n_in, nbr = _graph(mask.cpu())
    for u in range(n_out):
        for i in range(n_in):
            v = n_out + i
            if v in nbr[u]:
                continue
            paths = _l3_paths(nbr, u, v)
            yield u, i, v, paths, {z for path in paths for z in path}, nbr


def ch_l3_reference(mask: Tensor, variant: str = "CH3") -> Tensor:
    """Slow, literal path form [CH3-L3] / [CH2-L3] / [CH3.1-L3], for tests on small graphs.

    Loops over every absent pair, lists its L3 paths, builds the local community as a set and
    counts each community node's internal / external degree from the graph. O(out·in·paths).
    """
    m = _as_mask(mask)
    var = _canonical_variant(variant)
    scores = torch.zeros(m.shape, dtype=torch.float64)
    for u, i, v, paths, community, nbr in _absent_pairs(m):
        total = 0.0
        for z1, z2 in paths:
            di1, de1 = _community_degrees(nbr, community, u, v, z1)
            di2, de2 = _community_degrees(nbr, community, u, v, z2)
            if var == "CH3":
                total += 1.0 / math.sqrt((1 + de1) * (1 + de2))
            elif var == "CH2":
                total += math.sqrt((1 + di1) * (1 + di2)) / math.sqrt((1 + de1) * (1 + de2))
            else:
                total += 1.0 / math.sqrt((1.0 / (1 + di1) + de1) * (1.0 / (1 + di2) + de2))
        scores[u, i] = total
    return scores.to(torch.float32).to(m.device)


def ch_l3_node_reference(mask: Tensor, variant: str = "CH3") -> Tensor:
    """Slow node-based definition that the matrix form equals, for tests on small graphs.

    For every absent pair, each local-community node z (from the L3 paths) is counted once:
    CH3 ``Σ_z 1/(1+de_z)``, CH2 ``Σ_z (1+di_z)/(1+de_z)``,
    CH3.1 ``Σ_z (1+di_z)/(1+de_z)^(1+de_z/(1+de_z))``.
    """
    m = _as_mask(mask)
    var = _canonical_variant(variant)
    scores = torch.zeros(m.shape, dtype=torch.float64)
    for u, i, v, _paths, community, nbr in _absent_pairs(m):
        total = 0.0
        for z in community:
            di, de = _community_degrees(nbr, community, u, v, z)
            if var == "CH3":
                total += 1.0 / (1 + de)
            elif var == "CH2":
                total += (1 + di) / (1 + de)
            else:
                total += (1 + di) / (1 + de) ** (1 + de / (1 + de))
        scores[u, i] = total
    return scores.to(torch.float32).to(m.device)
