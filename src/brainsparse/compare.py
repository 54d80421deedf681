"""Methods × seeds on one task: run (or reuse) every run folder, then one table and one figure."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import BrainsparseError  # noqa: E402
from .metrics.training import area_across_epochs  # noqa: E402
from .methods import resolve_method  # noqa: E402
from .train import task_entry  # noqa: E402
from .report.plots import save_figure  # noqa: E402
from .train.checkpoint import read_json_file, read_jsonl_file, write_json, write_text  # noqa: E402
from .train.common import with_task_defaults  # noqa: E402

#: config fields that differ between the runs of one comparison (or do not change a run)
_RUN_KEYS_IGNORED = ("method", "seed", "data_dir", "recipe", "method_options")


def run_or_reuse(config: Any, folder: Path, progress: bool = True, train_missing: bool = True) -> tuple[str, dict[str, Any] | None]:
    """Train into ``folder`` unless it already holds this run: reuse it when finished, resume it
    when interrupted. ``config`` is any task's config (see :data:`brainsparse.train.TASKS`).
    Returns (what happened, summary); with ``train_missing=False`` nothing is trained and an
    unfinished run is ``("missing", None)``."""
    _, train = task_entry(config.task)
    config = with_task_defaults(config)
    config_file = folder / "config.json"
    if config_file.exists():
        # fields the stored run predates take their defaults; where the data lives may change
        stored = dataclasses.asdict(type(config).from_dict(read_json_file(config_file, "run config"), source=f"run config '{config_file}'"))
        wanted = dataclasses.asdict(config)
        if any(stored.get(k) != wanted.get(k) for k in set(stored) | set(wanted) if k != "data_dir"):
            raise BrainsparseError(
                f"run folder '{folder}' holds a run with other settings; choose another --out or delete it"
            )
        if (folder / "summary.json").exists():
            summary = read_json_file(folder / "summary.json", "run summary")
            if not isinstance(summary.get(type(config).SCORE), (int, float)) or isinstance(summary.get(type(config).SCORE), bool):
                raise BrainsparseError(f"run summary '{folder / 'summary.json'}' lacks a numeric {type(config).SCORE}; "
                                       "delete the file to have the run resumed, or delete the run folder")
            return "reused", summary
        if not train_missing:
            return "missing", None
        if (folder / "checkpoint.pt").exists():
            return "resumed", train(config, folder, resume=True, progress=progress)
        return "trained", train(config, folder, overwrite=True, progress=progress)
    if not train_missing:
        return "missing", None
    return "trained", train(config, folder, progress=progress)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _relative_pct(value: float, reference: float) -> float | None:
    """100 · (value / reference − 1); None when the reference is zero."""
    return 100 * (value / reference - 1) if reference else None


def _curves(folder: Path, key: str) -> list[float]:
    rows = read_jsonl_file(folder / "metrics.jsonl", "metrics file")
    return [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def compare(
    methods: Sequence[str],
    seeds: Sequence[int],
    base: Any,
    out: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``methods × seeds`` like ``base`` into ``out/<method>-s<seed>`` and summarise them.

    Writes ``compare.json``, ``compare.md`` (mean ± std of the task's final and best score — test
    accuracy, test BLEU or test perplexity —, its area across evaluations (AAE), active-neuron
    rate and wall time; changes relative to ``dense`` when it is in the list) and ``compare.png``
    (the validation/test curve, mean over seeds with a ±std band).
    """
    cls = type(base)
    if not methods:
        raise BrainsparseError("no methods given; allowed: a comma-separated list such as dense,set,chts")
    if not seeds:
        raise BrainsparseError("no seeds given; allowed: a comma-separated list of integers such as 0,1,2")
    for m in methods:
        resolve_method(m)  # unknown names fail before anything runs
    plan = [(method, seed, dataclasses.replace(base, method=method, seed=seed)) for method in methods for seed in seeds]
    out = Path(out)
    runs = run_grid(plan, out, progress)  # validates every run's config before writing anything
    table = summarize_runs(runs, cls)

    result = {
        "task": {k: v for k, v in dataclasses.asdict(base).items() if k not in _RUN_KEYS_IGNORED},
        "score": cls.SCORE,
        "curve": cls.CURVE,
        "curve_x": cls.CURVE_X,
        "higher_is_better": cls.HIGHER_IS_BETTER,
        "methods": list(methods),
        "seeds": list(seeds),
        "table": table,
        "runs": runs,
    }
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", markdown_table(result))
    plot_comparison(runs, out / "compare.png", title=f"{base.dataset}, density {base.density:g}",
                    ylabel=cls.CURVE.replace("_", " "), xlabel=cls.CURVE_X.replace("_", " "))
    return result


