"""Figure 4 — LAI against Ghost (= Exact) scores of the scored batch at a few steps of training, noisy-label
samples marked. One row per model, one column per chosen step (default: first, middle and last scored step).

Input: ``scores.csv`` (fidelity suite): model, seed, step, sample, is_noisy, estimator, score — the rows of
estimators ``ghost`` and ``lai`` (``x_estimator``/``y_estimator`` choose others, e.g. lai-last).

Plotted data (CSV): model, seed, step, column (panel column index), sample, is_noisy, x (Ghost score, nats),
y (LAI score, nats).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from validation.report.tables import Table

from .fig2_fidelity import MODEL_ORDER, ordered
from .plotdata import MissingResults, PlotData, panel_label, spearman
from .style import (
    CLEAN_COLOR,
    CLEAN_MARKER,
    DOUBLE,
    GREY,
    NOISY_COLOR,
    NOISY_MARKER,
    SMALL_PT,
    estimator_style,
    model_style,
    new_figure,
    style,
)

NAME = "scatter"
COLUMNS = ["model", "seed", "step", "column", "sample", "is_noisy", "x", "y"]


def pick_steps(steps: Sequence[int], count: int) -> list[int]:
    """``count`` steps spread evenly over the sorted ``steps`` (first and last included)."""
    steps = sorted(steps)
    if len(steps) <= count:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in idx]


def data(scores: Table, models: Sequence[str] | None = None, n_steps: int = 3, seed: int | None = None,
         x_estimator: str = "ghost", y_estimator: str = "lai") -> PlotData:
    """Paired (x_estimator, y_estimator) scores per sample at ``n_steps`` steps of each model."""
    scores.require("model", "seed", "step", "sample", "is_noisy", "estimator", "score")
    t = scores.where(estimator=[x_estimator, y_estimator])
    have = ordered(t.unique("model"), MODEL_ORDER)
    models = [m for m in (models or have) if m in have]
    rows = []
    used = []
    for model in models:
        tm = t.where(model=model)
        s = seed if seed is not None else min(tm.unique("seed"))
        tm = tm.where(seed=s)
        if set(tm.unique("estimator")) != {x_estimator, y_estimator}:
            continue
        used.append(model)
        for col, step in enumerate(pick_steps(tm.unique("step"), n_steps)):
            at = tm.where(step=step)
            xs = {r["sample"]: r for r in at.where(estimator=x_estimator).rows}
            for r in at.where(estimator=y_estimator).rows:
                if r["sample"] in xs:
                    rows.append({"model": model, "seed": s, "step": step, "column": col, "sample": r["sample"],
                                 "is_noisy": int(r["is_noisy"] or 0), "x": xs[r["sample"]]["score"],
                                 "y": r["score"]})
    if not rows:
        raise MissingResults(f"scores.csv has no paired {x_estimator}/{y_estimator} scores")
    return PlotData(COLUMNS, rows, {"models": used, "x_estimator": x_estimator, "y_estimator": y_estimator,
                                    "n_columns": max(r["column"] for r in rows) + 1})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    models, n_cols = pd.meta["models"], pd.meta["n_columns"]
    x_label = estimator_style(pd.meta["x_estimator"])[0]
    y_label = estimator_style(pd.meta["y_estimator"])[0]
    with style():
        fig = new_figure(DOUBLE, 1.75 * len(models) + 0.35)
        axes = fig.subplots(len(models), n_cols, squeeze=False)
        for i, model in enumerate(models):
            for j in range(n_cols):
                ax = axes[i, j]
                sub = t.where(model=model, column=j)
                if not len(sub):
                    ax.set_axis_off()
                    continue
                x, y = sub.array("x"), sub.array("y")
                noisy = np.array(sub.values("is_noisy"), dtype=bool)
                xlim, ylim = _padded(x), _padded(y)
                both = [min(xlim[0], ylim[0]), max(xlim[1], ylim[1])]
                ax.plot(both, both, color=GREY, lw=0.8, ls="--", label="LAI = Ghost", zorder=0)
                ax.axhline(0, color=GREY, lw=0.4, ls=":", zorder=0)
                ax.axvline(0, color=GREY, lw=0.4, ls=":", zorder=0)
                if (~noisy).any():
                    ax.scatter(x[~noisy], y[~noisy], s=8, color=CLEAN_COLOR, marker=CLEAN_MARKER, alpha=0.7,
                               linewidths=0, label="clean label")
                if noisy.any():
                    ax.scatter(x[noisy], y[noisy], s=14, color=NOISY_COLOR, marker=NOISY_MARKER, linewidths=0.9,
                               label="noisy label")
                ax.set_xlim(*xlim)  # each axis fits its own scores: LAI and Ghost may differ in scale
                ax.set_ylim(*ylim)
                ax.ticklabel_format(style="sci", scilimits=(-2, 3), useMathText=True)
                ax.xaxis.get_offset_text().set_fontsize(SMALL_PT)
                ax.yaxis.get_offset_text().set_fontsize(SMALL_PT)
                step = sub.rows[0]["step"]
                ax.set_title(f"{model_style(model)[0]}, step {step}", loc="right")
                ax.text(0.03, 0.97, f"ρ = {spearman(x, y):.2f}", transform=ax.transAxes, ha="left", va="top")
                if i == len(models) - 1:
                    ax.set_xlabel(f"{x_label} score (nats)")
                if j == 0:
                    ax.set_ylabel(f"{y_label} score (nats)")
                panel_label(ax, i * n_cols + j)
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles),
                   markerscale=1.5)
    return fig


def _padded(v: np.ndarray, frac: float = 0.06) -> tuple[float, float]:
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = frac * (hi - lo) if hi > lo else (abs(hi) * 0.1 or 1.0)
    return lo - pad, hi + pad


def figure(scores: Table, **kw: Any) -> Figure:
    """Figure 4 from a ``scores.csv`` table (keywords: models, n_steps, seed, x_estimator, y_estimator)."""
    return draw(data(scores, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "pick_steps"]
