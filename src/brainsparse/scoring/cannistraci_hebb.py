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
matrix form equals; both in :mod:`.ch_reference`, re-exported here). All return a float32
``(out, in)`` tensor that is zero at existing links. The scorers take ``backend=`` (``"auto"``,
``"cpp"``, ``"torch"``, see :mod:`brainsparse.kernels.backend`): with ``"cpp"`` (what ``"auto"``
picks on CPU when the C++ kernels build) the exact form and the sparse matrix route run in the
compiled scorers (:mod:`._ch_compiled`, the operator ``torch.ops.brainsparse.ch_l3_compiled``);
the PyTorch bodies are in :mod:`._ch_paths` and :mod:`._ch_matrix`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._validation import check_choice, check_positive_int
from ..errors import BrainsparseError
from ..kernels.backend import check_backend
from ._ch_common import VARIANTS, as_mask, canonical_variant
from ._ch_compiled import compiled_available, compiled_problem, compiled_scores
from ._ch_matrix import matrix_scores
from ._ch_paths import exact_scores
from .ch_reference import ch_l3_node_reference, ch_l3_reference

__all__ = [
    "VARIANTS",
    "ch_l3",
    "ch_l3_exact",
    "ch_l3_matrix",
    "ch_l3_node_reference",
    "ch_l3_reference",
    "l3_path_count",
]

#: Default cap on the index entries materialised per chunk of seed rows (see ch_l3_exact).
DEFAULT_CHUNK_SIZE = 1 << 24

_EXACT_METHODS = ("auto", "compiled", "sparse", "enumerate")


# --------------------------------------------------------------------------------------------
# exact path form
# --------------------------------------------------------------------------------------------
def ch_l3_exact(
    mask: Tensor,
    variant: str = "CH3",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    method: str = "auto",
    backend: str = "auto",
) -> Tensor:
    """Exact path-based CH score on L3 paths, vectorised: [CH3-L3], [CH2-L3] or [CH3.1-L3].

    ``score(u, v) = Σ_{paths u–z1–z2–v} f_I(v, z1) · f_O(u, z2)`` where the node factors come
    from the local-community degrees ``di(z1) = CN_I[v, z1]``, ``de(z1) = deg(z1) − di(z1) − 1``,
    ``di(z2) = CN_O[u, z2]``, ``de(z2) = deg(z2) − di(z2) − 1``:

    * [CH3-L3]   ``Σ 1/sqrt((1+de_z1)(1+de_z2))``
    * [CH2-L3]   ``Σ sqrt((1+di_z1)(1+di_z2)) / sqrt((1+de_z1)(1+de_z2))``
    * [CH3.1-L3] ``Σ 1/sqrt((1/(1+di_z1)+de_z1)(1/(1+di_z2)+de_z2))``

    ``method="compiled"`` (what ``"auto"`` picks on CPU when ``backend`` resolves to the C++
    kernels, see :func:`brainsparse.kernels.resolve`): one pass per output row ``u`` in C++ (OpenMP over
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
        backend: ``"auto"`` (default), ``"cpp"`` or ``"torch"`` (never the compiled scorer).

    Returns:
        float32 tensor ``(out, in)`` on the mask's device, zero at existing links.
    """
    m = as_mask(mask)
    var = canonical_variant(variant)
    meth = check_choice(method, _EXACT_METHODS, "method")
    check_positive_int(chunk_size, "chunk_size")
    check_backend(backend)
    if meth in ("auto", "compiled"):
        if compiled_available(m, backend):
            return compiled_scores(m, var, matrix=False)
        if meth == "compiled":
            raise BrainsparseError(
                "method 'compiled' needs the C++ kernels on a CPU mask; they are unavailable "
                f"({compiled_problem(m, backend)}); allowed instead: sparse, enumerate"
            )
        meth = "sparse"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        out = exact_scores(m, var, chunk_size, meth)
    return out.masked_fill_(m, 0.0)


# --------------------------------------------------------------------------------------------
# matrix form
# --------------------------------------------------------------------------------------------
#: Below this density the CPU matrix form takes the sparse route (fused kernel, else CSR
#: products). Measured crossover of the fused kernel against dense matmuls (bench.json, quiet
#: machine): ahead at 5 % (1.0–1.3× for n = 784…4096), behind at 10 % (0.4–0.6×).
_SPARSE_MATMUL_MAX_DENSITY = 0.06


def ch_l3_matrix(mask: Tensor, variant: str = "CH3", *, use_sparse: bool | None = None,
                 backend: str = "auto") -> Tensor:
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
    * sparse, compiled (CPU, ``backend`` resolving to the C++ kernels): a
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
            ``None`` (default): on CPU when the density is below 0.06.
        backend: ``"auto"`` (default), ``"cpp"`` or ``"torch"`` (never the compiled scorer).
    """
    m = as_mask(mask)
    var = canonical_variant(variant)
    check_backend(backend)
    if m.numel() == 0:
        return torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    if use_sparse is None:
        links = int(torch.count_nonzero(m))
        use_sparse = m.device.type == "cpu" and links < _SPARSE_MATMUL_MAX_DENSITY * m.numel()
    if use_sparse and compiled_available(m, backend):
        return compiled_scores(m, var, matrix=True)
    return matrix_scores(m, var, bool(use_sparse))


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------
def l3_path_count(mask: Tensor) -> int:
    """Number of L3 paths u – z1 – z2 – v in the layer (the work of the exact form).

    Every link (z2, z1) lies on deg(z1) · deg(z2) paths: u ranges over z1's outputs and v over
    z2's inputs (paths that end on existing links included).
    """
    m = as_mask(mask)
    rows, cols = m.nonzero(as_tuple=True)
    deg_out = m.sum(dim=1, dtype=torch.float64)  # inputs per output neuron
    deg_in = m.sum(dim=0, dtype=torch.float64)  # outputs per input neuron
    return int((deg_out[rows] * deg_in[cols]).sum())


def ch_l3(mask: Tensor, variant: str = "CH3", exact: bool = True, *, backend: str = "auto") -> Tensor:
    """Cannistraci–Hebb L3 scores of every absent link of a bipartite layer, float32 ``(out, in)``.

    ``exact=True``: path form [CH3-L3] / [CH2-L3] / [CH3.1-L3] (:func:`ch_l3_exact`, cost ∝
    number of L3 paths ≈ N·k³). ``exact=False``: matrix form [CH-L3 matrix approximation]
    (:func:`ch_l3_matrix`, dense O(N³)). ``variant`` in CH2, CH3, CH3.1 (case-insensitive).
    Scores are zero at existing links and at candidates with no L3 path. ``backend``:
    ``"auto"`` (default), ``"cpp"`` or ``"torch"``, see :mod:`brainsparse.kernels.backend`.
    """
    if not isinstance(exact, bool):
        raise BrainsparseError(f"exact {exact!r} is not a bool; allowed: True, False")
    if exact:
        return ch_l3_exact(mask, variant, backend=backend)
    return ch_l3_matrix(mask, variant, backend=backend)
