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
import torch

from ..errors import BrainsparseError

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
_POWER_LAW_ESTIMATORS = ("approx", "exact")
#: range of exponents searched, as the papers' plfit calls (reference.md §8)
GAMMA_RANGE = (1.01, 10.0)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------


def _as_bool_array(mask: Any, name: str = "mask") -> np.ndarray:
    """A 2-D numpy bool array from a torch tensor, numpy array or nested list (nonzero = link)."""
    if isinstance(mask, torch.Tensor):
        arr = mask.detach().to("cpu")
        arr = (arr != 0).numpy() if arr.dtype != torch.bool else arr.numpy()
    else:
        try:
            arr = np.asarray(mask)
        except Exception:  # noqa: BLE001 - anything numpy cannot read is a bad argument
            raise BrainsparseError(f"{name} of type {type(mask).__name__} is not an array") from None
        if arr.dtype == object:
            raise BrainsparseError(f"{name} is not a numeric array; allowed: a 2-D bool (out, in) mask")
        arr = arr != 0
    if arr.ndim != 2:
        raise BrainsparseError(f"{name} has shape {tuple(arr.shape)}; allowed: a 2-D (out, in) mask")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BrainsparseError(f"{name} has shape {tuple(arr.shape)}; allowed: at least one output and one input")
    return np.ascontiguousarray(arr, dtype=bool)


def _biadjacency(mask: Any):
    """The mask as a scipy CSR matrix (float64 ones), plus its transpose in CSR."""
    from scipy import sparse

    b = sparse.csr_matrix(_as_bool_array(mask), dtype=np.float64)
    return b, b.T.tocsr()


def _csr_row_sums(mat) -> np.ndarray:
    return np.asarray(mat.sum(axis=1)).ravel()


# ---------------------------------------------------------------------------
# degrees and power law
# ---------------------------------------------------------------------------


def degree_distribution(mask: Any) -> dict[str, np.ndarray]:
    """Degrees of a layer's neurons and their histograms.

    Returns a dict of int64 numpy arrays:

    - ``output_degrees`` (length ``out``): each output neuron's fan-in (row sums of the mask);
    - ``input_degrees`` (length ``in``): each input neuron's fan-out (column sums);
    - ``output_histogram`` / ``input_histogram``: ``h[k]`` = number of output / input neurons
      with degree ``k`` (``np.bincount``, index 0 counts the isolated ones);
    - ``histogram``: the same over all ``out + in`` nodes.
    """
    m = _as_bool_array(mask)
    out_deg = m.sum(axis=1, dtype=np.int64)
    in_deg = m.sum(axis=0, dtype=np.int64)
    return {
        "output_degrees": out_deg,
        "input_degrees": in_deg,
        "output_histogram": np.bincount(out_deg),
        "input_histogram": np.bincount(in_deg),
        "histogram": np.bincount(np.concatenate([out_deg, in_deg])),
    }


def _as_degrees(degrees: Any) -> np.ndarray:
    if isinstance(degrees, torch.Tensor):
        degrees = degrees.detach().to("cpu").numpy()
    try:
        x = np.asarray(degrees, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise BrainsparseError(f"degrees must be a sequence of non-negative integers, got {degrees!r}") from None
    if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x != np.round(x)):
        raise BrainsparseError("degrees must be non-negative integers (finite, whole numbers)")
    return x


def _gamma_approx(n: int, sum_log_x: float, xmin: float) -> float:
    # [power law] CSN 2009 Eq. 3.7: γ ≈ 1 + n / Σ ln(x_i / (xmin − 1/2)), kept in GAMMA_RANGE
    gamma = 1.0 + n / (sum_log_x - n * math.log(xmin - 0.5))
    return min(max(gamma, GAMMA_RANGE[0]), GAMMA_RANGE[1])


def _gamma_exact(n: int, sum_log_x: float, xmin: float) -> float:
    # [power law] discrete MLE: maximise L(γ) = −n ln ζ(γ, xmin) − γ Σ ln x_i (CSN 2009 Eq. 3.5)
    from scipy.optimize import minimize_scalar
    from scipy.special import zeta

    def neg_log_likelihood(g: float) -> float:
        return n * math.log(zeta(g, xmin)) + g * sum_log_x

    res = minimize_scalar(neg_log_likelihood, bounds=GAMMA_RANGE, method="bounded", options={"xatol": 1e-6})
    # the bounded search never evaluates the end points themselves
    best = min((float(res.x), *GAMMA_RANGE), key=neg_log_likelihood)
    return best


