"""Figure 1 — influence is dynamic: per-sample score trajectories over training, and how far each sample's
rank moves between an early and a late scored step.

Input: ``scores.csv`` of a validation run (fidelity suite): model, seed, step, sample, is_noisy, estimator,
score — the same fixed scored batch at every scored step. One model (default: the first of mlp, cnn1d,
cnn2d, transformer present), one seed (default: the smallest), one estimator (default: exact).

(a) score vs training step, one line per tracked sample, noisy-label samples in vermillion;
(b) rank at the first scored step vs rank at the last (1 = most helpful), identity line, Spearman in the title.

Plotted data (CSV): model, seed, estimator, sample, is_noisy, step, score, rank (rank among the tracked
samples at that step; 1 = largest score).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from validation.report.tables import Table

from .plotdata import MissingResults, PlotData, panel_label, ranks_desc, spearman
from .style import (
    CLEAN_COLOR,
    CLEAN_MARKER,
    DOUBLE,
    GREY,
    NOISY_COLOR,
    NOISY_MARKER,
    estimator_style,
    model_style,
    new_figure,
    style,
)

NAME = "dynamics"
MODEL_PREFERENCE = ("mlp", "cnn1d", "cnn2d", "transformer")
ESTIMATOR_PREFERENCE = ("exact", "ghost", "lai")
COLUMNS = ["model", "seed", "estimator", "sample", "is_noisy", "step", "score", "rank"]


def _pick(available: Sequence[Any], wanted: Any, preference: Sequence[Any], what: str) -> Any:
    if wanted is not None:
        if wanted not in available:
            raise MissingResults(f"no {what} {wanted!r} in the results (have {list(available)})")
        return wanted
    for p in preference:
        if p in available:
            return p
    if not available:
        raise MissingResults(f"no {what} in the results")
    return available[0]


def data(scores: Table, model: str | None = None, estimator: str | None = None,
         seed: int | None = None) -> PlotData:
    """Trajectories of the tracked samples' scores of one (model, seed, estimator), with per-step ranks."""
    scores.require("model", "seed", "step", "sample", "is_noisy", "estimator", "score")
    model = _pick(scores.unique("model"), model, MODEL_PREFERENCE, "model")
    t = scores.where(model=model)
    estimator = _pick(t.unique("estimator"), estimator, ESTIMATOR_PREFERENCE, "estimator")
    t = t.where(estimator=estimator)
    seed = _pick(t.unique("seed", sort=True), seed, (), "seed")
    t = t.where(seed=seed)
    steps = t.unique("step", sort=True)
    if len(steps) < 2:
        raise MissingResults(f"{model}: scores at {len(steps)} scored step(s); the trajectory needs 2 or more")
    rows = []
    for step in steps:
        at = t.where(step=step)
        r = ranks_desc(at.array("score"))
        for row, rank in zip(at.rows, r):
            rows.append({"model": model, "seed": seed, "estimator": estimator, "sample": row["sample"],
                         "is_noisy": int(row["is_noisy"] or 0), "step": step, "score": row["score"],
                         "rank": float(rank)})
    rows.sort(key=lambda r: (r["sample"], r["step"]))
    return PlotData(COLUMNS, rows, {"model": model, "seed": seed, "estimator": estimator,
                                    "early": steps[0], "late": steps[-1], "n": len(t.where(step=steps[0]))})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    m = pd.meta
    est_label = estimator_style(m["estimator"])[0]
    model_label = model_style(m["model"])[0]
    with style():
        fig = new_figure(DOUBLE, 2.5)
        ax_t, ax_r = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1.0]})
        # (a) trajectories; clean first so the noisy lines are drawn on top
        samples = t.unique("sample")
        order = sorted(samples, key=lambda s: t.where(sample=s).rows[0]["is_noisy"])
        for s in order:
            ts = t.where(sample=s)
            noisy = bool(ts.rows[0]["is_noisy"])
            ax_t.plot(ts.array("step"), ts.array("score"), color=NOISY_COLOR if noisy else CLEAN_COLOR,
                      alpha=0.85 if noisy else 0.45, lw=0.8, marker=".", ms=2.5,
                      label="noisy label" if noisy else "clean label", gid=f"sample:{s}")
        ax_t.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_t.axhline(0.0, color=GREY, lw=0.6, ls=":", zorder=0)
        ax_t.set_xlabel("training step (SGD steps)")
        ax_t.set_ylabel(f"{est_label} influence\n(ref.-loss decrease, nats)")
        lt = _linthresh(t.array("score"))
        ax_t.set_yscale("symlog", linthresh=lt)
        ax_t.yaxis.set_major_locator(FixedLocator(symlog_ticks(t.array("score"), lt)))
        ax_t.yaxis.set_minor_locator(NullLocator())
        ax_t.set_title(f"{model_label}, seed {m['seed']}: {m['n']} tracked samples", loc="right")
        panel_label(ax_t, 0)
        # (b) rank early vs late
        early, late = t.where(step=m["early"]), t.where(step=m["late"])
        rank_late = {r["sample"]: r["rank"] for r in late.rows}
        x = np.array([r["rank"] for r in early.rows])
        y = np.array([rank_late[r["sample"]] for r in early.rows])
        noisy = np.array([bool(r["is_noisy"]) for r in early.rows], dtype=bool)
        n = len(x)
        ax_r.plot([1, n], [1, n], color=GREY, lw=0.8, ls="--", label="unchanged rank")
        if (~noisy).any():
            ax_r.scatter(x[~noisy], y[~noisy], s=9, color=CLEAN_COLOR, marker=CLEAN_MARKER, alpha=0.7,
                         label="clean label", linewidths=0)
        if noisy.any():
            ax_r.scatter(x[noisy], y[noisy], s=14, color=NOISY_COLOR, marker=NOISY_MARKER, label="noisy label",
                         linewidths=0.9)
        rho = spearman(x, y)
        ax_r.set_xlabel(f"rank at step {m['early']} (1 = most helpful)")
        ax_r.set_ylabel(f"rank at step {m['late']}")
        ax_r.set_title(f"Spearman ρ = {rho:.2f}", loc="right")
        ax_r.set_xlim(0, n + 1)
        ax_r.set_ylim(0, n + 1)
        ax_r.set_aspect("equal", adjustable="box")
        ax_r.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_r.yaxis.set_major_locator(MaxNLocator(integer=True))
        panel_label(ax_r, 1)
        handles: dict[str, Any] = {}
        for ax in (ax_r, ax_t):  # markers of (b) stand for both panels' colours
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles))
    return fig


