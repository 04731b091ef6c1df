"""Figure 6 — curated training: final test accuracy (or perplexity for language modelling) of each method at
each noise level, mean ± std over seeds (left), and the test metric after every epoch at the highest noise
level, mean ± std band (right). One row per task family (tasks that differ only in noise level).

Inputs: the ``final`` and ``curves`` tables of :func:`paper_figs.curation_results.load_curation` (from the
units ``python -m validation curate`` writes under ``<results>/curate/``).

Plotted data (CSV): panel (final | curve), family, metric, method, noise_pct (noise level, % of samples),
x (noise_pct for ``final``, epoch for ``curve``), x_plot (where the mark is drawn: ``final`` marks of the
methods are spread a little around their noise level so error bars do not overlap), mean, std (sample std,
0 for one seed), lo, hi, n_seeds. Accuracy in %, perplexity as is.
"""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib.figure import Figure

from .plotdata import MissingResults, PlotData, mean_std, panel_label
from .style import DATASETS, DOUBLE, METHOD_DASHED, method_style, model_style, new_figure, style
from .tables import Table

NAME = "curation"
COLUMNS = ["panel", "family", "metric", "method", "noise_pct", "x", "x_plot", "mean", "std", "lo", "hi",
           "n_seeds"]
METHOD_ORDER = ("vanilla", "lai", "lai-last", "ghost", "exact", "tracin", "lai-topk", "ghost-topk", "lai-greats",
                "greats", "random", "small-loss", "large-grad")
METRIC_LABELS = {"accuracy": "test accuracy (%)", "perplexity": "test perplexity"}
NOISE_LABELS = {"symmetric": "symmetric label noise", "class_dependent": "class-dependent label noise",
                "documents": "corrupted documents"}


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def data(final: Table, curves: Table | None = None, methods: Sequence[str] | None = None,
         dodge: float | None = None) -> PlotData:
    """Mean ± std over seeds of the final metric per (family, method, noise level), and of the per-epoch
    curve at each family's highest noise level. ``dodge``: distance between neighbouring methods' marks
    (noise-% units; default: all marks of a level within 12 % of the noise-level range, or 3 with one level)."""
    final.require("family", "rate", "method", "seed", "metric", "final")
    have = final.unique("method")
    methods = [m for m in (methods or [*METHOD_ORDER, *have]) if m in have]
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise MissingResults("no curated-training units found")
    rows: list[dict[str, Any]] = []
    meta_fam: dict[str, dict[str, Any]] = {}
    for family in final.unique("family"):
        ft = final.where(family=family)
        metric = ft.rows[0]["metric"]
        sc = _scale(metric)
        levels = sorted(ft.unique("rate"))
        pct = [100.0 * r for r in levels]
        span = (max(pct) - min(pct)) if len(pct) > 1 else 0.0
        fam_methods = [m for m in methods if m in ft.unique("method")]
        spread = 0.12 * span if span else 3.0  # all the methods' marks of one noise level fit in this width
        step = dodge if dodge is not None else spread / max(len(fam_methods) - 1, 1)
        for k, method in enumerate(fam_methods):
            off = (k - (len(fam_methods) - 1) / 2) * step
            for rate in levels:
                mu, sd, n = mean_std(v * sc for v in ft.where(method=method, rate=rate).values("final"))
                if n == 0:
                    continue
                rows.append({"panel": "final", "family": family, "metric": metric, "method": method,
                             "noise_pct": 100.0 * rate, "x": 100.0 * rate, "x_plot": 100.0 * rate + off,
                             "mean": mu, "std": sd, "lo": mu - sd, "hi": mu + sd, "n_seeds": n})
        top = levels[-1]
        if curves is not None and len(curves):
            ct = curves.where(family=family, rate=top)
            for method in fam_methods:
                cm = ct.where(method=method)
                for epoch in cm.unique("epoch", sort=True):
                    mu, sd, n = mean_std(v * sc for v in cm.where(epoch=epoch).values("value"))
                    if n == 0:
                        continue
                    rows.append({"panel": "curve", "family": family, "metric": metric, "method": method,
                                 "noise_pct": 100.0 * top, "x": epoch, "x_plot": epoch, "mean": mu, "std": sd,
                                 "lo": mu - sd, "hi": mu + sd, "n_seeds": n})
        first = ft.rows[0]
        meta_fam[family] = {"metric": metric, "dataset": first.get("dataset"), "model": first.get("model"),
                            "noise": first.get("noise"), "levels": pct}
    return PlotData(COLUMNS, rows, {"families": meta_fam, "methods": methods})