def _ks_distance(values: np.ndarray, counts: np.ndarray, gamma: float) -> float:
    """Kolmogorov–Smirnov distance between the tail's empirical CDF and the discrete power law
    with exponent ``gamma`` and ``xmin = values[0]``, taken over every integer in
    [xmin, max]: the empirical CDF is flat between observed values and the model CDF increases,
    so the supremum is reached at an observed value or just before the next one."""
    from scipy.special import zeta

    xmin = values[0]
    emp = np.cumsum(counts) / counts.sum()  # F_n(v_i)
    z0 = zeta(gamma, xmin)
    if not (math.isfinite(z0) and z0 > 0):
        return math.inf
    model_at = 1.0 - zeta(gamma, values + 1.0) / z0  # F(v_i) = 1 − P(X ≥ v_i + 1)
    d = np.abs(emp - model_at).max()
    if len(values) > 1:
        model_before_next = 1.0 - zeta(gamma, values[1:]) / z0  # F(v_{i+1} − 1)
        d = max(d, np.abs(emp[:-1] - model_before_next).max())
    return float(d)


def power_law_exponent(
    degrees: Any, xmin: int | None = None, estimator: str = "exact"
) -> tuple[float, float]:
    """Exponent γ of a discrete power law ``p(k) ∝ k^−γ`` (k ≥ xmin) fitted to degrees
    [power law] (Clauset, Shalizi & Newman 2009, "CSN").

    Zeros are dropped (a power law lives on k ≥ 1). For a given ``xmin`` the exponent of the
    tail ``x_1 … x_n`` (the degrees ≥ xmin) is

    - ``estimator="exact"`` (default): the discrete maximum-likelihood estimate, maximising
      ``−n ln ζ(γ, xmin) − γ Σ ln x_i`` (Hurwitz ζ; CSN Eq. 3.5, what the papers' ``plfit``
      computes for integer data);
    - ``estimator="approx"``: the closed-form discrete approximation
      ``γ = 1 + n / Σ ln(x_i / (xmin − 0.5))`` (CSN Eq. 3.7). It is biased low when xmin is
      small (CSN: accurate for xmin ≳ 6); e.g. on 20 000 draws of a γ = 3 law with xmin = 1 it
      gives 2.84 where the exact estimate gives 3.00.

    Both are restricted to ``GAMMA_RANGE`` = [1.01, 10], the range the papers' ``plfit`` calls
    search (reference.md §8): γ = 10 means the degrees have no heavy tail (e.g. a uniform
    random layer, whose degrees are binomial).

    With ``xmin=None`` every observed degree value except the largest is tried as ``xmin`` and
    the one whose fit has the smallest Kolmogorov–Smirnov distance to the tail is kept (CSN
    §3.3; no finite-size correction, no p-value). Returns ``(gamma, xmin)`` as floats;
    ``(nan, nan)`` when the data cannot be fitted: fewer than two distinct positive degrees
    (all equal, all zero, empty) or, with a given ``xmin``, fewer than two distinct values in
    the tail.
    """
    key = str(estimator).lower()
    if key not in _POWER_LAW_ESTIMATORS:
        raise BrainsparseError(f"unknown estimator {estimator!r}; allowed: {', '.join(_POWER_LAW_ESTIMATORS)}")
    fit = _gamma_approx if key == "approx" else _gamma_exact
    x = np.sort(_as_degrees(degrees))
    x = x[x >= 1]
    nan = (math.nan, math.nan)
    if xmin is not None:
        try:
            ok = not isinstance(xmin, bool) and float(xmin).is_integer() and xmin >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BrainsparseError(f"xmin {xmin!r} is invalid; allowed: an integer >= 1 or None")
        tail = x[x >= xmin]
        if np.unique(tail).size < 2:
            return nan
        return fit(tail.size, float(np.log(tail).sum()), float(xmin)), float(xmin)

    values, first, counts = np.unique(x, return_index=True, return_counts=True)
    if values.size < 2:
        return nan
    # suffix sums of ln x over the sorted data: Σ ln x over the tail starting at each value
    log_suffix = np.cumsum(np.log(x)[::-1])[::-1]
    best = (math.inf, math.nan, math.nan)
    for i in range(values.size - 1):
        n = x.size - first[i]
        gamma = fit(int(n), float(log_suffix[first[i]]), float(values[i]))
        d = _ks_distance(values[i:], counts[i:], gamma)
        if d < best[0]:
            best = (d, gamma, float(values[i]))
    return best[1], best[2]


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
    import networkx as nx

    m = _as_bool_array(mask)
    rows, cols = np.nonzero(m)
    g = nx.Graph()
    g.add_edges_from(zip(rows.tolist(), (cols + m.shape[0]).tolist()))
    return g


def _louvain(mask: Any, seed: int | None) -> tuple[float, int]:
    import networkx as nx

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
    from scipy.sparse import csgraph

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
        from scipy import sparse

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
