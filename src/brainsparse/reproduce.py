"""``brainsparse reproduce RECIPE``: every method × seed of a recipe, then a report beside the paper.

The runs land in ``OUT/<method>-s<seed>/`` (finished runs are reused, interrupted ones resumed,
as ``compare`` does); the report is ``OUT/report.md`` (our mean ± sd beside the paper's number
and the changes relative to dense), ``OUT/report.json`` and ``OUT/report.png`` (the evaluation
curves and the final scores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ._validation import check_unit_interval  # noqa: E402
from .compare import run_grid, summarize_runs  # noqa: E402
from .errors import BrainsparseError  # noqa: E402
from .recipes import Recipe, load_recipe  # noqa: E402
from .report.plots import save_figure  # noqa: E402
from .train import task_entry  # noqa: E402
from .train.checkpoint import write_json, write_text  # noqa: E402

#: how each task's score reads in the report
SCORE_UNITS = {"classification": "test accuracy (fraction)", "translation": "test BLEU", "lm": "test perplexity"}


def plan_runs(
    recipe: Recipe,
    methods: Sequence[str],
    seeds: Sequence[int],
    sparsity: float,
    budget: int | None = None,
    profile: str | None = None,
    **settings: Any,
) -> list[tuple[str, int, Any]]:
    """(label, seed, config) of every run: the recipe's task settings (its ``profile``'s), the
    density ``1 − sparsity``, ``budget`` epochs or steps, ``settings`` (``data_dir``, ``kernel``,
    ``device``, ...) and, per method or variant, the recipe's overrides of the preset."""
    config_cls, _ = task_entry(recipe.task)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    base = {**recipe.task_settings(profile), **{k: v for k, v in settings.items() if v is not None}}
    if budget is not None:
        base[recipe.budget] = budget
    base["density"] = round(1.0 - sparsity, 12)
    unknown = sorted(set(base) - fields)
    if unknown:
        raise BrainsparseError(f"recipe {recipe.name!r} sets {unknown[0]!r}, which task {recipe.task!r} does not have")
    plan = []
    for label in methods:
        method, options = recipe.method_and_options(label)
        plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
        for seed in seeds:
            config = config_cls(**base, method=method, seed=seed, recipe=recipe.name, method_options=plain)
            plan.append((label, seed, config))
    return plan