def family_title(family: str, info: dict[str, Any]) -> str:
    """E.g. ``MNIST-1D, MLP: symmetric label noise``."""
    model = model_style(info["model"])[0] if info.get("model") else ""
    noise = NOISE_LABELS.get(info.get("noise") or "", info.get("noise") or "")
    data_name = DATASETS.get(info.get("dataset") or "", info.get("dataset") or family)
    head = ", ".join(x for x in (data_name, model) if x)
    return f"{head}: {noise}" if noise else head


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    families = list(pd.meta["families"])
    methods = pd.meta["methods"]
    has_curves = bool(len(t.where(panel="curve")))
    with style():
        fig = new_figure(DOUBLE, 1.9 * len(families) + 0.5)
        axes = fig.subplots(len(families), 2 if has_curves else 1, squeeze=False)
        for i, family in enumerate(families):
            info = pd.meta["families"][family]
            ylabel = METRIC_LABELS.get(info["metric"], info["metric"])
            ax = axes[i, 0]
            ft = t.where(panel="final", family=family)
            for k, method in enumerate(methods):
                m = ft.where(method=method)
                if not len(m):
                    continue
                label, colour, marker = method_style(method, k)
                ax.errorbar(m.array("x_plot"), m.array("mean"), yerr=m.array("std"), color=colour, marker=marker,
                            ms=3.5, lw=0.9, capsize=2, elinewidth=0.8, label=label, gid=f"final:{method}",
                            ls="--" if method in METHOD_DASHED else "-")
            levels = info["levels"]
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
            span = (max(levels) - min(levels)) or 10.0
            ax.set_xlim(min(levels) - 0.25 * span, max(levels) + 0.25 * span)
            ax.set_xlabel("noise level (% of training samples)")
            ax.set_ylabel(ylabel)
            ax.set_title(family_title(family, info), loc="right")
            panel_label(ax, i * axes.shape[1])
            if has_curves:
                ax = axes[i, 1]
                ct = t.where(panel="curve", family=family)
                for k, method in enumerate(methods):
                    m = ct.where(method=method)
                    if not len(m):
                        continue
                    label, colour, marker = method_style(method, k)
                    x = m.array("x_plot")
                    ax.fill_between(x, m.array("lo"), m.array("hi"), color=colour, alpha=0.15, lw=0,
                                    gid=f"band:{method}")
                    ax.plot(x, m.array("mean"), color=colour, marker=marker, ms=3, lw=1.0, label=label,
                            gid=f"curve:{method}", ls="--" if method in METHOD_DASHED else "-")
                if len(ct):
                    ax.set_title(f"{ct.rows[0]['noise_pct']:g} % noise", loc="right")
                    epochs = sorted(set(ct.values("x")))
                    if len(epochs) <= 10:
                        ax.set_xticks(epochs, [str(int(e)) for e in epochs])
                ax.set_xlabel("epoch")
                ax.set_ylabel(ylabel)
                panel_label(ax, i * axes.shape[1] + 1)
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        n_seeds = sorted(set(int(v) for v in t.values("n_seeds")))
        seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=min(len(handles), 5),
                   title=f"mean ± std over {seeds} seed(s)")
    return fig


def figure(final: Table, curves: Table | None = None, **kw: Any) -> Figure:
    """Figure 6 from the curation ``final`` (and ``curves``) tables."""
    return draw(data(final, curves, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "family_title"]