def run_grid(plan: Sequence[tuple[str, int, Any]], out: Path, progress: bool = True,
             train_missing: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Run (or reuse, or resume) every ``(label, seed, config)`` of ``plan`` into
    ``out/<label>-s<seed>``; every config is completed with the task's recipe choices and
    validated before anything is written. Returns label → one record per finished seed
    (``train_missing=False``: only the runs already finished, nothing is trained)."""
    resolved = []
    for label, seed, config in plan:
        config = with_task_defaults(config)
        config.validate()
        resolved.append((label, seed, config))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for label, seed, config in resolved:
        cls = type(config)
        folder = out / f"{label}-s{seed}"
        what, summary = run_or_reuse(config, folder, progress, train_missing)
        if summary is None:
            continue
        if progress:
            print(f"{what}: {folder} ({cls.SCORE} {summary[cls.SCORE]:.4f})")
        curve = _curves(folder, cls.CURVE)
        runs.setdefault(label, []).append(
            {"seed": seed, "folder": str(folder), "status": what, "summary": summary, "curve": curve,
             "aae": area_across_epochs(curve)}
        )
    return runs


def summarize_runs(runs: dict[str, list[dict[str, Any]]], cls: type) -> dict[str, Any]:
    """Per label: mean and std over seeds of the final and best score, AAE, ANP and wall time;
    with a ``dense`` label, every row's change of the final score and AAE relative to it."""
    table: dict[str, Any] = {}
    for method, items in runs.items():
        row = {}
        for key, values in (
            ("final_score", [r["summary"][cls.SCORE] for r in items]),
            ("best_score", [r["summary"][cls.BEST] for r in items]),
            ("aae", [r["aae"] for r in items]),
            ("anp", [r["summary"]["active_neuron_rate"] for r in items]),
            ("wall_time_s", [r["summary"]["wall_time_s"] for r in items]),
        ):
            mean, std = _mean_std(values)
            row[key] = {"mean": mean, "std": std}
        table[method] = row
    if "dense" in table:
        dense = table["dense"]
        for row in table.values():
            row["score_vs_dense_pct"] = _relative_pct(row["final_score"]["mean"], dense["final_score"]["mean"])
            row["aae_vs_dense_pct"] = _relative_pct(row["aae"]["mean"], dense["aae"]["mean"])
    return table


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    task = result["task"]
    length = f"{task['epochs']} epoch(s)" if "epochs" in task else f"{task.get('steps')} steps"
    score = result.get("score", "final_test_accuracy").replace("_", " ")
    lines = [
        f"Task {task.get('task', 'classification')}, dataset {task['dataset']}, density {task['density']:g}, {length}, "
        f"seeds {', '.join(map(str, result['seeds']))}; mean ± std over seeds. Score: {score}.",
        "",
        "| method | final score | best score | AAE | ANP | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in result["table"].items():
        def ms(key: str, digits: int = 4) -> str:
            return f"{row[key]['mean']:.{digits}f} ± {row[key]['std']:.{digits}f}"

        lines.append(
            f"| {method} | {ms('final_score')} | {ms('best_score')} | {ms('aae')} | {ms('anp', 3)} | "
            f"{row['wall_time_s']['mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(
    runs: dict[str, list[dict[str, Any]]], path: Path, title: str = "", ylabel: str = "test accuracy",
    xlabel: str = "epoch",
) -> Path:
    """Mean evaluation curve (test accuracy per epoch, BLEU or perplexity per evaluation) for
    every method, with a ±std band over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, items in runs.items():
        length = min(len(r["curve"]) for r in items)
        epochs = list(range(1, length + 1))
        columns = [[r["curve"][e] for r in items] for e in range(length)]
        mean = [statistics.fmean(c) for c in columns]
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
        ax.plot(epochs, mean, marker="o", label=method)
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel(xlabel if xlabel == "epoch" else f"evaluation ({xlabel})")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
