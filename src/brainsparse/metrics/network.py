"""Network measures of a sparse layer's bipartite graph (algorithms.md §8, reference.md §8).

A layer mask ``M`` of shape (out, in) is a bipartite graph: ``out`` output neurons (rows) and
``in`` input neurons (columns), a link wherever ``M`` is true. Measures treat it as an
unweighted, undirected graph on ``N = out + in`` nodes (outputs first, then inputs). The degree
of an output neuron is its fan-in (row sum), of an input neuron its fan-out (column sum).

A bipartite graph has no triangles, so triangle clustering is identically 0; "clustering" here
is square (4-cycle) clustering (algorithms.md, note on BSW).

``scipy`` and ``networkx`` are imported when a function needs them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._optional import require
from ..errors import BrainsparseError
from .degrees import _as_bool_array, _biadjacency, _csr_row_sums, degree_distribution, power_law_exponent

__all__ = [
    "degree_distribution",
    "power_law_exponent",
    "square_clustering",
    "bipartite_clustering",
    "robins_alexander_clustering",
    "characteristic_path_length",
    "modularity",
    "layer_measures",
]

#: work budget (links × BFS sources) under which the path length is computed exactly by
#: ``layer_measures(path_sources="auto")``; above it, sources are sampled
PATH_WORK_BUDGET = 400_000_000
#: fewest sources ``path_sources="auto"`` samples when it has to sample
MIN_PATH_SOURCES = 256


# ---------------------------------------------------------------------------
# clustering
# ---------------------------------------------------------------------------


def _side_squares(b, bt, chunk_entries: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For each node on the row side of ``b`` (rows × cols): (squares through it, potential).

    squares(v) = Σ_{x ≠ v, same side} C(c_vx, 2) with c_vx = common neighbours of v and x — the
    4-cycles through v; potential(v) = Σ_{u<w ∈ N(v)} (k_u + k_w − 2 − q_v(u, w)), with q_v the
    common neighbours of u and w other than v (Lind et al. 2005, as networkx.square_clustering).
    """
    rows = b.shape[0]
    k_row = _csr_row_sums(b)
    k_col = _csr_row_sums(bt)
    squares = np.zeros(rows, dtype=np.float64)
    chunk = max(1, chunk_entries // max(rows, 1))
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        co = (b[start:stop] @ bt).tocoo()  # common-neighbour counts with every row node
        off_diag = co.row + start != co.col
        c = co.data[off_diag]
        np.add.at(squares, co.row[off_diag] + start, c * (c - 1.0) / 2.0)
    neighbour_degree_sum = b @ k_col
    potential = (k_row - 1.0) * neighbour_degree_sum - k_row * (k_row - 1.0) - squares
    return squares, potential


def _square_terms(b, bt) -> tuple[np.ndarray, np.ndarray, float]:
    """Per node (outputs then inputs): squares and potential; plus the number of 3-paths."""
    sq_out, pot_out = _side_squares(b, bt)
    sq_in, pot_in = _side_squares(bt, b)
    k_out, k_in = _csr_row_sums(b), _csr_row_sums(bt)
    coo = b.tocoo()
    paths3 = float(((k_out[coo.row] - 1.0) * (k_in[coo.col] - 1.0)).sum())  # one per middle link
    return np.concatenate([sq_out, sq_in]), np.concatenate([pot_out, pot_in]), paths3


def _clustering_from_terms(squares: np.ndarray, potential: np.ndarray) -> np.ndarray:
    out = np.zeros_like(squares)
    ok = potential > 0
    out[ok] = squares[ok] / potential[ok]
    return out


def _robins_alexander_from_terms(squares: np.ndarray, n_out: int, paths3: float) -> float:
    cycles = squares[:n_out].sum() / 2.0  # each 4-cycle passes through two output nodes
    return float(4.0 * cycles / paths3) if paths3 > 0 else 0.0


def square_clustering(mask: Any) -> np.ndarray:
    """Square (4-cycle) clustering coefficient of every node [clustering], outputs then inputs.

    ``C4(v) = Σ_{u<w} q_v(u,w) / Σ_{u<w} [a_v(u,w) + q_v(u,w)]`` over pairs of neighbours of
    ``v``, where ``q_v(u,w)`` counts the common neighbours of ``u`` and ``w`` other than ``v``
    and ``a_v(u,w) = (k_u − 1 − q_v(u,w)) + (k_w − 1 − q_v(u,w))`` (Lind, González & Herrmann,
    Phys. Rev. E 72, 056127, 2005) — the definition of ``networkx.square_clustering``, computed
    here with sparse products. Nodes with degree < 2 (or no possible square) get 0.
    """
    b, bt = _biadjacency(mask)
    squares, potential, _ = _square_terms(b, bt)
    return _clustering_from_terms(squares, potential)


def bipartite_clustering(mask: Any) -> float:
    """Average square clustering [clustering]: the mean of :func:`square_clustering` over all
    ``out + in`` nodes, nodes with degree < 2 counting as 0 (as ``networkx.average_clustering``
    of square clustering, and as the mean of BCT's ``clustering_coef_bu`` used by the papers,
    whose triangle version is identically 0 on a bipartite layer). 1 for a complete bipartite
    graph.
    """
    return float(square_clustering(mask).mean())


def robins_alexander_clustering(mask: Any) -> float:
    """Global bipartite clustering of Robins & Alexander (2004):
    ``4 · (number of 4-cycles) / (number of paths of length 3)``; 0 when there is no 3-path.
    1 for a complete bipartite graph. Same values as
    ``networkx.bipartite.robins_alexander_clustering``.
    """
    b, bt = _biadjacency(mask)
    squares, _, paths3 = _square_terms(b, bt)
    return _robins_alexander_from_terms(squares, b.shape[0], paths3)


# ---------------------------------------------------------------------------
# path length
# ---------------------------------------------------------------------------


def _bfs_distance_sum(step_from_rows, step_from_cols, sources: np.ndarray, n_rows: int, n_cols: int,
                      max_entries: int = 1 << 23) -> tuple[float, int]:
    """Sum of shortest-path lengths and number of reached nodes (source excluded) from
    ``sources`` on the row side, by a batched multi-source BFS: the frontier of all sources in a
    batch is a dense (nodes × batch) matrix, and one sparse product moves it one hop across the
    bipartite graph (``step_from_rows`` maps row-side frontiers to the column side,
    ``step_from_cols`` back)."""
    total, reached = 0.0, 0
    batch = max(1, max_entries // max(n_rows, n_cols))
    for start in range(0, sources.size, batch):
        src = sources[start : start + batch]
        seen = [np.zeros((n_rows, src.size), dtype=bool), np.zeros((n_cols, src.size), dtype=bool)]
        seen[0][src, np.arange(src.size)] = True
        frontier = seen[0].astype(np.float32)
        side, level = 0, 0
        while True:
            level += 1
            step = step_from_rows if side == 0 else step_from_cols
            side = 1 - side
            new = (step @ frontier) > 0
            new &= ~seen[side]
            count = int(new.sum())
            if count == 0:
                break
            total += level * count
            reached += count
            seen[side] |= new
            frontier = new.astype(np.float32)
    return total, reached


def characteristic_path_length(mask: Any, sources: int | None = None, seed: int = 0) -> float:
    """Characteristic path length [path length]: the mean shortest-path length (in links) over
    all ordered pairs of distinct nodes joined by a path — pairs in different components
    (infinite distance) are left out, as the papers' ``charpath`` with infinite distances
    excluded. Computed by breadth-first search from every non-isolated node (batched as sparse
    matrix products, which gives the same lengths as ``scipy.sparse.csgraph.shortest_path`` and
    runs several times faster).

    ``sources``: ``None`` uses every node (exact). An integer ``s`` smaller than the number of
    non-isolated nodes samples ``s`` of them uniformly without replacement (numpy generator
    seeded with ``seed``) and averages over the pairs starting at the sampled nodes — an
    estimate whose error shrinks as 1/√s (a few per cent at s = 100 on 1 % layers, less on
    denser or larger ones). nan when the layer has no link.
    """
    if sources is not None and (isinstance(sources, bool) or not isinstance(sources, int) or sources < 1):
        raise BrainsparseError(f"sources {sources!r} is invalid; allowed: None or an integer >= 1")
    b, bt = _biadjacency(mask)
    return _path_length(b, bt, sources, seed)


def _path_length(b, bt, sources: int | None, seed: int) -> float:
    n_out, n_in = b.shape
    k = np.concatenate([_csr_row_sums(b), _csr_row_sums(bt)])
    b, bt = b.astype(np.float32), bt.astype(np.float32)
    candidates = np.flatnonzero(k > 0)
    if candidates.size == 0:
        return math.nan
    if sources is not None and sources < candidates.size:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, size=sources, replace=False))
    out_src = candidates[candidates < n_out]
    in_src = candidates[candidates >= n_out] - n_out
    t1, r1 = _bfs_distance_sum(bt, b, out_src, n_out, n_in)  # outputs → inputs → outputs …
    t2, r2 = _bfs_distance_sum(b, bt, in_src, n_in, n_out)  # inputs → outputs → inputs …
    reached = r1 + r2
    return (t1 + t2) / reached if reached else math.nan


