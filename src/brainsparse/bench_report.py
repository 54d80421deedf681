"""The benchmark results of :mod:`brainsparse.bench` as Markdown tables (``bench.md``)."""

from __future__ import annotations

from typing import Any


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(result: dict[str, Any]) -> str:
    """The benchmark result as Markdown tables."""
    m = result["machine"]
    load = ""
    if m.get("load_average_start") is not None:
        load = f" 1-minute load average {m['load_average_start']} at the start, {m.get('load_average_end')} at the end."
    lines = [f"Machine: {m['platform']}, torch {m['torch']}, {m['threads']} threads, sparse backend `{m['sparse_backend']}`.{load}", ""]
    if result.get("carried_over"):
        lines += [f"Parts kept from an earlier run: {', '.join(result['carried_over']['parts'])}.", ""]
    if "layers" in result:
        lines += ["### One layer, forward + backward (median)", "",
                  "| shape (out×in) | batch | density | dense | dense-masked | sparse | sparse vs masked |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["layers"]:
            lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {r['batch']} | {r['density']:g} | {_fmt(r['dense_s'])} | "
                         f"{_fmt(r['dense_masked_s'])} | {_fmt(r['sparse_s'])} | {r['speedup_vs_masked']:.1f}× |")
        lines.append("")
    if "epoch" in result:
        lines += ["### Paper MLP, one epoch of CHTs at 1 % density (batch 32)", "",
                  "| kernel | epoch | training (steps + topology update) | topology update | test accuracy after the epoch |",
                  "|---|---|---|---|---|"]
        for r in result["epoch"]:
            lines.append(f"| {r['kernel']} | {_fmt(r['epoch_s'])} | {_fmt(r.get('train_s'))} | "
                         f"{_fmt(r.get('topology_update_s'))} | {r['test_accuracy']:.4f} |")
        sparse = result["epoch"][-1]
        runs = sparse.get("epoch_s_all") or [sparse["epoch_s"]]
        if len(runs) > 1:
            lines += ["", f"The sparse row is the median of {len(runs)} fresh runs ({', '.join(_fmt(t) for t in runs)}); "
                      "the dense-masked epoch ran once."]
        lines += ["", f"Sparse path: {sparse['speedup_vs_dense_masked']:.1f}× faster than dense-masked"
                  + (f"; topology update = {100 * sparse['update_share_of_epoch']:.1f} % of the epoch." if "update_share_of_epoch" in sparse else "."), ""]
    if "decay" in result:
        rows = result["decay"]
        ref = rows[0]["method"] if rows else "chts"
        lines += ["### Paper MLP, one epoch at 1 % once the density schedule has finished (batch 32, median)", "",
                  f"`kernel=\"auto\"`; {rows[0].get('steps', '?') if rows else '?'} training steps per epoch; topology "
                  "updates at the cadence of a 2-epoch run; the engine advanced to its last-but-one epoch of a 10-epoch "
                  "schedule before timing.", "",
                  f"| method | kernel | epoch | vs {ref} | updates in the epoch (time) | density | layers on the sparse path |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = r.get(f"vs_{ref}")
            lines.append(f"| {r['method']} | {r['kernel']} | {_fmt(r['epoch_s'])} | "
                         f"{'–' if ratio is None else f'{ratio:.2f}×'} | {r['updates']} ({_fmt(r['update_s'])}) | "
                         f"{100 * r['density']:.2f} % | {r['sparse_layers']} of {r['layers']} |")
        lines.append("")
    if "scoring" in result:
        lines += ["### CH3-L3 scoring of an n×n layer (median)", "",
                  f"Exact and sparse matrix form: the `{m['sparse_backend']}` backend's scorers; "
                  "in parentheses the PyTorch ones (exact `method=\"sparse\"`, CSR products) where timed.", "",
                  "| n | density | L3 paths | exact | matrix, sparse | matrix, dense products | matrix sparse vs dense |",
                  "|---|---|---|---|---|---|---|"]

        def cell(r: dict[str, Any], key: str, torch_key: str) -> str:
            torch_s = r.get(torch_key)
            return _fmt(r.get(key)) + (f" ({_fmt(torch_s)})" if torch_s is not None else "")

        for r in result["scoring"]:
            speed = f"{r['matrix_speedup']:.1f}×" if "matrix_speedup" in r else "–"
            lines.append(f"| {r['n']} | {r['density']:g} | {r['l3_paths']:.3g} | {cell(r, 'exact_s', 'exact_torch_s')} | "
                         f"{cell(r, 'matrix_sparse_s', 'matrix_torch_s')} | {_fmt(r.get('matrix_dense_s'))} | {speed} |")
        lines.append("")
    if "memory" in result:
        lines += ["### Weights + optimizer state of a 1568×1568 layer at 1 %", "",
                  "| optimizer | dense path | sparse path | ratio |", "|---|---|---|---|"]
        for r in result["memory"]:
            lines.append(f"| {r['optimizer']} | {r['dense_bytes'] / 2**20:.2f} MiB | {r['sparse_bytes'] / 2**20:.3f} MiB | "
                         f"{100 * r['ratio']:.2f} % |")
        lines.append("")
    if "peak" in result:
        from .bench_peak import markdown_rows

        lines += markdown_rows(result["peak"])
    if "peers" in result:
        from .bench_peers import markdown_rows as peer_rows

        lines += peer_rows(result["peers"])
    if "models" in result:
        from .bench_models import markdown_rows as model_rows

        lines += model_rows(result["models"])
    return "\n".join(lines)
