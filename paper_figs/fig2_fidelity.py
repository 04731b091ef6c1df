"""Figure 2 — ranking fidelity: how well each estimator ranks the scored batch as Exact does, per model.

Input: ``fidelity.csv`` (fidelity suite): model, seed, step, estimator, target, spearman (and other metrics;
``metric=`` picks another column, e.g. kendall). Only the rows with ``target == "exact"`` (``target=`` picks
another, e.g. counterfactual) are drawn.

Per (model, estimator, seed) the metric is averaged over the scored steps; the figure shows, over seeds:

(top row, one panel per model) the absolute value (mean over seeds, 95 % t interval over seeds), with the
project's bar ``BAR`` = 0.9 as a dashed line;
(bottom row) the PAIRED difference estimator − LAI (``reference=``) at the same seed: mean over seeds of the
per-seed difference with its 95 % t interval, and a line at 0. The axis is zoomed to the approximate influence
estimators (registered ``influence`` and not equal to Exact); marks of the others (Ghost = Exact, the rankings
loss / EL2N / gradient norm) that fall beyond are cut at the edge with their value written.

Every estimator (from the registry, ``validation.settings.estimators``) has its own colour and marker
(``style.estimator_style``) and its own row, labelled on the y axis.

Plotted data (CSV): panel (abs | diff), model, target, estimator, mean, low, high (95 % t interval over seeds),
n_seeds, n_steps (scored steps per seed, most), clipped (1 when the mark sits at the axis edge).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from validation.report.stats import mean_ci
from validation.report.tables import Table
from validation.settings import estimators as chosen

from .plotdata import MissingResults, PlotData, panel_label
from .style import DOUBLE, GREY, SMALL_PT, estimator_style, model_style, new_figure, style

NAME = "fidelity"
MODEL_ORDER = ("mlp", "cnn1d", "cnn2d", "transformer")
COLUMNS = ["panel", "model", "target", "estimator", "mean", "low", "high", "n_seeds", "n_steps", "clipped"]
METRIC_LABELS = {"spearman": "Spearman ρ", "kendall": "Kendall τ", "topk_overlap": "top-k overlap",
                 "bottomk_overlap": "bottom-k overlap", "sign_agreement": "sign agreement"}
BAR = 0.9  # the project's fidelity bar (Spearman vs Exact)
REFERENCE = "lai"


def ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """``values`` with those in ``order`` first (in that order), the rest after in their own order."""
    return [v for v in order if v in values] + [v for v in values if v not in order]


def default_estimators() -> list[str]:
    """Everything the fidelity suite scores but Exact (the registry's entries, the research variants and the
    rankings EL2N / gradient norm, ``validation.settings.estimators.scored``), then the loss-only baseline."""
    return [n for n in chosen.scored(sequence=True) if n != "exact"] + ["loss"]


def zoomed(name: str) -> bool:
    """Whether the difference axis is fitted to ``name``: an approximate influence estimator (not equal to Exact,
    not a ranking without an influence sign, not the loss baseline)."""
    return name in chosen.influence_estimators(sequence=True) and not (
        name not in chosen.RESEARCH and chosen.is_exact(name))


def _per_seed(t: Table, metric: str) -> tuple[dict[Any, float], int]:
    """{seed: mean of ``metric`` over the scored steps} and the most steps any seed has."""
    out, steps = {}, 0
    for seed in t.unique("seed", sort=True):
        v = np.array([float(x) for x in t.where(seed=seed).values(metric) if x is not None], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[seed] = float(v.mean())
            steps = max(steps, int(v.size))
    return out, steps


def data(fidelity: Table, estimators: Sequence[str] | None = None, target: str = "exact",
         metric: str = "spearman", reference: str = REFERENCE) -> PlotData:
    """Absolute ``metric`` vs ``target`` and paired differences to ``reference`` per (model, estimator)."""
    estimators = default_estimators() if estimators is None else list(estimators)
    fidelity.require("model", "seed", "step", "estimator", "target", metric)
    t = fidelity.where(target=target, estimator=[e for e in estimators if e != target])
    if not len(t):
        raise MissingResults(f"fidelity has no rows for estimators {list(estimators)} vs {target}")
    models = ordered(t.unique("model"), MODEL_ORDER)
    present = t.unique("estimator")
    ests = [e for e in estimators if e in present and e != target]
    rows: list[dict[str, Any]] = []
    for model in models:
        tm = t.where(model=model)
        per = {e: _per_seed(tm.where(estimator=e), metric) for e in ests if len(tm.where(estimator=e))}
        ref = per.get(reference, ({}, 0))[0]
        for est, (seeds, steps) in per.items():
            e = mean_ci(list(seeds.values()))
            rows.append({"panel": "abs", "model": model, "target": target, "estimator": est, "mean": e.value,
                         "low": e.low, "high": e.high, "n_seeds": e.n, "n_steps": steps, "clipped": 0})
            common = sorted(set(seeds) & set(ref))
            if est == reference or not common:
                continue
            d = mean_ci([seeds[s] - ref[s] for s in common])
            rows.append({"panel": "diff", "model": model, "target": target, "estimator": est, "mean": d.value,
                         "low": d.low, "high": d.high, "n_seeds": d.n, "n_steps": steps, "clipped": 0})
    limits = {m: _diff_limits([r for r in rows if r["panel"] == "diff" and r["model"] == m]) for m in models}
    for r in rows:
        if r["panel"] == "diff":
            lo, hi = limits[r["model"]]
            inside = [lo <= v <= hi for v in (_ends(r) if not zoomed(r["estimator"]) else [r["mean"]])]
            r["clipped"] = int(not all(inside))
    return PlotData(COLUMNS, rows, {"metric": metric, "models": models, "target": target, "reference": reference,
                                    "estimators": ests, "limits": limits})


def _ends(r: dict[str, Any]) -> list[float]:
    return [v for v in (r["low"], r["high"], r["mean"]) if v is not None and math.isfinite(v)]


def _diff_limits(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """x range of a difference panel: 0 and the intervals of the zoomed estimators (all when none is), padded."""
    fit = [r for r in rows if zoomed(r["estimator"])] or rows
    vals = [0.0] + [v for r in fit for v in _ends(r)]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * ((hi - lo) or 0.1)
    return lo - pad, hi + pad


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    models, ests = pd.meta["models"], pd.meta["estimators"]
    metric = METRIC_LABELS.get(pd.meta["metric"], pd.meta["metric"])
    target = "Exact" if pd.meta["target"] == "exact" else pd.meta["target"]
    ref_label = estimator_style(pd.meta["reference"])[0]
    styles = {e: estimator_style(e, k) for k, e in enumerate(ests)}
    n = len(ests)
    with style():
        fig = new_figure(DOUBLE, 2 * (0.5 + 0.15 * n) + 1.0)
        axes = fig.subplots(2, len(models), squeeze=False, sharey=True)
        for j, model in enumerate(models):
            for i, panel in enumerate(("abs", "diff")):
                ax = axes[i, j]
                sub = t.where(panel=panel, model=model)
                if panel == "abs":
                    ax.axvline(BAR, color=GREY, lw=0.8, ls="--", zorder=0, label=f"bar {BAR:g}")
                    vals = [v for r in sub for v in _ends(r)] + [BAR]
                    lo, hi = min(vals), max(vals)
                    pad = 0.05 * ((hi - lo) or 0.1)
                    lim = (lo - pad, min(hi + pad, 1.02) if hi <= 1 else hi + pad)
                else:
                    ax.axvline(0.0, color=GREY, lw=0.8, zorder=0)
                    lim = pd.meta["limits"][model]
                    if pd.meta["reference"] in ests:  # written on the side of 0 with more room
                        right = lim[1] < 0.3 * (lim[1] - lim[0])  # 0 sits in the right 30 % of the axis
                        ax.text(0.0, ests.index(pd.meta["reference"]), "reference " if right else " reference",
                                va="center", ha="right" if right else "left", fontsize=SMALL_PT, color=GREY)
                ax.set_xlim(*lim)
                for r in sub:
                    label, colour, marker = styles[r["estimator"]]
                    y = ests.index(r["estimator"])
                    if r["clipped"]:
                        left = r["mean"] < lim[0]
                        ax.annotate(f"{'◂' if left else ''}{r['mean']:+.2f}{'' if left else '▸'}".replace("-", "−"),
                                    (lim[0] if left else lim[1], y), va="center", ha="left" if left else "right",
                                    fontsize=SMALL_PT, color=colour, gid=f"clipped:{r['estimator']}")
                        continue
                    lo_, hi_ = (r["low"], r["high"]) if math.isfinite(r["low"] or math.nan) else (r["mean"],) * 2
                    ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - lo_], [hi_ - r["mean"]]], color=colour,
                                marker=marker, ms=4, lw=0, elinewidth=1.0, capsize=1.8, label=label,
                                gid=f"{panel}:{r['estimator']}")
                ax.set_ylim(n - 0.5, -0.5)
                ax.set_yticks(range(n))
                ax.set_yticklabels([styles[e][0] for e in ests])
                ax.tick_params(axis="y", length=0)
                ax.grid(axis="y", color="0.92", lw=0.5)
                ax.set_axisbelow(True)
                if i == 0:
                    ax.set_title(model_style(model)[0])
                    ax.set_xlabel(f"{metric} vs {target}")
                else:
                    ax.set_xlabel(f"{metric.split()[-1]} − {metric.split()[-1]}({ref_label}), paired")
                panel_label(ax, i * len(models) + j)
        for lab, colour in zip(axes[0, 0].get_yticklabels(), [styles[e][1] for e in ests]):
            lab.set_color(colour)
        for lab, colour in zip(axes[1, 0].get_yticklabels(), [styles[e][1] for e in ests]):
            lab.set_color(colour)
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        seeds = sorted({int(v) for v in t.values("n_seeds") if v is not None})
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=min(len(handles), 5),
                   title=seeds_title(seeds, ref_label))
    return fig


def seeds_title(n_seeds: Sequence[int], reference: str = "LAI") -> str:
    """Legend title: what a mark and an interval are."""
    if not n_seeds or max(n_seeds) <= 1:
        return f"one seed: mean over scored steps (no interval); bottom: difference to {reference}"
    seeds = f"{n_seeds[-1]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    return (f"mean over the scored steps, then over {seeds} seeds with a 95 % t interval;\n"
            f"bottom row: paired difference to {reference} at the same seed (axis fitted to the approximate estimators)")


def figure(fidelity: Table, **kw: Any) -> Figure:
    """Figure 2 from a ``fidelity.csv`` table (keywords: estimators, target, metric, reference)."""
    return draw(data(fidelity, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "ordered", "BAR", "zoomed"]
