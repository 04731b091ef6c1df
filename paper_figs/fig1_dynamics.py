"""Figure 1 — influence is dynamic: how the scores of clean- and noisy-label samples move over training, per model.

Input: ``scores.csv`` of a validation run (fidelity suite): model, seed, step, sample, is_noisy, estimator,
score — the same fixed scored batch at every scored step of a seed. One estimator (default: exact), every model
(default; ``model=`` picks one) and every seed (default; ``seed=`` picks one), seeds pooled.

Columns: models. (top row) the score at each scored step: median over the clean-label samples (blue) and over the
noisy-label samples (vermillion) of every seed, with the band from the 25th to the 75th percentile (symlog axis:
scores span decades over training); (bottom row) the same for the sample's rank within its seed's scored batch
at that step, as a percentile (100 = the most helpful sample, 50 = the middle, dotted). The bottom title gives
how far ranks move: Spearman correlation between the ranks at the first and at the last scored step, mean over
seeds with its 95 % t interval (one seed: the value alone).

Plotted data (CSV): panel (score | rank | stability), model, estimator, group (clean | noisy; ``all`` for
stability), step, median, q25, q75 (over the pooled samples of the group), n (samples x seeds pooled; seeds for
stability), early, late (first and last scored step), mean, low, high (stability: the Spearman mean and interval).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, MultipleLocator, NullLocator

from validation.report.stats import mean_ci
from validation.report.tables import Table

from .plotdata import MissingResults, PlotData, panel_label, ranks_desc, spearman
from .style import (
    CLEAN_COLOR,
    DOUBLE,
    GREY,
    NOISY_COLOR,
    SMALL_PT,
    estimator_style,
    model_style,
    new_figure,
    style,
)

NAME = "dynamics"
MODEL_PREFERENCE = ("mlp", "cnn1d", "cnn2d", "transformer")
ESTIMATOR_PREFERENCE = ("exact", "ghost", "lai")
COLUMNS = ["panel", "model", "estimator", "group", "step", "median", "q25", "q75", "n", "early", "late", "mean",
           "low", "high"]
GROUPS = (("clean", 0, CLEAN_COLOR, "clean label"), ("noisy", 1, NOISY_COLOR, "noisy label"))


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


def percentile_ranks(scores: Sequence[float]) -> np.ndarray:
    """Rank of each score as a percentile of its batch: 100 = largest (most helpful), 0 = smallest."""
    r = ranks_desc(scores)
    n = len(r)
    return 100.0 * (n - r) / (n - 1) if n > 1 else np.full(n, 50.0)


def _model_rows(t: Table, model: str, estimator: str) -> list[dict[str, Any]]:
    seed, step = t.array("seed"), t.array("step")
    sample, score = t.array("sample"), t.array("score")
    noisy = np.array([int(v or 0) for v in t.values("is_noisy")])
    steps = sorted(set(step.tolist()))
    if len(steps) < 2:
        raise MissingResults(f"{model}: scores at {len(steps)} scored step(s); the trajectory needs 2 or more")
    pct = np.full(len(score), np.nan)
    first: dict[Any, dict[Any, float]] = {}
    last: dict[Any, dict[Any, float]] = {}
    for s in sorted(set(seed.tolist())):
        seed_steps = sorted(set(step[seed == s].tolist()))
        for st in seed_steps:
            at = np.flatnonzero((seed == s) & (step == st))
            pct[at] = percentile_ranks(score[at])
            if st in (seed_steps[0], seed_steps[-1]) and len(seed_steps) > 1:
                (first if st == seed_steps[0] else last)[s] = dict(zip(sample[at].tolist(), pct[at].tolist()))
    rows = []
    for st in steps:
        for group, flag, _, _ in GROUPS:
            m = (step == st) & (noisy == flag)
            for panel, v in (("score", score[m]), ("rank", pct[m])):
                v = v[np.isfinite(v)]
                if not v.size:
                    continue
                q25, med, q75 = np.percentile(v, [25, 50, 75])
                rows.append({"panel": panel, "model": model, "estimator": estimator, "group": group, "step": st,
                             "median": float(med), "q25": float(q25), "q75": float(q75), "n": int(v.size)})
    rhos = []
    for s in first:
        common = sorted(set(first[s]) & set(last.get(s, {})))
        rhos.append(spearman([first[s][k] for k in common], [last[s][k] for k in common]))
    e = mean_ci(rhos)
    rows.append({"panel": "stability", "model": model, "estimator": estimator, "group": "all", "n": e.n,
                 "early": _int(steps[0]), "late": _int(steps[-1]), "mean": e.value, "low": e.low, "high": e.high})
    return rows


def data(scores: Table, model: str | Sequence[str] | None = None, estimator: str | None = None,
         seed: int | None = None) -> PlotData:
    """Median and quartiles of clean and noisy samples' scores and rank percentiles per (model, step)."""
    scores.require("model", "seed", "step", "sample", "is_noisy", "estimator", "score")
    have = scores.unique("model")
    if model is None:
        models = [m for m in MODEL_PREFERENCE if m in have] + [m for m in have if m not in MODEL_PREFERENCE]
    else:
        models = [_pick(have, m, (), "model") for m in ([model] if isinstance(model, str) else model)]
    t = scores.where(model=models)
    estimator = _pick(t.unique("estimator"), estimator, ESTIMATOR_PREFERENCE, "estimator")
    t = t.where(estimator=estimator)
    if seed is not None:
        _pick(t.unique("seed", sort=True), seed, (), "seed")
        t = t.where(seed=seed)
    rows: list[dict[str, Any]] = []
    models = [m for m in models if len(t.where(model=m))]
    for m in models:
        rows += _model_rows(t.where(model=m), m, estimator)
    seeds = t.unique("seed", sort=True)
    stab = [r for r in rows if r["panel"] == "stability"]
    return PlotData(COLUMNS, rows, {
        "models": models, "model": ", ".join(models), "estimator": estimator, "seeds": seeds,
        "seed": f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}",
        "early": min(r["early"] for r in stab), "late": max(r["late"] for r in stab)})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    m = pd.meta
    models = m["models"]
    est_label = estimator_style(m["estimator"])[0]
    with style():
        fig = new_figure(DOUBLE, 3.7)
        axes = fig.subplots(2, len(models), squeeze=False)
        for j, model in enumerate(models):
            for i, panel in enumerate(("score", "rank")):
                ax = axes[i, j]
                sub = t.where(panel=panel, model=model)
                for group, _, colour, label in GROUPS:
                    g = sub.where(group=group)
                    if not len(g):
                        continue
                    x = g.array("step")
                    ax.fill_between(x, g.array("q25"), g.array("q75"), color=colour, alpha=0.2, lw=0,
                                    gid=f"band:{panel}:{group}")
                    ax.plot(x, g.array("median"), color=colour, marker="o" if group == "clean" else "X", ms=3,
                            label=f"{label}: median, 25th–75th percentile", gid=f"median:{panel}:{group}")
                ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
                if panel == "score":
                    vals = np.concatenate([sub.array(c) for c in ("median", "q25", "q75")])
                    lt = _linthresh(vals)
                    ax.axhline(0.0, color=GREY, lw=0.6, ls=":", zorder=0)
                    ax.set_yscale("symlog", linthresh=lt)
                    ax.yaxis.set_major_locator(FixedLocator(symlog_ticks(vals, lt)))
                    ax.yaxis.set_minor_locator(NullLocator())
                    ax.set_title(model_style(model)[0])
                    if j == 0:
                        ax.set_ylabel(f"{est_label} influence\n(ref.-loss decrease, nats)")
                else:
                    ax.axhline(50.0, color=GREY, lw=0.6, ls=":", zorder=0)
                    ax.set_ylim(0, 100)
                    ax.yaxis.set_major_locator(MultipleLocator(25))
                    ax.set_xlabel("training step (SGD steps)")
                    st = t.where(panel="stability", model=model).rows[0]
                    ci = (f" [{st['low']:.2f}, {st['high']:.2f}]" if st["low"] is not None and
                          math.isfinite(st["low"]) else "")
                    ax.set_title(f"first vs last step: ρ\n{st['mean']:.2f}{ci}", loc="right", fontsize=SMALL_PT)
                    if j == 0:
                        ax.set_ylabel("rank percentile in batch\n(100 = most helpful)")
                panel_label(ax, i * len(models) + j)
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles),
                   title=f"{est_label} scores of the scored batch, seeds {m['seed']} pooled. Bottom titles: Spearman ρ "
                         "of each sample's rank at the first\nvs the last scored step (steps "
                         f"{_int(m['early'])}…{_int(m['late'])}), mean over seeds with its 95 % t interval")
    return fig


def _int(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


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
    """Linear range of the symlog axis: the 10th percentile of |value| (scores span decades over training)."""
    a = np.abs(values[np.isfinite(values)])
    a = a[a > 0]
    return float(np.percentile(a, 10)) if a.size else 1.0


def figure(scores: Table, **kw: Any) -> Figure:
    """Figure 1 from a ``scores.csv`` table (keywords: model, estimator, seed)."""
    return draw(data(scores, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "percentile_ranks"]
