"""Per-layer timing beside the packaged CPU sparse-training kernels (``brainsparse bench --peers``).

Peers, timed in this process when installed (``pip install 'brainsparse[peers]'``):
``sparselab`` (``sparselab.SparseLinear``, padded CSR) and ``sparseprop`` (SparseProp's
``SparseLinear``). Each cell — layer shape, density, batch — times one forward + backward of
each implementation in turn, ``repeats`` rounds interleaved so machine load falls on all alike,
and reports medians and our speed-up over the better peer. Every layer stays alive until the
end (sparselab caches transposes by ``id()``).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

PEERS = ("sparselab", "sparseprop")


def installed_peers() -> list[str]:
    """The peers importable here."""
    return [p for p in PEERS if importlib.util.find_spec(p) is not None]


def _ours(linear: nn.Linear, mask: torch.Tensor) -> nn.Module:
    from .kernels import SparseLinear

    return SparseLinear.from_linear(linear, mask)


def _sparseprop(linear: nn.Linear, mask: torch.Tensor) -> nn.Module:
    from sparseprop.modules.linear import SparseLinear

    weight = (linear.weight.detach() * mask).contiguous()
    return SparseLinear(dense_weight=weight, bias=nn.Parameter(linear.bias.detach().clone()))


def _sparselab(linear: nn.Linear, mask: torch.Tensor) -> nn.Module:
    import sparselab

    density = float(mask.float().mean())
    return sparselab.SparseLinear(linear.in_features, linear.out_features, bias=True, sparsity=1.0 - density)


_BUILDERS: dict[str, Callable[[nn.Linear, torch.Tensor], nn.Module]] = {
    "brainsparse": _ours, "sparselab": _sparselab, "sparseprop": _sparseprop,
}


def _step(layer: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> float:
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    start = time.perf_counter()
    layer(x).backward(gy)
    return time.perf_counter() - start


def bench_peers(shapes: Sequence[tuple[int, int]] = ((1568, 784), (1568, 1568), (4096, 4096)),
                densities: Sequence[float] = (0.01, 0.05), batches: Sequence[int] = (32, 256),
                repeats: int = 20, peers: Sequence[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Median forward + backward time of one layer: brainsparse's sparse path beside each peer."""
    from .topology import uniform

    peers = installed_peers() if peers is None else list(peers)
    names = ["brainsparse", *peers]
    keep_alive: list[nn.Module] = []
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for out_f, in_f in shapes:
        for density in densities:
            torch.manual_seed(seed)
            linear = nn.Linear(in_f, out_f)
            mask = uniform(out_f, in_f, density, generator=gen)
            layers = {n: _BUILDERS[n](linear, mask) for n in names}
            keep_alive += layers.values()
            for batch in batches:
                x = torch.randn(batch, in_f, generator=gen).requires_grad_()
                gy = torch.randn(batch, out_f, generator=gen)
                times: dict[str, list[float]] = {n: [] for n in names}
                for n in names:  # warm-up (builds caches, transposes)
                    _step(layers[n], x, gy)
                for _ in range(repeats):
                    for n in names:
                        times[n].append(_step(layers[n], x, gy))
                row: dict[str, Any] = {"shape": [out_f, in_f], "density": density, "batch": batch,
                                       **{f"{n}_s": statistics.median(times[n]) for n in names}}
                if peers:
                    best = min(peers, key=lambda n: row[f"{n}_s"])
                    row["best_peer"] = best
                    row["speedup_vs_best_peer"] = row[f"{best}_s"] / row["brainsparse_s"]
                rows.append(row)
    return rows


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The peers table."""
    if not rows:
        return []
    peers = [k[:-2] for k in rows[0] if k.endswith("_s") and k not in ("brainsparse_s",)]
    lines = ["### One layer, forward + backward, beside the peers (median, same process)", "",
             "| shape (out×in) | density | batch | brainsparse | " + " | ".join(peers) + " | vs better peer |",
             "|---|---|---|---|" + "---|" * len(peers) + "---|"]
    for r in rows:
        cells = " | ".join(f"{r[f'{p}_s'] * 1e3:.3f} ms" for p in peers)
        ratio = f"{r['speedup_vs_best_peer']:.2f}× ({r['best_peer']})" if "best_peer" in r else "–"
        lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['density']:g} | {r['batch']} | "
                     f"{r['brainsparse_s'] * 1e3:.3f} ms | {cells} | {ratio} |")
    lines.append("")
    return lines
