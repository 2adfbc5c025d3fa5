"""The tradeoff plot: AUROC, subgroup AUROC and subgroup gaps against ε (matplotlib, lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov.training.sweep.summary import group_order

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.training.sweep.results import SweepResult


def plot_tradeoff(result: SweepResult, path: Path) -> Path:
    """AUROC, each subgroup's AUROC and the gaps against ε (log scale), with intervals.

    Points are the mean over seeds, bars the seeds' bootstrap 95% intervals averaged, small
    dots the single seeds; the non-private reference is a horizontal line (its interval a band).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.summary if r["epsilon"] is not None]
    ref = next((r for r in result.summary if r["epsilon"] is None), None)
    attributes = list(dict.fromkeys(s["attribute"] for s in result.summary[0]["subgroups"]))
    panels = 2 + len(attributes)
    ncols = 2
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(6.0 * ncols, 4.3 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [grid[i // ncols][i % ncols] for i in range(nrows * ncols)]
    for spare in axes[panels:]:
        spare.set_visible(False)
    axes = axes[:panels]
    xs = [r["epsilon"] for r in rows]
    colors = [f"C{i}" for i in range(10)]

    def errorbar(ax: Any, ivs: list[dict[str, Any]], color: str, label: str, shift: float) -> None:
        """Means joined by a line; each interval a vertical segment (it need not contain the
        mean: a gap's bootstrap interval is biased upward, and averaged bounds can miss it)."""
        x = [v * shift for v in xs]
        y = [iv["mean"] if iv["mean"] is not None else math.nan for iv in ivs]
        ax.plot(x, y, marker="o", color=color, label=label)
        for xi, iv in zip(x, ivs, strict=True):
            if iv["lo"] is not None and iv["hi"] is not None:
                ax.vlines(xi, iv["lo"], iv["hi"], color=color, linewidth=1.2)
                ax.plot([xi, xi], [iv["lo"], iv["hi"]], "_", color=color, markersize=6)

    def reference_line(
        ax: Any, iv: dict[str, Any] | None, color: str, label: str | None, band: bool
    ) -> None:
        if iv is None or iv["mean"] is None:
            return
        ax.axhline(iv["mean"], color=color, linestyle="--", linewidth=1, label=label)
        if band and iv["lo"] is not None and iv["hi"] is not None:
            ax.axhspan(iv["lo"], iv["hi"], color=color, alpha=0.08)

    def style(ax: Any, title: str, ylabel: str) -> None:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"ε per trial (δ = {result.plan.delta:g})")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")

    # 1. utility
    ax = axes[0]
    errorbar(ax, [r["auroc"] for r in rows], "C0", "DP (mean of seeds)", 1.0)
    for t in result.trials:
        ax.plot(t.trial.epsilon, t.evaluation.auroc, ".", color="C0", alpha=0.35)
    reference_line(ax, ref["auroc"] if ref else None, "k", "non-private reference", True)
    style(ax, "Utility (test AUROC)", "AUROC")

    # 2. subgroups, one panel per sensitive attribute
    for k, attribute in enumerate(attributes, start=1):
        ax = axes[k]
        groups = sorted(
            (s["group"] for s in rows[0]["subgroups"] if s["attribute"] == attribute),
            key=group_order,
        )
        for j, g in enumerate(groups):
            color = colors[j % len(colors)]
            ivs = [
                next(
                    s["auroc"]
                    for s in r["subgroups"]
                    if s["attribute"] == attribute and s["group"] == g
                )
                for r in rows
            ]
            shift = 1.0 + 0.03 * (j - (len(groups) - 1) / 2)
            errorbar(ax, ivs, color, f"{g}", shift)
            if ref is not None:
                rs = next(
                    s for s in ref["subgroups"] if s["attribute"] == attribute and s["group"] == g
                )
                reference_line(ax, rs["auroc"], color, None, False)
        style(ax, f"Subgroup AUROC by {attribute} (dashed: reference)", "AUROC")

    # 3. gaps
    ax = axes[-1]
    gap_keys = [(g["attribute"], g["metric"]) for g in rows[0]["gaps"]]
    for j, (attribute, metric) in enumerate(gap_keys):
        color = colors[j % len(colors)]
        ivs = [
            next(
                g["gap"] for g in r["gaps"] if (g["attribute"], g["metric"]) == (attribute, metric)
            )
            for r in rows
        ]
        shift = 1.0 + 0.03 * (j - (len(gap_keys) - 1) / 2)
        errorbar(ax, ivs, color, f"{attribute} {metric.upper()} gap", shift)
        if ref is not None:
            rg = next(
                g for g in ref["gaps"] if (g["attribute"], g["metric"]) == (attribute, metric)
            )
            ax.axhline(rg["gap"]["mean"], color=color, linestyle="--", linewidth=1)
    style(ax, "Subgroup gaps (max − min; dashed: reference)", "gap")

    fig.suptitle(
        f"Privacy–utility–fairness tradeoff: {result.plan.dataset}, "
        f"{len(result.plan.seeds)} seed(s) per ε, sweep {result.sweep_id}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
