"""Peak memory of whole training runs, each in its own process (``brainsparse bench --parts peak``).

Every run trains the paper MLP (784-1568-1568-1568-10, batch 32, SGD with momentum) for a few
hundred steps with topology updates half-way and at the end and one evaluation of the test set,
then reports its process's peak resident memory (``getrusage``) and the peak so far after each
phase (``/proc/self/status``). ``plain-dense`` is the PyTorch run a user would write without
brainsparse: an ``nn.Sequential`` of ``nn.Linear`` layers, the images
converted to one float32 tensor up front; ``plain-dense-uint8`` is the same with the images kept
as uint8, as brainsparse's runs keep them. The sparse methods run at 1 % density with
``kernel="auto"`` and the task recipe's options, as ``brainsparse train`` does.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

PLAIN = ("plain-dense", "plain-dense-uint8")
DEFAULT_RUNS = ("plain-dense", "plain-dense-uint8", "chts", "set", "rigl")


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` where ``/proc`` has it. (Linux keeps
    ``ru_maxrss`` across ``fork`` and ``exec``: a run started from a big process would report the
    parent's peak.)"""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (Linux), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _child(run: str, dataset: str, data_dir: str | None, steps: int, density: float,
           hidden: Sequence[int] = (1568, 1568, 1568)) -> dict[str, Any]:
    """One run in this process; returns its figures (``phases``: resident memory and the peak so
    far after each phase, where ``/proc`` has them)."""
    from .data import load_mnist_family, num_classes

    phases: dict[str, dict[str, float | None]] = {}

    def phase(name: str) -> None:
        phases[name] = {"rss_mib": _status_mib("VmRSS"), "peak_so_far_mib": _status_mib("VmHWM")}

    torch.manual_seed(0)
    phase("start")
    train_x, train_y, test_x, test_y = load_mnist_family(dataset, data_dir=data_dir, as_pixels=run != "plain-dense")
    phase("data")
    layout = [train_x.shape[1], *hidden, num_classes(dataset)]
    engine = None
    if run in PLAIN:
        layers: list[nn.Module] = []
        for a, b in zip(layout[:-1], layout[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
        phase("model")
    else:
        from .engine import sparsify
        from .models import MLP
        from .recipes import task_method_options

        _, options = task_method_options("classification", dataset, run)
        model = MLP(layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
        phase("model")
        engine = sparsify(model, opt, method=run, density=density, update_every=max(1, steps // 2),
                          total_steps=steps * 10, seed=0, init_data=train_x.rows(slice(None, 10000)), kernel="auto",
                          batch_size=32, **{k: v for k, v in options.items() if k not in ("update_every",)})
        phase("sparsify")
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for b in range(steps):
        idx = order[b * 32 : (b + 1) * 32]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
        opt.step()
        if engine is not None:
            engine.step()
    seconds = time.perf_counter() - start
    phase("training")
    with torch.no_grad():
        correct = sum(int((model(test_x[i : i + 1000]).argmax(1) == test_y[i : i + 1000]).sum())
                      for i in range(0, test_x.shape[0], 1000))
    phase("evaluation")
    return {"run": run, "steps": steps, "density": 1.0 if engine is None else density,
            "updates": 0 if engine is None else len(engine.history), "seconds": seconds,
            "test_accuracy": correct / test_x.shape[0], "peak_rss_mib": _peak_rss_mib(), "phases": phases}


def bench_peak_memory(dataset: str = "mnist", data_dir: str | None = None, runs: Sequence[str] = DEFAULT_RUNS,
                      steps: int = 400, density: float = 0.01, threads: int = 1,
                      hidden: Sequence[int] = (1568, 1568, 1568), repeats: int = 1) -> list[dict[str, Any]]:
    """Peak resident memory of each run in a fresh process, ``repeats`` times (rounds over all
    runs, interleaved); the median per run, with ratios against ``plain-dense`` and against the
    better of the plain dense runs (``vs_best_plain``)."""
    measured: dict[str, list[dict[str, Any]]] = {run: [] for run in runs}
    for _ in range(max(1, int(repeats))):
        for run in runs:
            cmd = [sys.executable, "-m", "brainsparse.bench_peak", run, dataset, data_dir or "", str(steps),
                   str(density), ",".join(map(str, hidden))]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"peak-memory run {run!r} failed:\n{proc.stderr[-2000:]}")
            measured[run].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for got in measured.values():
        median = statistics.median(r["peak_rss_mib"] for r in got)
        row = dict(min(got, key=lambda r: abs(r["peak_rss_mib"] - median)))  # the median run's details
        row["peak_rss_mib"] = median
        row["peak_rss_mib_all"] = [r["peak_rss_mib"] for r in got]
        row["seconds"] = statistics.median(r["seconds"] for r in got)
        rows.append(row)
    ref = next((r for r in rows if r["run"] == "plain-dense"), None)
    plain = [r["peak_rss_mib"] for r in rows if r["run"] in PLAIN]
    for r in rows:
        if ref is not None:
            r["vs_plain_dense"] = r["peak_rss_mib"] / ref["peak_rss_mib"]
        if plain:
            r["vs_best_plain"] = r["peak_rss_mib"] / min(plain)
    return rows


#: the phases ``_child`` records, in order, with the table's names for them
PHASES = (("data", "data loaded"), ("model", "model + optimizer"), ("sparsify", "sparsify"),
          ("training", "training"), ("evaluation", "evaluation"))


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The peak-memory table, and the peak so far after each phase of the run."""
    steps = rows[0]["steps"] if rows else "?"
    repeats = len(rows[0].get("peak_rss_mib_all", [0])) if rows else 1
    lines = ["### Peak memory of a training run (paper MLP, batch 32, each run in its own process)", "",
             f"{steps} steps with topology updates at the middle and the end and one test evaluation; peak resident "
             "memory of the process (PyTorch itself included)"
             + (f", median of {repeats} runs" if repeats > 1 else "") + ".", "",
             "| run | density | peak memory | vs plain dense | vs better plain dense | test accuracy |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratios = [r.get(k) for k in ("vs_plain_dense", "vs_best_plain")]
        lines.append(f"| {r['run']} | {r['density']:g} | {r['peak_rss_mib']:.0f} MiB | "
                     + " | ".join("–" if x is None else f"{x:.2f}×" for x in ratios)
                     + f" | {r['test_accuracy']:.4f} |")
    if any(r.get("phases") for r in rows):
        lines += ["", "Peak so far (MiB) after each phase (of the median run):", "",
                  "| run | " + " | ".join(name for _, name in PHASES) + " |", "|---|" + "---|" * len(PHASES)]
        for r in rows:
            ph = r.get("phases", {})
            lines.append(f"| {r['run']} | " + " | ".join(_mib(ph.get(key, {}).get("peak_so_far_mib")) if key in ph
                                                         else "–" for key, _ in PHASES) + " |")
    lines.append("")
    return lines


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_, dataset_, data_dir_, steps_, density_, hidden_ = sys.argv[1:7]
    print(json.dumps(_child(run_, dataset_, data_dir_ or None, int(steps_), float(density_),
                            [int(h) for h in hidden_.split(",")])))
