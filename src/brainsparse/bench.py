"""Benchmarks of the sparse execution path and the Cannistraci–Hebb scorers.

``brainsparse bench`` runs every part and writes ``bench.json`` plus ``bench.md`` (Markdown
tables). Timings are medians over repeats; every ratio compares numbers measured side by side in
the same process. Parts:

* ``layers``: forward + backward of one layer, dense ``nn.Linear`` vs dense-masked (the engine's
  dense path: weight·mask, gradient masked) vs sparse (:class:`SparseLinear`), per shape, batch
  and density;
* ``epoch``: one epoch of the paper MLP (784-1568-1568-1568-10, batch 32) at 1 % density with
  CHTs on each kernel, including its topology update, with the test accuracy after it;
* ``scoring``: CH3-L3 scoring time, exact (path enumeration) and matrix form: the default
  implementations (the compiled C++ scorers when the ``cpp`` backend is active: exact path
  enumeration and the fused sparse matrix form), the PyTorch ones beside them where affordable
  (exact ``method="sparse"``, matrix form with sparse CSR products), and dense matmuls;
* ``memory``: bytes of weights + optimizer state (SGD momentum, Adam moments) dense vs sparse;
* ``decay``: one epoch of the paper MLP at 1 % with ``kernel="auto"`` for CHTs and for the methods
  whose density changes during a run (CHTss, GraNet, MEST), timed once their schedule has reached
  the target density (the layers have moved to the sparse path), side by side; beside them CHTss
  kept on the dense-masked path (what ``auto`` did before it re-decided after updates).

Running some parts into a folder that already holds a ``bench.json`` of the same kind (full or
``quick``) keeps the other parts from it, listed under ``carried_over``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .kernels import SparseLinear, backend
from .scoring.cannistraci_hebb import ch_l3_exact, ch_l3_matrix, l3_path_count
from .topology import uniform
from .bench_report import markdown
from .train.checkpoint import write_json, write_text


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _layer_step(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> Callable[[], None]:
    """Forward + backward of one layer; with ``mask``, the dense-masked path of the engine."""
    weight = getattr(module, "weight", None)
    mask_f = mask.float() if mask is not None else None

    def run() -> None:
        module.zero_grad(set_to_none=True)
        if mask_f is not None:
            y = nn.functional.linear(x, weight * mask_f, module.bias)
        else:
            y = module(x)
        y.sum().backward()

    return run


def bench_layers(
    shapes: Sequence[tuple[int, int]] = ((1568, 784), (1568, 1568), (4096, 4096)),
    batches: Sequence[int] = (32, 256),
    densities: Sequence[float] = (1.0, 0.3, 0.1, 0.05, 0.01, 0.001),
    repeats: int = 20,
) -> list[dict[str, Any]]:
    """Forward + backward time of one layer for each kernel (seconds, median)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for out_f, in_f in shapes:
        dense = nn.Linear(in_f, out_f)
        for batch in batches:
            x = torch.randn(batch, in_f, requires_grad=True)
            reps = max(3, repeats // (4 if out_f * in_f > 4_000_000 else 1))
            t_dense = _median_time(_layer_step(dense, x), reps)
            for d in densities:
                mask = uniform(out_f, in_f, d, generator=g)
                t_masked = _median_time(_layer_step(dense, x, mask), reps)
                sparse = SparseLinear.from_linear(dense, mask)
                t_sparse = _median_time(_layer_step(sparse, x), reps)
                rows.append({
                    "shape": [out_f, in_f], "batch": batch, "density": d, "dense_s": t_dense,
                    "dense_masked_s": t_masked, "sparse_s": t_sparse,
                    "speedup_vs_masked": t_masked / t_sparse, "speedup_vs_dense": t_dense / t_sparse,
                })
    return rows


def bench_scoring(
    sizes: Sequence[int] = (784, 1568, 4096),
    densities: Sequence[float] = (0.01, 0.05, 0.1, 0.3),
    repeats: int = 3,
    max_paths: float = 2e9,
    max_dense_n: int = 4096,
    max_torch_paths: float = 1e9,
    max_torch_n: int = 1568,
) -> list[dict[str, Any]]:
    """CH3-L3 scoring time of an n×n layer: exact, matrix form with dense and sparse products.

    ``exact_s`` and ``matrix_sparse_s`` time the default implementations (compiled when the
    ``cpp`` backend is active); ``exact_torch_s`` and ``matrix_torch_s`` the PyTorch ones, where
    ``n <= max_torch_n`` and the layer has at most ``max_torch_paths`` L3 paths.
    """
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        for d in densities:
            mask = uniform(n, n, d, generator=g)
            paths = l3_path_count(mask)
            row: dict[str, Any] = {"n": n, "density": d, "l3_paths": paths}
            if paths <= max_paths:
                reps = 1 if paths > 2e8 else repeats
                row["exact_s"] = _median_time(lambda: ch_l3_exact(mask, "CH3"), reps, warmup=0 if reps == 1 else 1)
            else:
                row["exact_s"] = None  # skipped: cost grows with the number of L3 paths
            # the sparse route's work grows like the walks (≈ paths); one run where that is huge
            reps = 1 if paths > 1e11 else repeats
            row["matrix_sparse_s"] = _median_time(lambda: ch_l3_matrix(mask, "CH3", use_sparse=True), reps,
                                                  0 if reps == 1 else 1)
            if backend() == "cpp" and n <= max_torch_n and paths <= max_torch_paths:
                reps = 1 if paths > 2e8 else repeats
                row["exact_torch_s"] = _median_time(lambda: ch_l3_exact(mask, "CH3", backend="torch"), reps,
                                                    0 if reps == 1 else 1)
                row["matrix_torch_s"] = _median_time(
                    lambda: ch_l3_matrix(mask, "CH3", use_sparse=True, backend="torch"), repeats, 1)
            if n <= max_dense_n:
                row["matrix_dense_s"] = _median_time(lambda: ch_l3_matrix(mask, "CH3", use_sparse=False), max(1, repeats - 1), 1)
                row["matrix_speedup"] = row["matrix_dense_s"] / row["matrix_sparse_s"]
            rows.append(row)
    return rows


def bench_memory(shape: tuple[int, int] = (1568, 1568), density: float = 0.01) -> list[dict[str, Any]]:
    """Bytes of weight + optimizer state for one layer, dense vs sparse path."""
    from .engine import sparsify

    rows = []
    for opt_name in ("sgd", "adam"):
        sizes = {}
        for kernel in ("dense", "sparse"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(shape[1], shape[0]), nn.ReLU(), nn.Linear(shape[0], 10))
            opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt_name == "sgd"
                   else torch.optim.Adam(model.parameters(), lr=1e-3))
            engine = sparsify(model, opt, method="set", density=density, kernel=kernel, update_every=10**9,
                              total_steps=10**9)
            x = torch.randn(4, shape[1])
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
            layer = engine.layers["0"]
            param = layer.param
            state = sum(v.numel() * v.element_size() for v in opt.state[param].values() if torch.is_tensor(v) and v.dim())
            sizes[kernel] = param.numel() * param.element_size() + state
        rows.append({"optimizer": opt_name, "shape": list(shape), "density": density, "dense_bytes": sizes["dense"],
                     "sparse_bytes": sizes["sparse"], "ratio": sizes["sparse"] / sizes["dense"]})
    return rows


