"""Peak memory of whole training runs, each in its own process (``brainsparse bench --parts peak``).

Every run trains the paper MLP (784-1568-1568-1568-10, batch 32, SGD with momentum) for a few
hundred steps with one topology update half-way and one evaluation of the test set, then
reports its process's peak resident memory (``getrusage``). ``plain-dense`` is the PyTorch run a
user would write without brainsparse: an ``nn.Sequential`` of ``nn.Linear`` layers, the images
converted to one float32 tensor up front; ``plain-dense-uint8`` is the same with the images kept
as uint8, as brainsparse's runs keep them. The sparse methods run at 1 % density with
``kernel="auto"`` and the task recipe's options, as ``brainsparse train`` does.
"""

from __future__ import annotations

import json
import os
import resource
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _child(run: str, dataset: str, data_dir: str | None, steps: int, density: float,
           hidden: Sequence[int] = (1568, 1568, 1568)) -> dict[str, Any]:
    """One run in this process; returns its figures."""
    from .data import load_mnist_family, num_classes

    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = load_mnist_family(dataset, data_dir=data_dir, as_pixels=run != "plain-dense")
    layout = [train_x.shape[1], *hidden, num_classes(dataset)]
    engine = None
    if run in PLAIN:
        layers: list[nn.Module] = []
        for a, b in zip(layout[:-1], layout[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    else:
        from .engine import sparsify
        from .models import MLP
        from .recipes import task_method_options

        _, options = task_method_options("classification", dataset, run)
        model = MLP(layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
        engine = sparsify(model, opt, method=run, density=density, update_every=max(1, steps // 2),
                          total_steps=steps * 10, seed=0, init_data=train_x.rows(slice(None, 10000)), kernel="auto", batch_size=32,
                          **{k: v for k, v in options.items() if k not in ("update_every",)})
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for b in range(steps):
        idx = order[b * 32 : (b + 1) * 32]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
        opt.step()
        if engine is not None:
            engine.step()
    with torch.no_grad():
        correct = sum(int((model(test_x[i : i + 1000]).argmax(1) == test_y[i : i + 1000]).sum())
                      for i in range(0, test_x.shape[0], 1000))
    return {"run": run, "steps": steps, "density": 1.0 if engine is None else density,
            "updates": 0 if engine is None else len(engine.history), "seconds": time.perf_counter() - start,
            "test_accuracy": correct / test_x.shape[0], "peak_rss_mib": _peak_rss_mib()}


def bench_peak_memory(dataset: str = "mnist", data_dir: str | None = None, runs: Sequence[str] = DEFAULT_RUNS,
                      steps: int = 400, density: float = 0.01, threads: int = 1,
                      hidden: Sequence[int] = (1568, 1568, 1568)) -> list[dict[str, Any]]:
    """Peak resident memory of each run in a fresh process; ratios against ``plain-dense``."""
    rows = []
    for run in runs:
        cmd = [sys.executable, "-m", "brainsparse.bench_peak", run, dataset, data_dir or "", str(steps), str(density),
               ",".join(map(str, hidden))]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"peak-memory run {run!r} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = next((r for r in rows if r["run"] == "plain-dense"), None)
    for r in rows:
        if ref is not None:
            r["vs_plain_dense"] = r["peak_rss_mib"] / ref["peak_rss_mib"]
    return rows


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The peak-memory table."""
    steps = rows[0]["steps"] if rows else "?"
    lines = ["### Peak memory of a training run (paper MLP, batch 32, each run in its own process)", "",
             f"{steps} steps with one topology update and one test evaluation; peak resident memory of the process "
             "(PyTorch itself included).", "",
             "| run | density | peak memory | vs plain dense | test accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("vs_plain_dense")
        lines.append(f"| {r['run']} | {r['density']:g} | {r['peak_rss_mib']:.0f} MiB | "
                     f"{'–' if ratio is None else f'{ratio:.2f}×'} | {r['test_accuracy']:.4f} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_, dataset_, data_dir_, steps_, density_, hidden_ = sys.argv[1:7]
    print(json.dumps(_child(run_, dataset_, data_dir_ or None, int(steps_), float(density_),
                            [int(h) for h in hidden_.split(",")])))
