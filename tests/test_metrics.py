"""Training measures, layer-graph measures, topology plots and run analysis on known cases."""

from __future__ import annotations

import json
import math
import time

import networkx as nx
import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse import csgraph

from brainsparse.analysis import analyze_run, infer_chains_from_masks
from brainsparse.errors import BrainsparseError
from brainsparse.metrics import (
    active_neuron_rate,
    area_across_epochs,
    bipartite_clustering,
    characteristic_path_length,
    degree_distribution,
    itop_rate,
    layer_measures,
    modularity,
    overlap_rate,
    power_law_exponent,
    relative_to_dense,
    robins_alexander_clustering,
    square_clustering,
)
from brainsparse.percolation import active_hidden_neurons
from brainsparse.report.topology import downsample_mask, plot_adjacency, plot_degree_distributions
from brainsparse.topology import bipartite_scale_free, ring_lattice, uniform

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def random_mask(rng, out, inp, density):
    return torch.from_numpy(rng.random((out, inp)) < density)


def to_networkx(mask: torch.Tensor) -> nx.Graph:
    out, inp = mask.shape
    g = nx.Graph()
    g.add_nodes_from(range(out + inp))
    rows, cols = np.nonzero(mask.numpy())
    g.add_edges_from(zip(rows.tolist(), (cols + out).tolist()))
    return g


# ---------------------------------------------------------------------------
# training measures
# ---------------------------------------------------------------------------


def test_aae_is_the_mean_accuracy_over_epochs():
    acc = [0.2, 0.6, 0.7, 0.9]
    assert area_across_epochs(acc) == pytest.approx(0.6)
    # trapezoid over epochs 1..4 divided by 3: (0.1 + 0.6 + 0.7 + 0.45) / 3
    assert area_across_epochs(acc, rule="trapezoid") == pytest.approx(1.85 / 3)
    assert area_across_epochs([0.8]) == 0.8
    assert area_across_epochs([0.8], rule="trapezoid") == 0.8
    # a method that learns faster has the larger AAE at the same final accuracy
    assert area_across_epochs([0.9, 0.9, 0.9]) > area_across_epochs([0.1, 0.5, 0.9])


def test_aae_rejects_bad_input():
    with pytest.raises(BrainsparseError):
        area_across_epochs([])
    with pytest.raises(BrainsparseError):
        area_across_epochs([0.5, float("nan")])
    with pytest.raises(BrainsparseError, match="rule"):
        area_across_epochs([0.5], rule="simpson")


def test_relative_to_dense_is_a_percentage_change():
    assert relative_to_dense(0.9, 0.8) == pytest.approx(12.5)
    assert relative_to_dense(0.7, 0.8) == pytest.approx(-12.5)
    assert relative_to_dense(0.8, 0.8) == 0.0
    assert relative_to_dense(-3.0, -2.0) == pytest.approx(-50.0)
    with pytest.raises(BrainsparseError, match="dense_value is 0"):
        relative_to_dense(0.5, 0.0)


