"""Topological analysis of a finished (or interrupted) run folder: ``brainsparse analyze RUN``.

Reads the final masks from ``checkpoint.pt`` and the per-epoch metrics from ``metrics.jsonl``,
computes the network measures of every sparse layer (:func:`brainsparse.metrics.layer_measures`)
and the run-level measures ANP, AAE and ITOP (algorithms.md §8), and writes
``topology.json``, ``adjacency_<layer>.png`` and ``degree_distributions.png``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ._validation import check_seed
from .engine.state import checkpoint_masks
from .errors import BrainsparseError
from .metrics.network import degree_distribution, layer_measures
from .metrics.training import active_neuron_rate, area_across_epochs, itop_rate
from .percolation import active_hidden_neurons
from .report.topology import plot_adjacency, plot_degree_distributions
from .train.checkpoint import load_checkpoint, read_json_file, read_jsonl_file, write_json

__all__ = ["analyze_run", "infer_chains_from_masks"]


def _json_ready(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays and tensors converted, nan and ±inf → None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.ndarray, Tensor)):
        return _json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _file_stem(name: str) -> str:
    """A layer name made safe for a file name (``layers.0`` stays, other characters → ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "layer"


def infer_chains_from_masks(masks: Mapping[str, Tensor]) -> list[list[str]]:
    """Chains of layers in the given (module) order: a layer continues the current chain when
    its input width equals the previous layer's output width, and starts a new chain otherwise
    (the rule :func:`brainsparse.layers.infer_chains` applies to ``nn.Sequential`` models)."""
    chains: list[list[str]] = []
    previous: Tensor | None = None
    for name, mask in masks.items():
        if previous is not None and chains and previous.shape[0] == mask.shape[1]:
            chains[-1].append(name)
        else:
            chains.append([name])
        previous = mask
    return chains


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (bounded, UTF-8, strict JSON), or one clear error."""
    return read_jsonl_file(path, "metrics file")


def _load_masks(run_dir: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise BrainsparseError(
            f"run folder '{run_dir}' has no checkpoint.pt; analyze needs the layer masks a training run saves there"
        )
    try:  # weights only: loading never runs code from the file
        state = load_checkpoint(path)
    except BrainsparseError as exc:
        raise BrainsparseError(f"cannot read checkpoint: {exc}") from None
    engine = state.get("engine") if isinstance(state, dict) else None
    model = state.get("model") if isinstance(state, dict) else None
    found = checkpoint_masks(model if isinstance(model, dict) else {}, engine) if isinstance(engine, dict) else {}
    if not found and isinstance(engine, dict) and "sharded" in state:  # an FSDP run's checkpoint
        from .distributed.checkpoint import load_sharded_masks, resolve

        found = load_sharded_masks(resolve(state, run_dir)["sharded_path"])
    if not found:
        raise BrainsparseError(f"checkpoint '{path}' holds no layer masks (expected the model's weight_mask buffers "
                               "or link structure, or state['engine']['masks'])")
    masks: dict[str, Tensor] = {}
    for name, mask in found.items():
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.numel() == 0:
            raise BrainsparseError(f"checkpoint '{path}': mask of layer {name!r:.60} is not a non-empty 2-D tensor")
        masks[str(name)] = mask.detach().to("cpu").bool()
    return state, masks


def _chains(state: dict[str, Any], masks: dict[str, Tensor]) -> list[list[str]]:
    """Chains saved in the checkpoint if any (engine ``chains``), else inferred from shapes."""
    saved = state["engine"].get("chains", state.get("chains"))
    if isinstance(saved, Sequence) and saved and all(isinstance(c, Sequence) and not isinstance(c, str) for c in saved):
        chains = [[str(n) for n in c if str(n) in masks] for c in saved]
        chains = [c for c in chains if c]
        covered = {n for c in chains for n in c}
        chains += [[n] for n in masks if n not in covered]
        ok = all(masks[a].shape[0] == masks[b].shape[1] for c in chains for a, b in zip(c[:-1], c[1:]))
        if ok:
            return chains
    return infer_chains_from_masks(masks)


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Analyse the topology of a run folder and write the results into ``out_dir``.

    Loads the final masks from ``run_dir/checkpoint.pt`` (the model's ``weight_mask`` buffers or
    link structure, or ``state['engine']['masks']`` in older checkpoints; layers that were dense
    are not there and are skipped) and the per-epoch rows of
    ``run_dir/metrics.jsonl`` (or, if that file is missing, the ``history`` kept in the
    checkpoint). Computes per sparse layer :func:`brainsparse.metrics.layer_measures` (seeded
    with ``seed``), its active neurons, ITOP and last overlap rate and degree histograms; and for
    the run ANP (from the masks, chains as saved or inferred from the layer shapes), AAE over the
    test accuracies (mean rule), final/best test accuracy and ITOP (mean over layers of
    ``ever_active``, or the last logged value). Writes ``topology.json`` (atomically),
    ``adjacency_<layer>.png`` per layer and ``degree_distributions.png`` into ``out_dir``
    (default ``run_dir/analysis``) and returns the same dict as the JSON (undefined values as
    ``None``); its ``summary`` entry repeats the headline numbers (run measures and, per layer,
    links, density, isolated nodes, clustering, path length, modularity, γ) for printing.

    Raises :class:`BrainsparseError` if the folder or its checkpoint is missing or unreadable.
    """
    check_seed(seed)
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise BrainsparseError(f"run folder '{run_dir}' does not exist")
    if not run_dir.is_dir():
        raise BrainsparseError(f"run folder '{run_dir}' is not a folder")
    out = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    if out_dir is None and out.is_symlink():  # the default output stays inside the run folder
        raise BrainsparseError(f"'{out}' is a symbolic link; analyze writes only inside the run folder: "
                               "remove the link or pass --out")
    if out.exists() and not out.is_dir():
        raise BrainsparseError(f"output folder '{out}' exists and is not a folder")

    state, masks = _load_masks(run_dir)
    engine = state["engine"]
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        rows, rows_from = _read_metrics(metrics_path), str(metrics_path.name)
    elif isinstance(state.get("history"), list):
        rows, rows_from = [r for r in state["history"] if isinstance(r, dict)], "checkpoint.pt history"
    else:
        rows, rows_from = [], None
    config = None
    config_path = run_dir / "config.json"
    if config_path.exists():
        config = read_json_file(config_path, "run config")

    chains = _chains(state, masks)
    ever_active = engine.get("ever_active") if isinstance(engine.get("ever_active"), dict) else {}
    last_update = engine.get("last_update") if isinstance(engine.get("last_update"), dict) else {}

    layers: dict[str, Any] = {}
    active = {}
    for chain in chains:
        for name, alive in zip(chain, active_hidden_neurons([masks[n] for n in chain])):
            active[name] = int(alive.sum())
    for name, mask in masks.items():
        info = layer_measures(mask, seed=seed)
        deg = degree_distribution(mask)
        info["active_neurons"] = active[name]
        ea = ever_active.get(name)
        info["itop"] = itop_rate(ea) if isinstance(ea, Tensor) and ea.shape == mask.shape else None
        lu = last_update.get(name)
        info["overlap"] = lu.get("overlap") if isinstance(lu, dict) else None
        info["output_degree_histogram"] = deg["output_histogram"]
        info["input_degree_histogram"] = deg["input_histogram"]
        layers[name] = info

    accuracies = [r["test_accuracy"] for r in rows if isinstance(r.get("test_accuracy"), (int, float))]
    layer_itops = [v["itop"] for v in layers.values() if v["itop"] is not None]
    if layer_itops and len(layer_itops) == len(layers):
        itop = sum(layer_itops) / len(layer_itops)
    else:
        itop = rows[-1].get("itop") if rows else None
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "out_dir": str(out),
        "seed": seed,
        "config": config,
        "epochs": len(rows),
        "metrics_from": rows_from,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "aae": area_across_epochs(accuracies) if accuracies else None,
        "active_neuron_rate": active_neuron_rate([[masks[n] for n in c] for c in chains]) if masks else None,
        "active_neuron_rate_logged": rows[-1].get("active_neuron_rate") if rows else None,
        "itop": itop,
        "chains": chains,
        "layers": layers,
    }

    headline = ("E", "density", "isolated_nodes", "clustering", "characteristic_path_length", "modularity",
                "gamma_outputs", "gamma_inputs")
    result["summary"] = {
        key: result[key]
        for key in ("epochs", "final_test_accuracy", "best_test_accuracy", "aae", "active_neuron_rate", "itop")
    }
    result["summary"]["layers"] = {name: {k: info[k] for k in headline} for name, info in layers.items()}

    files: dict[str, Any] = {"topology": str(out / "topology.json"), "adjacency": {}, "degree_distributions": None}
    title = ""
    if isinstance(config, dict) and config.get("method"):
        title = f"{config.get('method')} on {config.get('dataset', '?')}, density {config.get('density', '?')}"
    used_stems: set[str] = set()
    for name, mask in masks.items():
        stem = _file_stem(name)
        while stem in used_stems:
            stem += "_"
        used_stems.add(stem)
        path = out / f"adjacency_{stem}.png"
        plot_adjacency(mask, path, title=f"{title} — {name}" if title else name)
        files["adjacency"][name] = str(path)
    if masks:
        path = out / "degree_distributions.png"
        plot_degree_distributions(masks, path, title=title)
        files["degree_distributions"] = str(path)
    result["files"] = files

    result = _json_ready(result)
    write_json(out / "topology.json", result)
    return result