def symlog_ticks(values: np.ndarray, linthresh: float, max_per_side: int = 3) -> list[float]:
    """Tick positions of the symlog axis: 0 and +-10^k for decades at least 3x the linear threshold (so no label
    sits in the squeezed linear band around 0), at most ``max_per_side`` per sign (every other decade when more)."""
    a = np.abs(values[np.isfinite(values)])
    top = float(a.max()) if a.size else 1.0
    lo = math.ceil(math.log10(3 * linthresh)) if linthresh > 0 else -3
    hi = math.floor(math.log10(top)) if top > 0 else lo
    decades = list(range(lo, hi + 1)) or [hi]
    while len(decades) > max_per_side:
        decades = decades[::-2][::-1]
    pos = [10.0 ** k for k in decades]
    ticks = [0.0]
    if (values > 0).any():
        ticks += pos
    if (values < 0).any():
        ticks = [-p for p in reversed(pos)] + ticks
    return ticks


def _linthresh(values: np.ndarray) -> float:
    """Linear range of the symlog axis: the 10th percentile of |score| (scores span decades over training)."""
    a = np.abs(values[np.isfinite(values)])
    a = a[a > 0]
    return float(np.percentile(a, 10)) if a.size else 1.0


def figure(scores: Table, **kw: Any) -> Figure:
    """Figure 1 from a ``scores.csv`` table (keywords: model, estimator, seed)."""
    return draw(data(scores, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS"]