def test_active_neuron_rate_hand_worked():
    # layer A: 4 inputs -> 3 hidden; layer B: 3 hidden -> 2 outputs (feeding a dense layer)
    a = m([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    b = m([[1, 0, 1], [0, 0, 0]])
    # hidden 0: in and out -> active; 1: no outgoing; 2: no incoming; B outputs: row 0 only
    assert active_neuron_rate([[a, b]]) == pytest.approx(2 / 5)
    c = m([[1, 0], [0, 1], [1, 1], [0, 0]])  # a chain of its own: 3 of 4 outputs have links
    assert active_neuron_rate([[a, b], [c]]) == pytest.approx(5 / 9)
    assert active_neuron_rate([]) == 1.0


def test_active_neuron_rate_agrees_with_percolation_rule():
    rng = np.random.default_rng(3)
    chain = [random_mask(rng, 12, 10, 0.1), random_mask(rng, 9, 12, 0.1), random_mask(rng, 7, 9, 0.15)]
    expected = sum(int(x.sum()) for x in active_hidden_neurons(chain)) / (12 + 9 + 7)
    assert active_neuron_rate([chain]) == pytest.approx(expected)


def test_active_neuron_rate_rejects_a_flat_chain_and_mismatched_shapes():
    a, b = m([[1, 1]]), m([[1], [1]])
    with pytest.raises(BrainsparseError, match="list of"):
        active_neuron_rate([a, b])
    with pytest.raises(BrainsparseError, match="share neurons"):
        active_neuron_rate([[b, b]])


def test_overlap_rate():
    removed = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool).reshape(2, 3)
    regrown = torch.tensor([0, 1, 1, 1, 1, 0], dtype=torch.bool).reshape(2, 3)
    assert overlap_rate(removed, regrown) == pytest.approx(2 / 4)
    assert overlap_rate(removed, torch.zeros_like(regrown)) == 0.0
    assert overlap_rate(removed, removed) == 1.0
    with pytest.raises(BrainsparseError, match="shape"):
        overlap_rate(removed, regrown.reshape(3, 2))


def test_itop_rate():
    ever = m([[1, 0, 1, 0], [0, 0, 1, 0]])
    assert itop_rate(ever) == pytest.approx(3 / 8)
    assert itop_rate({"a": ever, "b": torch.ones(2, 2, dtype=torch.bool)}) == pytest.approx((3 / 8 + 1) / 2)
    assert itop_rate([ever]) == pytest.approx(3 / 8)
    with pytest.raises(BrainsparseError):
        itop_rate({})


# ---------------------------------------------------------------------------
# network measures on graphs with known values
# ---------------------------------------------------------------------------


def test_complete_bipartite_graph():
    out, inp = 3, 4
    k = torch.ones(out, inp, dtype=torch.bool)
    deg = degree_distribution(k)
    assert deg["output_degrees"].tolist() == [4, 4, 4]
    assert deg["input_degrees"].tolist() == [3, 3, 3, 3]
    assert deg["output_histogram"].tolist() == [0, 0, 0, 0, 3]
    assert deg["input_histogram"].tolist() == [0, 0, 0, 4]
    assert deg["histogram"].tolist() == [0, 0, 0, 4, 3]
    assert bipartite_clustering(k) == pytest.approx(1.0)
    assert robins_alexander_clustering(k) == pytest.approx(1.0)
    # ordered pairs: 2·3·4 = 24 across the sides at distance 1, 3·2 + 4·3 = 18 on a side at 2
    assert characteristic_path_length(k) == pytest.approx((24 * 1 + 18 * 2) / 42)
    assert modularity(k) <= 1e-12  # no partition of a complete bipartite graph beats Q = 0
    lm = layer_measures(k)
    assert (lm["N"], lm["E"], lm["density"], lm["average_degree"]) == (7, 12, 1.0, pytest.approx(24 / 7))
    assert lm["isolated_nodes"] == 0 and lm["components"] == 1 and lm["largest_component"] == 7
    assert math.isnan(lm["gamma_outputs"]) and math.isnan(lm["gamma_inputs"])


def test_star():
    star = torch.zeros(3, 5, dtype=torch.bool)
    star[0] = True  # one output linked to every input; two isolated outputs
    deg = degree_distribution(star)
    assert deg["output_degrees"].tolist() == [5, 0, 0]
    assert deg["input_degrees"].tolist() == [1] * 5
    # ordered pairs among the 6 linked nodes: 10 hub–leaf at 1, 20 leaf–leaf at 2
    assert characteristic_path_length(star) == pytest.approx((10 + 40) / 30)
    assert bipartite_clustering(star) == 0.0
    assert robins_alexander_clustering(star) == 0.0  # no path of length 3
    assert power_law_exponent(deg["output_degrees"]) == (pytest.approx(math.nan, nan_ok=True),) * 2
    assert all(math.isnan(v) for v in power_law_exponent(deg["input_degrees"]))
    lm = layer_measures(star)
    assert lm["isolated_nodes"] == 2 and lm["isolated_outputs"] == 2 and lm["isolated_inputs"] == 0
    assert lm["components"] == 1 and lm["largest_component"] == 6
    assert lm["path_length_sources"] == 6
    assert math.isnan(lm["gamma_outputs"]) and math.isnan(lm["gamma_inputs"])


def test_ring_lattice_is_a_cycle():
    # BSW with β = 0: 8 outputs, 8 inputs, 16 links; every node has degree 2 -> one 16-cycle
    ring = ring_lattice(8, 8, 0.25)
    deg = degree_distribution(ring)
    assert set(deg["output_degrees"].tolist()) == {2} and set(deg["input_degrees"].tolist()) == {2}
    # mean distance on a 16-cycle: (2·(1 + … + 7) + 8) / 15
    assert characteristic_path_length(ring) == pytest.approx(64 / 15)
    assert bipartite_clustering(ring) == 0.0  # no 4-cycle
    assert robins_alexander_clustering(ring) == 0.0
    assert modularity(ring) > 0.3  # a long cycle splits into arcs
    lm = layer_measures(ring)
    assert lm["components"] == 1 and math.isnan(lm["gamma_outputs"])


def test_ring_lattice_has_more_square_clustering_than_random():
    ring = ring_lattice(64, 64, 6 / 64)
    rng = np.random.default_rng(0)
    rand = random_mask(rng, 64, 64, 6 / 64)
    assert bipartite_clustering(ring) > 3 * bipartite_clustering(rand)
    assert characteristic_path_length(ring) > characteristic_path_length(rand)


def test_square_clustering_matches_networkx():
    rng = np.random.default_rng(7)
    for _ in range(6):
        out, inp = rng.integers(2, 25, size=2)
        mask = random_mask(rng, int(out), int(inp), rng.uniform(0.05, 0.6))
        g = to_networkx(mask)
        ref = nx.square_clustering(g)
        ours = square_clustering(mask)
        assert np.allclose(ours, [ref[v] for v in range(out + inp)])
        assert bipartite_clustering(mask) == pytest.approx(float(np.mean(list(ref.values()))))
        if g.number_of_edges():
            assert robins_alexander_clustering(mask) == pytest.approx(nx.bipartite.robins_alexander_clustering(g))


def test_path_length_matches_csgraph_including_disconnected_graphs():
    rng = np.random.default_rng(11)
    for density in (0.03, 0.08, 0.3):  # the sparse ones fall apart into several components
        mask = random_mask(rng, 30, 40, density)
        b = sparse.csr_matrix(mask.numpy().astype(float))
        adj = sparse.bmat([[None, b], [b.T, None]])
        dist = csgraph.shortest_path(adj, directed=False, unweighted=True)
        finite = np.isfinite(dist) & (dist > 0)
        assert characteristic_path_length(mask) == pytest.approx(dist[finite].mean())


def test_path_length_with_sampled_sources_is_close_and_seeded():
    rng = np.random.default_rng(5)
    mask = random_mask(rng, 200, 200, 0.03)
    exact = characteristic_path_length(mask)
    est = characteristic_path_length(mask, sources=100, seed=1)
    assert est == pytest.approx(exact, rel=0.03)
    assert est == characteristic_path_length(mask, sources=100, seed=1)
    lm = layer_measures(mask, path_sources=100)
    assert lm["path_length_sources"] == 100


def test_empty_layer():
    empty = torch.zeros(4, 5, dtype=torch.bool)
    lm = layer_measures(empty)
    assert lm["E"] == 0 and lm["isolated_nodes"] == 9 and lm["components"] == 0
    for key in ("characteristic_path_length", "modularity", "gamma_outputs"):
        assert math.isnan(lm[key])
    assert lm["clustering"] == 0.0 and lm["clustering_robins_alexander"] == 0.0


def test_modularity_is_seeded_and_finds_planted_blocks():
    # two dense diagonal blocks joined by one link: modularity close to 1/2
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[:10, :10] = True
    mask[10:, 10:] = True
    mask[0, 19] = True
    q = modularity(mask, seed=3)
    assert q == modularity(mask, seed=3)
    assert q == pytest.approx(0.5, abs=0.02)


def discrete_power_law(rng, gamma, n, kmax=100_000):
    k = np.arange(1, kmax + 1, dtype=np.float64)
    p = k**-gamma
    return rng.choice(k, size=n, p=p / p.sum())


def test_power_law_exponent_recovers_gamma():
    rng = np.random.default_rng(2024)
    sample = discrete_power_law(rng, 2.5, 20_000)
    gamma, xmin = power_law_exponent(sample)
    assert gamma == pytest.approx(2.5, abs=0.1)
    assert xmin >= 1
    gamma_approx, _ = power_law_exponent(sample, estimator="approx")
    assert gamma_approx == pytest.approx(2.5, abs=0.3)
    gamma_fixed, xmin_fixed = power_law_exponent(sample, xmin=1)
    assert xmin_fixed == 1.0 and gamma_fixed == pytest.approx(2.5, abs=0.1)
    # zeros (isolated neurons) are ignored
    assert power_law_exponent(np.concatenate([sample, np.zeros(500)]))[0] == pytest.approx(gamma)


def test_power_law_exponent_tells_scale_free_from_random_layers():
    gen = torch.Generator().manual_seed(0)
    bsf = degree_distribution(bipartite_scale_free(800, 800, 0.02, generator=gen))
    er = degree_distribution(uniform(800, 800, 0.02, generator=gen))
    gamma_bsf, _ = power_law_exponent(np.concatenate([bsf["output_degrees"], bsf["input_degrees"]]))
    assert 2.3 < gamma_bsf < 3.3  # BSF targets γ ≈ 2.76
    assert power_law_exponent(er["output_degrees"])[0] > 6  # binomial degrees: no heavy tail


def test_power_law_exponent_degenerate_inputs():
    for degrees in ([], [0, 0, 0], [4, 4, 4, 4], [0, 7, 7]):
        gamma, xmin = power_law_exponent(degrees)
        assert math.isnan(gamma) and math.isnan(xmin)
    assert all(math.isnan(v) for v in power_law_exponent([1, 2, 3, 9, 9], xmin=9))
    with pytest.raises(BrainsparseError):
        power_law_exponent([1, -2, 3])
    with pytest.raises(BrainsparseError):
        power_law_exponent([1.5, 2, 3])
    with pytest.raises(BrainsparseError, match="xmin"):
        power_law_exponent([1, 2, 3], xmin=0)
    with pytest.raises(BrainsparseError, match="estimator"):
        power_law_exponent([1, 2, 3], estimator="guess")


def test_measures_reject_bad_masks():
    with pytest.raises(BrainsparseError, match="2-D"):
        layer_measures(torch.ones(3, dtype=torch.bool))
    with pytest.raises(BrainsparseError, match="shape"):
        degree_distribution(torch.ones(0, 3, dtype=torch.bool))


@pytest.mark.slow
def test_layer_measures_on_a_paper_sized_layer_is_fast():
    mask = torch.rand(1568, 1568, generator=torch.Generator().manual_seed(0)) < 0.01
    start = time.perf_counter()
    lm = layer_measures(mask)
    assert time.perf_counter() - start < 20
    assert lm["path_length_sources"] == 3136 and lm["components"] == 1


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def test_downsample_mask_by_blocks():
    mask = m([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    image, br, bc = downsample_mask(mask, max_pixels=2)
    assert (br, bc) == (2, 2)
    assert image.tolist() == [[0.25, 0.0], [1.0, 0.5]]
    image, _, _ = downsample_mask(mask, max_pixels=2, reduce="max")
    assert image.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    image, br, bc = downsample_mask(torch.ones(5, 3, dtype=torch.bool), max_pixels=2)
    assert (br, bc, image.shape) == (3, 2, (2, 2))  # padded with empty cells
    assert image[1, 1] == pytest.approx(2 / 6)


def test_plots_write_png_files(tmp_path):
    big = torch.rand(1568, 784, generator=torch.Generator().manual_seed(0)) < 0.01
    small = ring_lattice(16, 16, 0.2)
    p = plot_adjacency(big, tmp_path / "adj.png", title="big")
    assert p.read_bytes()[:8] == PNG_MAGIC
    plot_adjacency(small, tmp_path / "sub" / "small.png")
    assert (tmp_path / "sub" / "small.png").read_bytes()[:8] == PNG_MAGIC
    plot_degree_distributions({"big": big, "small": small, "empty": torch.zeros(3, 3, dtype=torch.bool)},
                              tmp_path / "deg.png")
    assert (tmp_path / "deg.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(f.name for f in tmp_path.iterdir()) == ["adj.png", "deg.png", "sub"]  # no temp files left
    with pytest.raises(BrainsparseError, match="reduce"):
        plot_adjacency(big, tmp_path / "x.png", reduce="median")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------
# analyze_run
# ---------------------------------------------------------------------------


def make_run(folder, accuracies=(0.5, 0.7, 0.9)):
    rng = np.random.default_rng(0)
    masks = {
        "layers.0": random_mask(rng, 16, 20, 0.3),
        "layers.2": ring_lattice(12, 16, 0.25),
        "layers.4": random_mask(rng, 6, 12, 0.4),
    }
    ever = {n: mk | random_mask(rng, *mk.shape, 0.1) for n, mk in masks.items()}
    state = {
        "engine": {
            "masks": masks,
            "ever_active": ever,
            "last_update": {n: {"overlap": 0.25} for n in masks},
            "history": [],
        },
        "model": {"layers.6.weight": torch.zeros(3, 6)},  # a dense layer: not in the masks
        "epoch": len(accuracies),
    }
    folder.mkdir(parents=True)
    torch.save(state, folder / "checkpoint.pt")
    rows = [{"epoch": e + 1, "test_accuracy": a, "active_neuron_rate": 0.9, "itop": 0.5}
            for e, a in enumerate(accuracies)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps({"method": "chts", "dataset": "mnist", "density": 0.3}))
    return masks, ever


def test_analyze_run_writes_json_and_pngs(tmp_path):
    run = tmp_path / "run"
    masks, ever = make_run(run)
    result = analyze_run(run)
    out = run / "analysis"
    on_disk = json.loads((out / "topology.json").read_text())
    assert on_disk == result
    assert set(result["layers"]) == set(masks)
    assert result["chains"] == [["layers.0", "layers.2", "layers.4"]]
    assert result["aae"] == pytest.approx(0.7)
    assert result["final_test_accuracy"] == 0.9 and result["best_test_accuracy"] == 0.9
    assert result["active_neuron_rate"] == pytest.approx(active_neuron_rate([list(masks.values())]))
    assert result["itop"] == pytest.approx(itop_rate(ever))
    for name, mask in masks.items():
        layer = result["layers"][name]
        assert layer["E"] == int(mask.sum())
        assert layer["overlap"] == 0.25
        assert layer["itop"] == pytest.approx(itop_rate(ever[name]))
        assert layer["characteristic_path_length"] == pytest.approx(characteristic_path_length(mask))
        assert (out / f"adjacency_{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "degree_distributions.png").read_bytes()[:8] == PNG_MAGIC
    assert result["layers"]["layers.2"]["gamma_outputs"] is None  # nan written as null
    assert result["summary"]["aae"] == result["aae"]
    assert result["summary"]["layers"]["layers.0"]["E"] == int(masks["layers.0"].sum())
    json.loads((out / "topology.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_analyze_run_custom_out_dir_and_seed(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    a = analyze_run(run, out_dir=tmp_path / "elsewhere", seed=4)
    assert (tmp_path / "elsewhere" / "topology.json").is_file()
    assert not (run / "analysis").exists()
    b = analyze_run(str(run), out_dir=str(tmp_path / "again"), seed=4)
    assert [v["modularity"] for v in a["layers"].values()] == [v["modularity"] for v in b["layers"].values()]


def test_analyze_run_without_metrics_uses_checkpoint_history(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    (run / "metrics.jsonl").unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["history"] = [{"epoch": 1, "test_accuracy": 0.4}, {"epoch": 2, "test_accuracy": 0.6}]
    torch.save(state, run / "checkpoint.pt")
    assert analyze_run(run)["aae"] == pytest.approx(0.5)


def test_analyze_run_errors(tmp_path):
    with pytest.raises(BrainsparseError, match="does not exist"):
        analyze_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BrainsparseError, match="no checkpoint.pt") as info:
        analyze_run(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"model": {}}, bad / "checkpoint.pt")
    with pytest.raises(BrainsparseError, match="no layer masks"):
        analyze_run(bad)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BrainsparseError, match="cannot read checkpoint"):
        analyze_run(bad)
    run = tmp_path / "run"
    make_run(run)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_accuracy": 0.5}\n{oops\n')
    with pytest.raises(BrainsparseError, match="line 2"):
        analyze_run(run)


def test_infer_chains_from_masks():
    masks = {"a": torch.zeros(4, 3), "b": torch.zeros(5, 4), "c": torch.zeros(2, 7), "d": torch.zeros(3, 2)}
    assert infer_chains_from_masks(masks) == [["a", "b"], ["c", "d"]]
