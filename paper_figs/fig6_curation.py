"""Figure 6 — curated training against vanilla training, paired over seeds, under both scoring protocols.

Top row, one panel per task: for every method, the paired difference of final test accuracy to vanilla
training (method − vanilla at the same seed, percentage points; perplexity differences for language
modelling, where lower is better) with its 95 % t confidence interval (``validation.report.stats``), one mark per
protocol (filled: ours — curation from step 0 against a fixed reference batch; open: original — a warm-up
of a third of the epochs, then a fresh random reference subset each step), and the seeds the method beat
vanilla on ("wins/seeds", one per protocol in legend order) at the right. Bottom row: test accuracy after
every epoch under our protocol, mean over seeds with its 95 % t band.

Inputs: the ``final`` and ``curves`` tables of :func:`validation.report.curation.load_curation` (run folders
of ``python -m lai curate`` or the stored folder ``paper_figs/data/curation``).

Plotted data (CSV): panel (diff | curve), task, family, metric, protocol, method, x (difference for ``diff``,
epoch for ``curve``), mean (= x for ``diff``; the mean metric for ``curve``), low, high (95 % CI), p
(paired t-test), wins, n_seeds, vanilla_mean (``diff``: vanilla's mean over the paired seeds), y_plot (row of
the mark in a ``diff`` panel). Accuracy in %, perplexity as is.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from validation.report.curation import METHOD_ORDER, paired
from validation.report.tables import Table

from .plotdata import MissingResults, PlotData, panel_label
from .style import DATASETS, DOUBLE, GREY, OKABE_ITO, SMALL_PT, model_style, new_figure, style
from .style import method_style as _base_style

NAME = "curation"
COLUMNS = ["panel", "task", "family", "metric", "protocol", "method", "x", "mean", "low", "high", "p", "wins",
           "n_seeds", "vanilla_mean", "y_plot"]
PROTOCOL_ORDER = ("ours", "original")
PROTOCOL_LABELS = {"ours": "ours: curation from step 0, fixed reference batch",
                   "original": "original: warm-up of ⅓ of the epochs, fresh reference subset each step"}
CLIP_PP = 20.0  # the difference axes stop here (marks beyond are cut at the edge, value written)
CURVE_METHODS = ("vanilla", "lai", "lai-last", "ghost", "small-loss", "oracle")
METRIC_UNITS = {"accuracy": "pp", "perplexity": ""}
NOISE_LABELS = {"symmetric": "symmetric", "class_dependent": "class-dependent", "documents": "corrupted docs"}


#: styles of the baselines added with the paired tables (the others come from ``style.METHODS``)
STYLES = {"small-loss": ("Small loss (ramped)", OKABE_ITO["purple"], "h"),
          "small-loss-fixed": ("Small loss (fixed rate)", OKABE_ITO["purple"], "H"),
          "loss-threshold": ("Loss threshold", OKABE_ITO["green"], "X"),
          "oracle": ("Oracle (clean only)", "#444444", "*")}


def method_style(name: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, marker) of a curation method."""
    return STYLES.get(name) or _base_style(name, index)


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    from validation.report.stats import mean_ci

    e = mean_ci(values)
    return e.value, e.low, e.high


def noise_text(row: dict[str, Any]) -> str:
    """E.g. ``40 % symmetric``."""
    noise = NOISE_LABELS.get(row.get("noise") or "", row.get("noise") or "")
    return f"{100 * float(row['rate']):g} % {noise}".strip() if row.get("rate") is not None else noise


def task_title(row: dict[str, Any], with_noise: bool = True) -> str:
    """E.g. ``MNIST-1D, MLP, 40 % symmetric`` (without the noise when ``with_noise`` is False)."""
    data_name = DATASETS.get(row.get("dataset") or "", row.get("dataset") or row["task"])
    model = model_style(row["model"])[0] if row.get("model") else ""
    return ", ".join(x for x in (data_name, model, noise_text(row) if with_noise else "") if x)


