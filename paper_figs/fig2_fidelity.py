"""Figure 2 — ranking fidelity over training: Spearman correlation of each estimator's scores with Exact
(top row) and with the one-step counterfactual (bottom row), per model (columns), mean over seeds with a band of
± one standard deviation (no band, and no ± in the legend, when there is one seed).

Input: ``fidelity.csv`` (fidelity suite): model, seed, step, estimator, target, spearman (and other metrics;
``metric=`` picks another column, e.g. kendall or topk_overlap).

Plotted data (CSV): model, target, estimator, step, mean, std (sample std over seeds, 0 for one seed),
lo (= mean - std), hi (= mean + std), n_seeds. The band is [lo, hi].
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from validation.report.tables import Table
from validation.settings import estimators as chosen

from .plotdata import MissingResults, PlotData, mean_std, panel_label
from .style import DOUBLE, GREY, estimator_style, model_style, new_figure, style

NAME = "fidelity"
TARGETS = ("exact", "counterfactual")
MODEL_ORDER = ("mlp", "cnn1d", "cnn2d", "transformer")
COLUMNS = ["model", "target", "estimator", "step", "mean", "std", "lo", "hi", "n_seeds"]
METRIC_LABELS = {"spearman": "Spearman ρ", "kendall": "Kendall τ", "topk_overlap": "top-k overlap",
                 "bottomk_overlap": "bottom-k overlap", "sign_agreement": "sign agreement"}


def ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """``values`` with those in ``order`` first (in that order), the rest after in their own order."""
    return [v for v in order if v in values] + [v for v in values if v not in order]


def default_estimators() -> list[str]:
    """Every influence estimator ``lai run`` scores but the token-sequence-only ones (the registry's and the
    research variants, ``validation.settings.estimators.influence_estimators``)."""
    return chosen.influence_estimators(sequence=False)


def data(fidelity: Table, estimators: Sequence[str] | None = None, targets: Sequence[str] = TARGETS,
         metric: str = "spearman") -> PlotData:
    """Mean and std over seeds of ``metric`` per (model, target, estimator, step) (``estimators``: default
    :func:`default_estimators`)."""
    estimators = default_estimators() if estimators is None else list(estimators)
    fidelity.require("model", "seed", "step", "estimator", "target", metric)
    t = fidelity.where(estimator=list(estimators), target=list(targets))
    if not len(t):
        raise MissingResults(f"fidelity has no rows for estimators {list(estimators)} vs {list(targets)}")
    rows = []
    models = ordered(t.unique("model"), MODEL_ORDER)
    for model in models:
        for target in [x for x in targets if x in t.unique("target")]:
            for est in [e for e in estimators if e != target]:
                sub = t.where(model=model, target=target, estimator=est)
                for step in sub.unique("step", sort=True):
                    mu, sd, n = mean_std(sub.where(step=step).values(metric))
                    if n == 0:
                        continue
                    rows.append({"model": model, "target": target, "estimator": est, "step": step, "mean": mu,
                                 "std": sd, "lo": mu - sd, "hi": mu + sd, "n_seeds": n})
    return PlotData(COLUMNS, rows, {"metric": metric, "models": models,
                                    "targets": [x for x in targets if x in t.unique("target")],
                                    "estimators": [e for e in estimators if e in t.unique("estimator")]})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    models, targets, estimators = pd.meta["models"], pd.meta["targets"], pd.meta["estimators"]
    metric = METRIC_LABELS.get(pd.meta["metric"], pd.meta["metric"])
    with style():
        fig = new_figure(DOUBLE, 1.45 * len(targets) + 0.5)
        axes = np.atleast_2d(fig.subplots(len(targets), len(models), sharey=True, squeeze=False))
        lows = t.array("lo")
        y_low = min(-0.05, float(np.nanmin(lows)) - 0.08) if np.isfinite(lows).any() else -0.05
        for i, target in enumerate(targets):
            for j, model in enumerate(models):
                ax = axes[i, j]
                for k, est in enumerate(estimators):
                    sub = t.where(model=model, target=target, estimator=est)
                    if not len(sub):
                        continue
                    label, colour, marker = estimator_style(est, k)
                    x = sub.array("step")
                    if max(sub.values("n_seeds")) > 1:  # a band only where there is a spread over seeds
                        ax.fill_between(x, sub.array("lo"), sub.array("hi"), color=colour, alpha=0.2, lw=0,
                                        gid=f"band:{est}")
                    ax.plot(x, sub.array("mean"), color=colour, marker=marker, ms=3, label=label, gid=f"mean:{est}")
                ax.axhline(0.0, color=GREY, lw=0.5, ls=":", zorder=0)
                ax.set_ylim(y_low, 1.05)
                ax.yaxis.set_major_locator(MultipleLocator(0.5))
                if i == 0:
                    ax.set_title(model_style(model)[0])
                if i == len(targets) - 1:
                    ax.set_xlabel("training step (SGD steps)")
                if j == 0:
                    ax.set_ylabel(f"{metric} vs\n{'Exact' if target == 'exact' else 'counterfactual'}")
                panel_label(ax, i * len(models) + j)
        handles, labels = {}, []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles:
                    handles[lab] = h
                    labels.append(lab)
        fig.legend([handles[k] for k in labels], labels, loc="outside upper center", ncol=len(labels),
                   title=seeds_title(sorted(set(int(v) for v in t.values("n_seeds")))))
    return fig


def seeds_title(n_seeds: Sequence[int]) -> str:
    """Legend title: what a line and a band are (one seed: a line, no band, and no ± in the words)."""
    if not n_seeds or max(n_seeds) <= 1:
        return "one seed: a line per estimator (no spread over seeds to show)"
    seeds = f"{n_seeds[-1]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    return f"mean over {seeds} seeds, band ± one standard deviation"


def figure(fidelity: Table, **kw: Any) -> Figure:
    """Figure 2 from a ``fidelity.csv`` table (keywords: estimators, targets, metric)."""
    return draw(data(fidelity, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "ordered"]