# ---------------------------------------------------------------------------
# modularity
# ---------------------------------------------------------------------------


def _graph_without_isolated(mask: Any):
    nx = require("networkx", "network measures")

    m = _as_bool_array(mask)
    rows, cols = np.nonzero(m)
    g = nx.Graph()
    g.add_edges_from(zip(rows.tolist(), (cols + m.shape[0]).tolist()))
    return g


def _louvain(mask: Any, seed: int | None) -> tuple[float, int]:
    nx = require("networkx", "network measures")

    g = _graph_without_isolated(mask)
    if g.number_of_edges() == 0:
        return math.nan, 0
    communities = nx.community.louvain_communities(g, seed=seed)
    return float(nx.community.modularity(g, communities)), len(communities)


def modularity(mask: Any, seed: int | None = 0) -> float:
    """Newman modularity Q [modularity] of the communities found by the Louvain method
    (``networkx.community.louvain_communities``, resolution 1, node order shuffled by ``seed``)
    on the undirected layer graph without its isolated nodes. nan when the layer has no link.

    The papers average Newman's spectral ``modularity_und`` over 100 runs; Louvain finds
    partitions of equal or higher Q and is deterministic for a fixed seed.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BrainsparseError(f"seed {seed!r} is invalid; allowed: an integer or None")
    return _louvain(mask, seed)[0]


# ---------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------


def _auto_sources(links: int, nodes: int) -> int | None:
    """``None`` (exact) when BFS from every node fits the work budget, else a sample size."""
    if links == 0 or links * nodes <= PATH_WORK_BUDGET:
        return None
    return max(MIN_PATH_SOURCES, PATH_WORK_BUDGET // links)


def layer_measures(mask: Any, seed: int = 0, path_sources: int | str | None = "auto") -> dict[str, Any]:
    """All network measures of one layer (algorithms.md §8), as a JSON-ready dict (floats may be
    nan where a measure is undefined):

    ``shape`` [out, in]; ``N`` nodes (out + in); ``E`` links; ``average_degree`` 2E/N;
    ``density`` E/(out·in) (the layer density of algorithms.md §0); ``isolated_nodes`` and its
    split ``isolated_outputs`` / ``isolated_inputs``; ``components`` (connected components of
    the graph without isolated nodes) and ``largest_component`` (nodes); ``max_output_degree``,
    ``max_input_degree``; ``clustering`` (:func:`bipartite_clustering`, square clustering) and
    ``clustering_robins_alexander``; ``characteristic_path_length`` and ``path_length_sources``
    (how many BFS sources it used; equal to the non-isolated nodes when exact);
    ``modularity`` and ``communities`` (Louvain, seeded with ``seed``); ``gamma_outputs`` /
    ``xmin_outputs`` (power law of the outputs' fan-in) and ``gamma_inputs`` / ``xmin_inputs``
    (inputs' fan-out), from :func:`power_law_exponent`.

    ``path_sources``: ``"auto"`` (default) is exact while links × nodes ≤ ``PATH_WORK_BUDGET``
    (4·10⁸: a 1568×1568 layer is exact up to ~5 % density) and otherwise samples
    ``max(256, PATH_WORK_BUDGET // links)`` sources seeded with ``seed``; ``None`` is always
    exact; an integer samples that many.
    """
    csgraph = require("scipy.sparse.csgraph", "network measures")

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BrainsparseError(f"seed {seed!r} is invalid; allowed: an integer")
    m = _as_bool_array(mask)
    n_out, n_in = m.shape
    n = n_out + n_in
    deg = degree_distribution(m)
    k_out, k_in = deg["output_degrees"], deg["input_degrees"]
    e = int(k_out.sum())
    active = np.concatenate([k_out, k_in]) > 0

    if path_sources == "auto":
        sources = _auto_sources(e, int(active.sum()))
    elif path_sources is None or (
        isinstance(path_sources, int) and not isinstance(path_sources, bool) and path_sources >= 1
    ):
        sources = path_sources
    else:
        raise BrainsparseError(f"path_sources {path_sources!r} is invalid; allowed: 'auto', None or an integer >= 1")
    used_sources = int(active.sum()) if sources is None else min(int(sources), int(active.sum()))

    b, bt = _biadjacency(m)
    if e:
        sparse = require("scipy.sparse", "network measures")

        adj = sparse.bmat([[None, b], [bt, None]], format="csr")
        _, labels = csgraph.connected_components(adj, directed=False)
        sizes = np.bincount(labels[active])
        sizes = sizes[sizes > 0]
        components, largest = int(sizes.size), int(sizes.max())
    else:
        components, largest = 0, 0

    squares, potential, paths3 = _square_terms(b, bt)
    q, n_comm = _louvain(m, seed)
    g_out, x_out = power_law_exponent(k_out)
    g_in, x_in = power_law_exponent(k_in)
    return {
        "shape": [n_out, n_in],
        "N": n,
        "E": e,
        "average_degree": 2.0 * e / n,
        "density": e / (n_out * n_in),
        "isolated_nodes": int((~active).sum()),
        "isolated_outputs": int((k_out == 0).sum()),
        "isolated_inputs": int((k_in == 0).sum()),
        "components": components,
        "largest_component": largest,
        "max_output_degree": int(k_out.max()),
        "max_input_degree": int(k_in.max()),
        "clustering": float(_clustering_from_terms(squares, potential).mean()),
        "clustering_robins_alexander": _robins_alexander_from_terms(squares, n_out, paths3),
        "characteristic_path_length": _path_length(b, bt, sources, seed),
        "path_length_sources": used_sources,
        "modularity": q,
        "communities": n_comm,
        "gamma_outputs": g_out,
        "xmin_outputs": x_out,
        "gamma_inputs": g_in,
        "xmin_inputs": x_in,
    }