def data(final: Table, curves: Table | None = None, methods: Sequence[str] | None = None) -> PlotData:
    """Paired differences to vanilla per (task, protocol, method) and the per-epoch curves (see docstring)."""
    final.require("task", "protocol", "method", "seed", "metric", "final")
    pt = paired(final)
    if not len(pt):
        raise MissingResults("no curated-training task has both vanilla and another method finished")
    have = pt.unique("method")
    order = [m for m in (methods or [*METHOD_ORDER, *have]) if m in have]
    order = list(dict.fromkeys(order))
    rows: list[dict[str, Any]] = []
    tasks = pt.unique("task")
    titles = {}
    noises = {noise_text(r) for r in pt}
    for task in tasks:
        tt = pt.where(task=task)
        titles[task] = task_title(tt.rows[0], with_noise=len(noises) > 1)
        for r in tt:
            if r["method"] not in order:
                continue
            rows.append({"panel": "diff", "task": task, "family": r["family"], "metric": r["metric"],
                         "protocol": r["protocol"], "method": r["method"], "x": r["diff"], "mean": r["diff"],
                         "low": r["low"], "high": r["high"], "p": r["p"], "wins": r["wins"], "n_seeds": r["n"],
                         "vanilla_mean": r["vanilla_mean"], "y_plot": order.index(r["method"])})
        if curves is not None and len(curves):
            ct = curves.where(task=task, protocol="ours")
            for method in [m for m in CURVE_METHODS if m in ct.unique("method")]:
                cm = ct.where(method=method)
                sc = _scale(cm.rows[0]["metric"])
                for epoch in cm.unique("epoch", sort=True):
                    vals = [sc * float(v) for v in cm.where(epoch=epoch).values("value")]
                    mu, lo, hi = _mean_ci(vals)
                    rows.append({"panel": "curve", "task": task, "family": cm.rows[0]["family"],
                                 "metric": cm.rows[0]["metric"], "protocol": "ours", "method": method,
                                 "x": epoch, "mean": mu, "low": lo, "high": hi, "n_seeds": len(vals)})
    protocols = [p for p in PROTOCOL_ORDER if p in pt.unique("protocol")] + \
        [p for p in pt.unique("protocol") if p not in PROTOCOL_ORDER]
    return PlotData(COLUMNS, rows, {"tasks": tasks, "titles": titles, "methods": order, "protocols": protocols,
                                    "noise": noises.pop() if len(noises) == 1 else ""})


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    tasks, methods, protocols = pd.meta["tasks"], pd.meta["methods"], pd.meta["protocols"]
    has_curves = bool(len(t.where(panel="curve")))
    n_rows = 2 if has_curves else 1
    off = {p: (k - (len(protocols) - 1) / 2) * 0.34 for k, p in enumerate(protocols)}
    with style():
        fig = new_figure(DOUBLE, 0.9 + 0.24 * len(methods) + (2.0 if has_curves else 0.0))
        axes = fig.subplots(n_rows, len(tasks), squeeze=False,
                            gridspec_kw={"height_ratios": [0.24 * len(methods) + 0.45, 1.9]} if has_curves else None)
        for j, task in enumerate(tasks):
            ax = axes[0, j]
            dt = t.where(panel="diff", task=task)
            metric = dt.rows[0]["metric"] if len(dt) else "accuracy"
            van = [r["vanilla_mean"] for r in dt if _finite(r["vanilla_mean"])]
            ax.axvline(0.0, color=GREY, lw=0.7, zorder=0)
            xlo, xhi = 0.0, 0.0
            for k, method in enumerate(methods):
                _, colour, marker = method_style(method, k)
                wins: list[str] = []
                for protocol in protocols:
                    rs = dt.where(method=method, protocol=protocol).rows
                    if not rs:
                        wins.append("–")
                        continue
                    r = rs[0]
                    y = r["y_plot"] + off[protocol]
                    lo = r["low"] if _finite(r["low"]) else r["mean"]
                    hi = r["high"] if _finite(r["high"]) else r["mean"]
                    filled = protocol == protocols[0]
                    ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - lo], [hi - r["mean"]]], color=colour,
                                marker=marker, ms=3.8, lw=0, elinewidth=0.9, capsize=1.8,
                                mfc=colour if filled else "white", mec=colour, gid=f"diff:{protocol}:{method}")
                    wins.append(f"{r['wins']}/{r['n_seeds']}")
                    xlo, xhi = min(xlo, lo), max(xhi, hi)
                if any(w != "–" for w in wins):  # one label per method row: each protocol's wins/seeds
                    ax.annotate(" · ".join(wins), (1.0, k), xycoords=("axes fraction", "data"), xytext=(2, 0),
                                textcoords="offset points", va="center", ha="left", fontsize=SMALL_PT,
                                color=colour, annotation_clip=False)
            # a baseline far off (e.g. a filter that never learns some classes) would squeeze the rest: the
            # axis stops at CLIP_PP and such marks and intervals are cut at the edge with their value written
            lim_lo, lim_hi = max(xlo, -CLIP_PP), min(xhi, CLIP_PP)
            pad = 0.06 * ((lim_hi - lim_lo) or 1.0)
            ax.set_xlim(lim_lo - pad, lim_hi + pad)
            for r in dt:
                if abs(r["mean"]) > CLIP_PP and r["method"] in methods:
                    edge = lim_lo - pad if r["mean"] < 0 else lim_hi + pad
                    ax.annotate(f"{'◂' if r['mean'] < 0 else ''}{r['mean']:+.0f}{'▸' if r['mean'] > 0 else ''}".replace("-", "−"),
                                (edge, r["y_plot"] + off[r["protocol"]]), xytext=(2 if r["mean"] < 0 else -2, 0),
                                textcoords="offset points", va="center", ha="left" if r["mean"] < 0 else "right",
                                fontsize=SMALL_PT, color=method_style(r["method"], methods.index(r["method"]))[1],
                                gid=f"clipped:{r['protocol']}:{r['method']}")
            ax.set_ylim(len(methods) - 0.5, -0.5)
            ax.set_yticks(range(len(methods)))
            ax.set_yticklabels([method_style(m, k)[0] for k, m in enumerate(methods)] if j == 0 else [])
            unit = METRIC_UNITS.get(metric, "")
            ax.set_xlabel(f"test {metric} − vanilla" + (f" ({unit})" if unit else ""))
            head = pd.meta["titles"].get(task, task)
            vtxt = (f"vanilla {sum(van) / len(van):.1f}{' %' if metric == 'accuracy' else ''}" if van else "")
            ax.set_title(f"{head}\n{vtxt}", loc="right")
            panel_label(ax, j)
            if has_curves:
                ax = axes[1, j]
                ct = t.where(panel="curve", task=task)
                for k, method in enumerate(CURVE_METHODS):
                    m = ct.where(method=method)
                    if not len(m):
                        continue
                    label, colour, marker = method_style(method, k)
                    x = m.array("x")
                    lo_b, hi_b = m.array("low"), m.array("high")
                    if metric == "accuracy":  # a t band over few seeds can leave [0, 100] %
                        lo_b, hi_b = lo_b.clip(0, 100), hi_b.clip(0, 100)
                    ax.fill_between(x, lo_b, hi_b, color=colour, alpha=0.15, lw=0, gid=f"band:{method}")
                    ax.plot(x, m.array("mean"), color=colour, lw=1.0, label=label, gid=f"curve:{method}",
                            ls="--" if method in ("oracle", "small-loss") else "-")
                ax.set_xlabel("epoch (our protocol)")
                if j == 0:
                    ax.set_ylabel(f"test {metric}" + (" (%)" if metric == "accuracy" else ""))
                panel_label(ax, len(tasks) + j)
        handles = [Line2D([], [], color="0.25", marker="o", lw=0, mfc="0.25" if p == protocols[0] else "white",
                          mec="0.25", label=PROTOCOL_LABELS.get(p, p)) for p in protocols]
        n_seeds = sorted({int(v) for v in t.where(panel="diff").values("n_seeds") if v is not None})
        seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
        curve_handles: dict[str, Any] = {}
        if has_curves:
            for ax in axes[1]:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    curve_handles.setdefault(lab, h)
        fig.legend(handles + list(curve_handles.values()),
                   [h.get_label() for h in handles] + list(curve_handles), loc="outside upper center",
                   ncol=2 if not curve_handles else 3,
                   title=(f"{pd.meta['noise']} label noise. " if pd.meta.get("noise") else "")
                   + f"Top: paired difference to vanilla, 95 % CI over {seeds} seeds; wins/seeds at the right "
                     f"({', '.join(protocols)})." + ("\nBottom: test accuracy per epoch, mean and 95 % band."
                                                     if curve_handles else ""))
    return fig


def figure(final: Table, curves: Table | None = None, **kw: Any) -> Figure:
    """Figure 6 from the curation ``final`` (and ``curves``) tables."""
    return draw(data(final, curves, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "task_title"]