def reproduce(
    recipe: str | Recipe,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    steps: int | None = None,
    sparsity: float | None = None,
    profile: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    report_only: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Run ``recipe`` (its methods, or ``methods``: presets or the recipe's named variants) for
    ``seeds`` at ``sparsity`` (default: the recipe's first) and write the report; returns
    ``report.json``'s content. ``epochs``/``steps`` shorten (or lengthen) the paper's budget.
    ``report_only`` trains nothing: the report covers the runs already finished (a long
    reproduction can be looked at while it runs)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    methods = [m.lower() for m in (methods or recipe.methods)]
    if not methods:
        raise BrainsparseError("no methods given; allowed: a comma-separated list such as " + ",".join(recipe.methods[:3]))
    for m in methods:
        recipe.method_and_options(m)  # unknown names fail before anything runs
    if len(set(methods)) != len(methods):
        raise BrainsparseError(f"methods {','.join(methods)} name one method twice; allowed: each method once")
    seeds = list(seeds)
    if not seeds:
        raise BrainsparseError("no seeds given; allowed: a comma-separated list of integers such as 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise BrainsparseError(f"seeds {','.join(map(str, seeds))} name one seed twice; allowed: distinct seeds")
    budget = _budget(recipe, epochs, steps)
    if sparsity is None:
        sparsity = recipe.sparsities[0]
    sparsity = check_unit_interval(sparsity, "sparsity")
    if not sparsity < 1.0:
        raise BrainsparseError(f"sparsity {sparsity!r} leaves no links; allowed: 0 <= sparsity < 1")
    plan = plan_runs(recipe, methods, seeds, sparsity, budget, profile, **settings)
    units = getattr(plan[0][2], recipe.budget)
    if out is None:
        out = Path("runs") / f"{recipe.name}-d{1 - sparsity:g}-{units}{recipe.budget}"
    out = Path(out)
    runs = run_grid(plan, out, progress, train_missing=not report_only)
    if not runs:
        raise BrainsparseError(f"no finished run of this reproduction in '{out}' yet; allowed: run it without --report-only")
    config_cls = type(plan[0][2])
    table = summarize_runs(runs, config_cls)
    report = _report(recipe, runs, table, config_cls, sparsity, units, seeds, profile)
    finished = {(label, r["seed"]) for label, items in runs.items() for r in items}
    report["missing"] = [f"{label}-s{seed}" for label, seed, _ in plan if (label, seed) not in finished]
    write_json(out / "report.json", report)
    write_text(out / "report.md", report_markdown(report))
    plot_report(report, runs, out / "report.png")
    return report


def _budget(recipe: Recipe, epochs: int | None, steps: int | None) -> int | None:
    given = {"epochs": epochs, "steps": steps}
    other = "steps" if recipe.budget == "epochs" else "epochs"
    if given[other] is not None:
        raise BrainsparseError(f"recipe {recipe.name!r} counts its budget in {recipe.budget}; --{other} does not apply")
    value = given[recipe.budget]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise BrainsparseError(f"{recipe.budget} {value!r} is invalid; allowed: an integer >= 1")
    return value


def _report(recipe: Recipe, runs: dict[str, list[dict[str, Any]]], table: dict[str, Any], cls: type,
            sparsity: float, units: int, seeds: list[int], profile: str | None) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for label, items in runs.items():
        row = table[label]
        methods[label] = {
            "final_mean": row["final_score"]["mean"],
            "final_sd": row["final_score"]["std"],
            "best_mean": row["best_score"]["mean"],
            "seeds": [
                {"seed": r["seed"], "final": r["summary"][cls.SCORE], "best": r["summary"][cls.BEST],
                 "folder": r["folder"], "status": r["status"]}
                for r in items
            ],
            "active_neuron_rate": row["anp"]["mean"],
            "wall_time_s": row["wall_time_s"]["mean"],
            "aae": row["aae"]["mean"],
            "vs_dense_pct": row.get("score_vs_dense_pct"),
            "paper": recipe.paper_score(label, sparsity),
        }
    return {
        "recipe": {**recipe.describe(), "sparsity": sparsity, "density": 1 - sparsity, recipe.budget: units,
                   "seeds": seeds, "profile": profile or recipe.profile},
        "score": cls.SCORE,
        "unit": SCORE_UNITS.get(recipe.task, cls.SCORE),
        "higher_is_better": cls.HIGHER_IS_BETTER,
        "methods": methods,
    }


def _fmt(value: float | None, task: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}" if task == "classification" else f"{value:.2f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: ours (mean ± sd over seeds) beside the paper's number."""
    r = report["recipe"]
    task = r["task"]
    unit = "test accuracy (%)" if task == "classification" else report["unit"]
    dense = report["methods"].get("dense")
    dense_paper = (dense or {}).get("paper")
    lines = [
        f"## {r['title']}",
        "",
        f"Recipe `{r['name']}`: sparsity {100 * r['sparsity']:g} % (density {r['density']:g}), "
        f"{r[r['budget']]} {r['budget']}, seeds {', '.join(map(str, r['seeds']))}"
        + (f", profile `{r['profile']}`" if r.get("profile") else "") + f". Score: {unit}, mean ± sd over seeds.",
        "",
        "| method | ours | best | Δ vs dense (ours) | paper | Δ vs dense (paper) | active neurons | wall time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["methods"].items():
        done = row.get("seeds", [])
        ours = _fmt(row["final_mean"], task)
        if len(done) != 1:  # one seed has no spread to show
            ours += f" ± {_fmt(row['final_sd'], task)}"
        if done and (len(done) == 1 or len(done) != len(r["seeds"])):  # which seeds, when not all asked for
            ours += f" (seed{'s' if len(done) > 1 else ''} {', '.join(str(x['seed']) for x in done)})"
        delta = "—" if row.get("vs_dense_pct") is None or name == "dense" else f"{row['vs_dense_pct']:+.2f} %"
        paper = row.get("paper")
        paper_txt = _fmt(paper["score"] / (100 if task == "classification" and paper["score"] > 1 else 1), task) if paper else "—"
        paper_delta = "—"
        if paper and dense_paper and name != "dense":
            paper_delta = f"{100 * (paper['score'] / dense_paper['score'] - 1):+.2f} %"
        lines.append(
            f"| {name} | {ours} | {_fmt(row['best_mean'], task)} | {delta} | {paper_txt} | {paper_delta} | "
            f"{row['active_neuron_rate']:.3f} | {row['wall_time_s']:.0f} s |"
        )
    sources = sorted({row["paper"]["source"] for row in report["methods"].values() if row.get("paper")})
    lines.append("")
    if report.get("missing"):
        lines.append("Not finished yet (left out of the means): " + ", ".join(report.get("missing", [])) + ".")
    if sources:
        lines.append("Paper numbers: " + "; ".join(sources) + ".")
    if r.get("paper_note"):
        lines.append(r["paper_note"])
    lines.append(f"Citation: {r['citation']}")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Left: each method's evaluation curve (mean over seeds); right: final scores, ours (mean ±
    sd, dots for seeds) and the paper's where it printed one."""
    task = report["recipe"]["task"]
    scale = 100.0 if task == "classification" else 1.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, items in runs.items():
        length = min(len(r["curve"]) for r in items)
        if length:
            mean = [sum(r["curve"][i] for r in items) / len(items) * scale for i in range(length)]
            left.plot(range(1, length + 1), mean, marker="o", markersize=3, label=name)
    left.set_xlabel("epoch" if task == "classification" else "evaluation")
    left.set_ylabel(report["unit"].replace("(fraction)", "(%)") if scale == 100 else report["unit"])
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    names = list(report["methods"])
    for i, name in enumerate(names):
        row = report["methods"][name]
        right.errorbar(i, row["final_mean"] * scale, yerr=row["final_sd"] * scale, fmt="o", color="C0", capsize=4,
                       label="ours (mean ± sd)" if i == 0 else None)
        right.scatter([i] * len(row["seeds"]), [s["final"] * scale for s in row["seeds"]], s=8, color="C0", alpha=0.4)
        if row.get("paper"):
            score = row["paper"]["score"]
            right.scatter(i, score if scale == 1 or score > 1 else score * scale, marker="*", s=120, color="C3",
                          label="paper" if "paper" not in right.get_legend_handles_labels()[1] else None)
    right.set_xticks(range(len(names)), names, rotation=30, ha="right")
    right.set_ylabel("final " + left.get_ylabel())
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8)
    r = report["recipe"]
    fig.suptitle(f"{r['name']}: sparsity {100 * r['sparsity']:g} %, {r[r['budget']]} {r['budget']}")
    fig.tight_layout()
    return save_figure(fig, path)


def recipes_overview(seeds: int = 3) -> str:
    """One block per shipped recipe: task, data, what it runs and its expected wall time."""
    from .recipes import recipe_names

    blocks = []
    for name in recipe_names():
        r = load_recipe(name)
        settings = r.task_settings()
        units = settings.get(r.budget)
        full = r.expected_seconds(r.methods, seeds, units)
        per_unit = r.seconds_per_unit.get("default", 0.0)
        lines = [
            f"{name}: {r.title}",
            f"  task {r.task}, dataset {r.dataset}, {units} {r.budget}"
            + (f" (profile {r.profile}; profiles: {', '.join(r.profiles)})" if r.profiles else ""),
            f"  sparsities: {', '.join(f'{100 * s:g} %' for s in r.sparsities)}",
            f"  methods: {', '.join(r.methods)}" + (f"; variants: {', '.join(r.variants)}" if r.variants else ""),
            f"  expected wall time on 2 cores, all methods x {seeds} seeds: {_duration(full)}"
            f" (about {per_unit:g} s per {r.budget[:-1]} for a sparse method)",
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


__all__ = ["plan_runs", "plot_report", "recipes_overview", "report_markdown", "reproduce"]