def bench_epoch(dataset: str = "mnist", data_dir: str | None = None, density: float = 0.01,
                train_subset: int | None = None, sparse_repeats: int = 3,
                hidden: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One epoch (+ its topology update and the evaluation) of the paper MLP per kernel, CHTs;
    ``train_s`` is the epoch without the evaluation (optimizer steps and the topology update).
    The sparse epoch, seconds long, runs ``sparse_repeats`` times (fresh runs): its row is the
    median run, ``epoch_s_all`` every run's time; the dense-masked one runs once."""
    import tempfile

    from .train import TrainConfig, train_classifier

    def first_epoch(kernel: str) -> dict[str, Any]:
        config = TrainConfig(dataset=dataset, data_dir=data_dir, method="chts", density=density, epochs=2,
                             seed=0, kernel=kernel, train_subset=train_subset,
                             **({} if hidden is None else {"hidden": list(hidden)}))
        with tempfile.TemporaryDirectory() as tmp:
            train_classifier(config, Path(tmp) / "run", progress=False, stop_after_epochs=1)
            metrics = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
        return {
            "kernel": kernel, "epoch_s": metrics["epoch_time_s"], "train_s": metrics.get("train_time_s"),
            "test_accuracy": metrics["test_accuracy"],
            "topology_update_s": metrics.get("update_time_s"), "links": {n: v["links"] for n, v in metrics["layers"].items()},
        }

    dense = first_epoch("dense")
    dense["epoch_s_all"] = [dense["epoch_s"]]
    runs = sorted((first_epoch("sparse") for _ in range(max(1, int(sparse_repeats)))), key=lambda r: r["epoch_s"])
    sparse = dict(runs[(len(runs) - 1) // 2])  # the median run (the lower middle one of an even count)
    sparse["epoch_s_all"] = [r["epoch_s"] for r in runs]
    sparse["speedup_vs_dense_masked"] = dense["epoch_s"] / sparse["epoch_s"]
    if sparse.get("topology_update_s") is not None:
        sparse["update_share_of_epoch"] = sparse["topology_update_s"] / sparse["epoch_s"]
    return [dense, sparse]


#: The methods of the ``decay`` part: CHTs (constant density, the reference) first.
DECAY_METHODS = ("chts", "chtss", "granet", "mest")


def _decay_window(engine: Any, steps_per_epoch: int, nominal_epochs: int) -> tuple[int, int]:
    """(advance step, window start) of the ``decay`` part: the window is epoch ``nominal_epochs - 1``
    (the last one with a topology update at its end); the advance step is the last update step at
    or before the window, whose update brings the density to the schedule's value there."""
    start = (nominal_epochs - 2) * steps_per_epoch
    every = engine.update_every
    advance = start - start % every
    while advance > every and not engine.is_update_step(advance):
        advance -= every
    return advance, start


def bench_decay(dataset: str = "mnist", data_dir: str | None = None, density: float = 0.01,
                methods: Sequence[str] = DECAY_METHODS, repeats: int = 3, masked_baseline: bool = True,
                hidden: Sequence[int] = (1568, 1568, 1568), batch_size: int = 32,
                train_subset: int | None = None, run_epochs: int = 2, nominal_epochs: int = 10,
                chunk: int = 25, seed: int = 0) -> list[dict[str, Any]]:
    """One epoch of training (forward, backward, SGD step, the engine's topology updates) of the
    paper MLP per method on ``kernel="auto"``, timed after the density schedule has finished.

    Each method runs with its preset and the topology-update cadence of a ``run_epochs``-epoch
    ``brainsparse train`` run (CHTs: once per epoch; CHTss, GraNet: a tenth of the decay window).
    Its engine is built for a ``nominal_epochs`` run and advanced to epoch ``nominal_epochs - 1``,
    which begins after every schedule has reached the target (``prune_end_fraction`` ≤ 0.8): one
    training step at the last update step before it runs the update that prunes to the scheduled
    density — and moves the layers to the sparse path. That epoch is timed, side by side: the
    methods' epochs advance together, ``chunk`` steps of each in turn, so that load from other
    jobs falls on all of them alike. ``repeats`` rounds with fresh engines; medians per method,
    and each median against the first method's (CHTs). With ``masked_baseline``, CHTss is also
    run with ``kernel="dense"`` in the first round (the dense-masked path it stayed on before
    ``auto`` re-decided after updates).
    """
    from .data import load_mnist_family, num_classes
    from .engine import sparsify
    from .methods import resolve_method
    from .models import MLP
    from .train.classification import default_update_every

    if nominal_epochs < 3:
        raise ValueError("nominal_epochs must be >= 3")
    train_x, train_y, _, _ = load_mnist_family(dataset, data_dir=data_dir, as_pixels=True)
    if train_subset is not None:
        train_x, train_y = train_x.rows(slice(None, train_subset)), train_y[:train_subset]
    n = train_x.shape[0]
    spe = -(-n // batch_size)
    layout = [train_x.shape[1], *hidden, num_classes(dataset)]

    def prepare(name: str, kernel: str, rep: int) -> dict[str, Any]:
        method = resolve_method(name)
        if method.density_schedule in ("sigmoid", "cubic", "linear") and \
                method.prune_end_fraction * nominal_epochs > nominal_epochs - 2:
            raise ValueError(f"{name}: its decay does not end before epoch {nominal_epochs - 1} of {nominal_epochs}")
        torch.manual_seed(seed)
        model = MLP(layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
        every = default_update_every(method, spe, run_epochs * spe)
        engine = sparsify(model, opt, method=method, density=density, update_every=every,
                          total_steps=nominal_epochs * spe, seed=seed, init_data=train_x.rows(slice(None, 10000)),
                          kernel=kernel,
                          batch_size=batch_size)

        def train_step(idx: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            loss.backward()
            opt.step()
            engine.step()

        gen = torch.Generator().manual_seed(seed * 1000 + rep)
        advance, start = _decay_window(engine, spe, nominal_epochs)
        engine.step_count = advance - 1
        train_step(torch.randperm(n, generator=gen)[:batch_size])  # the update that reaches the schedule
        engine.step_count = start
        return {"method": name, "kernel": kernel, "engine": engine, "step": train_step, "every": every,
                "order": torch.randperm(n, generator=gen), "updates_before": len(engine.history), "epoch_s": 0.0}

    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(repeats):
        live = [prepare(name, "auto", rep) for name in methods]
        if masked_baseline and rep == 0 and "chtss" in methods:
            live.append(prepare("chtss", "dense", rep))
        for a in range(0, spe, chunk):
            for run in live:
                order, train_step = run["order"], run["step"]
                t0 = time.perf_counter()
                for b in range(a, min(a + chunk, spe)):
                    train_step(order[b * batch_size:(b + 1) * batch_size])
                run["epoch_s"] += time.perf_counter() - t0
        for run in live:
            engine = run["engine"]
            window = engine.history[run["updates_before"]:]
            runs.setdefault((run["method"], run["kernel"]), []).append({
                "epoch_s": run["epoch_s"], "updates": len(window), "update_s": sum(r["time_s"] for r in window),
                "update_every": run["every"],
                "density": sum(l.links for l in engine.layers.values()) / sum(l.mask.numel() for l in engine.layers.values()),
                "sparse_layers": sum(l.sparse_kernel for l in engine.layers.values()), "layers": len(engine.layers),
            })
        del live
    rows = []
    for (name, kernel), got in runs.items():
        last = got[-1]
        rows.append({
            "method": name, "kernel": kernel, "epoch_s": statistics.median(r["epoch_s"] for r in got),
            "epoch_s_all": [r["epoch_s"] for r in got], "update_s": statistics.median(r["update_s"] for r in got),
            "updates": last["updates"], "update_every": last["update_every"], "density": last["density"],
            "sparse_layers": last["sparse_layers"], "layers": last["layers"], "steps": spe, "chunk": chunk,
        })
    ref = rows[0] if rows else None
    for r in rows:
        r["vs_" + ref["method"]] = r["epoch_s"] / ref["epoch_s"]
    return rows


#: The benchmark parts, in the order they run.
PARTS = ("layers", "scoring", "memory", "epoch", "decay", "peak", "peers", "models")


def run_benchmarks(out: str | Path, parts: Sequence[str] = PARTS,
                   quick: bool = False, data_dir: str | None = None, dataset: str = "mnist") -> dict[str, Any]:
    """Run the chosen parts and write ``bench.json`` and ``bench.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "sparse_backend": backend(),
                    "load_average_start": _load_average()},
        "quick": quick,
    }
    if "layers" in parts:
        result["layers"] = bench_layers(
            shapes=((1568, 784), (1568, 1568)) if quick else ((1568, 784), (1568, 1568), (4096, 4096)),
            densities=(1.0, 0.1, 0.01) if quick else (1.0, 0.3, 0.1, 0.05, 0.01, 0.001),
            repeats=5 if quick else 20,
        )
    if "scoring" in parts:
        result["scoring"] = bench_scoring(sizes=(784, 1568) if quick else (784, 1568, 4096),
                                          densities=(0.01, 0.05) if quick else (0.01, 0.05, 0.1, 0.3),
                                          repeats=2 if quick else 3)
    if "memory" in parts:
        result["memory"] = bench_memory()
    if "epoch" in parts:
        result["epoch"] = bench_epoch(dataset=dataset, data_dir=data_dir, train_subset=6000 if quick else None)
    if "decay" in parts:
        result["decay"] = bench_decay(dataset=dataset, data_dir=data_dir, train_subset=3000 if quick else None,
                                      repeats=1 if quick else 3, masked_baseline=not quick)
    if "peak" in parts:
        from .bench_peak import bench_peak_memory

        result["peak"] = bench_peak_memory(dataset=dataset, data_dir=data_dir, steps=100 if quick else 400,
                                           repeats=1 if quick else 3)
    if "peers" in parts:
        from .bench_peers import bench_peers

        result["peers"] = bench_peers(
            shapes=((1568, 784), (1568, 1568)) if quick else ((1568, 784), (1568, 1568), (4096, 4096)),
            repeats=5 if quick else 20)
    if "models" in parts:
        from .bench_models import CELLS, bench_models

        result["models"] = bench_models(cells=CELLS[::2] if quick else CELLS, repeats=3 if quick else 10)
    result["machine"]["load_average_end"] = _load_average()
    _carry_over(out / "bench.json", result, parts)
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", markdown(result))
    return result


def _load_average() -> float | None:
    """The 1-minute load average (other jobs sharing the cores inflate every timing)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _carry_over(path: Path, result: dict[str, Any], parts: Sequence[str]) -> None:
    """Keep the parts not run now from an earlier ``bench.json`` of the same kind (quick or full)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(previous, dict) or previous.get("quick") != result["quick"]:
        return
    kept = [p for p in PARTS if p not in parts and p in previous]
    for part in kept:
        result[part] = previous[part]
    if kept:
        result["carried_over"] = {"parts": kept, "machine": previous.get("machine")}
        if isinstance(previous.get("carried_over"), dict):  # parts that were carried over already
            result["carried_over"]["earlier"] = previous["carried_over"]


__all__ = ["PARTS", "run_benchmarks", "bench_layers", "bench_scoring", "bench_memory", "bench_epoch", "bench_decay",
           "markdown"]
