"""Figure 6 — curated training, paired over seeds: each method against vanilla training, and against the best
layer-aware member.

Top row, one panel per task: for every method, the paired difference of the final test metric to vanilla
training (method − vanilla at the same seed; percentage points of accuracy, or perplexity where lower is better)
with its 95 % t interval over seeds (``validation.report.paired``), one mark per protocol (filled: the first of
``PROTOCOL_ORDER`` present, open: the other), and the seeds it beat vanilla on ("wins/seeds") at the right.
Bottom row: the paired difference of every method to the best layer-aware member of that task (:func:`best_member`:
the highest mean under the first protocol among the layer-aware estimators' own methods, as the report's tables
name it: ``validation.report.curation_pairs``; combined ranks with the loss are not members), same intervals.

Methods (read from the data) are sorted by their mean difference to vanilla over the tasks, best at the top.
The oracle (training on the clean samples only) is not drawn on the axes (it would squeeze the rest): its
difference and interval are written under the panel title. Each axis is fitted to the data: to 0 and the
intervals of the methods whose mean difference is within 2.5 x the panel's median absolute difference; a mean
beyond (e.g. a filter that never learns some classes) is cut at the edge with its value(s) written.

Inputs: the ``final`` table of :func:`validation.report.curation.load_curation` (run folders of
``python -m lai curate`` or the stored folder ``paper_figs/data/curation``).

Plotted data (CSV): panel (vanilla | best | oracle), task, family, metric, protocol, method, reference (vanilla,
or the best member), mean (paired difference), low, high (95 % t interval), p (paired t-test), wins, n_seeds,
reference_mean (the reference's mean over the paired seeds), clipped (1 when cut at the edge), y_plot (row).
Accuracy in %, perplexity as is.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from influence.curation.methods import MATCH_SEP
from validation.report.curation import paired
from validation.report.curation_pairs import best_layer_aware, common_match, is_layer_aware, split_rate
from validation.report.stats import paired_difference
from validation.report.tables import Table

from .plotdata import MissingResults, PlotData, panel_label
from .style import DATASETS, DOUBLE, GREY, OKABE_ITO, SMALL_PT, model_style, new_figure, style
from .style import method_style as _base_style

NAME = "curation"
COLUMNS = ["panel", "task", "family", "metric", "protocol", "method", "reference", "mean", "low", "high", "p",
           "wins", "n_seeds", "reference_mean", "clipped", "y_plot"]
PROTOCOL_ORDER = ("ours", "original")
PROTOCOL_LABELS = {"ours": "ours: curation from step 0, fixed reference batch",
                   "original": "original: warm-up of ⅓ of the epochs, fresh reference subset each step"}
OFF_AXIS = ("oracle",)
METRIC_UNITS = {"accuracy": "pp", "perplexity": ""}
NOISE_LABELS = {"symmetric": "symmetric", "class_dependent": "class-dependent", "documents": "corrupted docs",
                "instance_dependent": "instance-dep.", "pairflip": "pair-flip", "pair_flip": "pair-flip"}

#: styles of the baselines added with the paired tables (the others come from ``style.METHODS``)
STYLES = {"small-loss": ("Small loss (ramped, oracle rate)", OKABE_ITO["purple"], "h"),
          "small-loss-est": ("Small loss (est. rate)", "#882255", "8"),
          "small-loss-fixed": ("Small loss (fixed rate)", OKABE_ITO["purple"], "H"),
          "loss-threshold": ("Loss threshold", OKABE_ITO["green"], "X"),
          "exact-top2": ("Exact top 2", "#44AA99", "p"),
          "loss+lai": ("Loss + LAI (rank)", "#332288", "P"),
          "loss+lai-last": ("Loss + LAI last (rank)", "#332288", "d"),
          "oracle": ("Oracle (clean only)", "#444444", "*")}


def method_style(name: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, marker) of a curation method; ``<rate>-as-<method>`` (random keeping the fraction that
    ``<method>`` kept) is drawn in the rate method's colour, labelled with the matched method."""
    base, sep, match = name.partition(MATCH_SEP)
    if sep:
        label, colour, marker = method_style(base, index)
        matched = method_style(match, index)[0].replace(" (", ", ").replace(")", "")
        return f"{label.split(' (')[0]}, rate of {matched}", colour, marker
    return STYLES.get(name) or _base_style(name, index)


def row_label(name: str, matched: dict[str, str], index: int = 0) -> str:
    """The label of a method's row: a rate-matched method says which method's kept fraction it matched
    (``matched``: method -> the paired table's ``rate_matched_to``, one over every task), e.g. plain ``random`` run
    with ``--match lai`` reads "Random drop, rate of LAI", as the report's "random (rate of lai)"."""
    target = matched.get(name)
    if target and MATCH_SEP not in name and split_rate(name) is not None:
        return method_style(f"{name}{MATCH_SEP}{target}", index)[0]
    return method_style(name, index)[0]


def is_member(method: str) -> bool:
    """Whether ``method`` is a layer-aware member: the report's definition
    (``validation.report.curation_pairs.is_layer_aware``), so the figure and the tables name the same member."""
    return is_layer_aware(method)


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def noise_text(row: dict[str, Any]) -> str:
    """E.g. ``40 % symmetric``."""
    noise = NOISE_LABELS.get(row.get("noise") or "", row.get("noise") or "")
    return f"{100 * float(row['rate']):g} % {noise}".strip() if row.get("rate") is not None else noise


def task_title(row: dict[str, Any], with_noise: bool = True) -> str:
    """E.g. ``MNIST-1D, MLP, 40 % symmetric`` (without the noise when ``with_noise`` is False)."""
    data_name = DATASETS.get(row.get("dataset") or "", row.get("dataset") or row["task"])
    model = model_style(row["model"])[0] if row.get("model") else ""
    return ", ".join(x for x in (data_name, model, noise_text(row) if with_noise else "") if x)


def _values(final: Table, task: str, protocol: str, method: str) -> dict[Any, float]:
    t = final.where(task=task, protocol=protocol, method=method)
    if not len(t) and method == "vanilla":  # vanilla never scores: one run serves every protocol
        t = final.where(task=task, method=method)
    return {r["seed"]: _scale(r["metric"]) * float(r["final"]) for r in t}


def best_member(final: Table, task: str, protocol: str) -> str | None:
    """The layer-aware member with the best mean final metric of ``task`` under ``protocol``: the one the report's
    tables name (``validation.report.curation_pairs.best_layer_aware``)."""
    t = final.where(task=task, protocol=protocol)
    if not len(t):
        return None
    return best_layer_aware(t, higher_is_better=t.rows[0]["metric"] != "perplexity")[0]


def _fit(means: list[float], floor: float = 1.0) -> float:
    """Half-range of the means an axis is fitted to: 2.5 x the median |mean| (at least ``floor``)."""
    return max(2.5 * float(np.median(np.abs(means))), floor) if means else floor


def data(final: Table, curves: Table | None = None, methods: Sequence[str] | None = None) -> PlotData:
    """Paired differences to vanilla and to the best layer-aware member per (task, protocol, method)."""
    final.require("task", "protocol", "method", "seed", "metric", "final")
    pt = paired(final)
    if not len(pt):
        raise MissingResults("no curated-training task has both vanilla and another method finished")
    have = pt.unique("method")
    shown = [m for m in (methods or have) if m in have and m not in OFF_AXIS]
    protocols = [p for p in PROTOCOL_ORDER if p in pt.unique("protocol")] + \
        [p for p in pt.unique("protocol") if p not in PROTOCOL_ORDER]
    first = protocols[0]
    tasks = pt.unique("task")
    # sort: mean difference to vanilla over the tasks under the first protocol (better first; lower perplexity)
    score = {}
    for m in shown:
        d = [r["diff"] * (-1 if r["metric"] == "perplexity" else 1) for r in pt.where(method=m, protocol=first)]
        score[m] = float(np.mean(d)) if d else -math.inf
    order = sorted(shown, key=lambda m: -score[m])
    rows: list[dict[str, Any]] = []
    titles, best = {}, {}
    noises = {noise_text(r) for r in pt}
    for task in tasks:
        tt = pt.where(task=task)
        titles[task] = task_title(tt.rows[0], with_noise=len(noises) > 1)
        for r in tt:
            if r["method"] not in order and r["method"] not in OFF_AXIS:
                continue
            rows.append({"panel": "oracle" if r["method"] in OFF_AXIS else "vanilla", "task": task,
                         "family": r["family"], "metric": r["metric"], "protocol": r["protocol"],
                         "method": r["method"], "reference": "vanilla", "mean": r["diff"], "low": r["low"],
                         "high": r["high"], "p": r["p"], "wins": r["wins"], "n_seeds": r["n"],
                         "reference_mean": r["vanilla_mean"], "clipped": 0,
                         "y_plot": order.index(r["method"]) if r["method"] in order else None})
        ref = best[task] = best_member(final, task, first)
        if ref is None:
            continue
        for protocol in protocols:
            rv = _values(final, task, first, ref)
            for method in order:
                if method == ref and protocol == first:
                    continue
                mv = _values(final, task, protocol, method)
                seeds = sorted(set(mv) & set(rv))
                if not seeds:
                    continue
                d = paired_difference([mv[s] for s in seeds], [rv[s] for s in seeds])
                rows.append({"panel": "best", "task": task, "family": tt.rows[0]["family"],
                             "metric": tt.rows[0]["metric"], "protocol": protocol, "method": method,
                             "reference": ref, "mean": d.mean, "low": d.low, "high": d.high, "p": d.p,
                             "wins": d.wins, "n_seeds": d.n, "reference_mean": float(np.mean([rv[s] for s in seeds])),
                             "clipped": 0, "y_plot": order.index(method)})
    limits = {}
    for task in tasks:
        for panel in ("vanilla", "best"):
            sub = [r for r in rows if r["task"] == task and r["panel"] == panel]
            if not sub:
                continue
            half = _fit([r["mean"] for r in sub if _finite(r["mean"])])
            fitted = [r for r in sub if _finite(r["mean"]) and abs(r["mean"]) <= half]
            ends = [0.0] + [v for r in fitted for v in (r["low"], r["high"], r["mean"]) if _finite(v)]
            lo, hi = min(ends), max(ends)
            for r in sub:  # a mean beyond the fitted intervals: cut at the edge, value written
                r["clipped"] = int(_finite(r["mean"]) and not lo <= r["mean"] <= hi)
            lo, hi = min(ends), max(ends)
            pad = 0.06 * ((hi - lo) or 1.0)
            limits[(task, panel)] = (lo - pad, hi + pad)
    return PlotData(COLUMNS, rows, {"tasks": tasks, "titles": titles, "methods": order, "protocols": protocols,
                                    "best": best, "limits": limits, "matched": {m: common_match(pt.rows, m) for m in order},
                                    "noise": noises.pop() if len(noises) == 1 else ""})


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:+.1f}".replace("-", "−")


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    tasks, methods, protocols = pd.meta["tasks"], pd.meta["methods"], pd.meta["protocols"]
    panels = [p for p in ("vanilla", "best") if len(t.where(panel=p))]
    off = {p: (k - (len(protocols) - 1) / 2) * 0.42 for k, p in enumerate(protocols)}
    with style():
        row = 0.15 + 0.08 * (len(protocols) - 1)  # inches per method: a sub-row per protocol
        # up to 3 tasks side by side (a row per comparison); more tasks: a row per task, a column per comparison
        wide = len(tasks) <= 3
        height = (len(panels) if wide else len(tasks)) * ((0.75 if wide else 0.55) + row * len(methods)) + 0.6
        fig = new_figure(DOUBLE, height)
        grid = fig.subplots(len(panels), len(tasks), squeeze=False, sharey=True) if wide else \
            fig.subplots(len(tasks), len(panels), squeeze=False, sharey=True).T
        axes = grid  # axes[i, j]: comparison i, task j in both layouts
        for i, panel in enumerate(panels):
            for j, task in enumerate(tasks):
                ax = axes[i, j]
                dt = t.where(panel=panel, task=task)
                metric = dt.rows[0]["metric"] if len(dt) else "accuracy"
                lim = pd.meta["limits"].get((task, panel), (-1.0, 1.0))
                ax.axvline(0.0, color=GREY, lw=0.8, zorder=0)
                ax.set_xlim(*lim)
                for r in dt:
                    k = methods.index(r["method"])
                    _, colour, marker = method_style(r["method"], k)
                    y = r["y_plot"] + off[r["protocol"]]
                    if r["clipped"]:  # at the edge, in its protocol's sub-row, open/filled arrow as the mark
                        left = r["mean"] < lim[0]
                        arrow = ("◂" if left else "▸") if r["protocol"] == protocols[0] else ("◃" if left else "▹")
                        ax.annotate(f"{arrow}{_fmt(r['mean'])}" if left else f"{_fmt(r['mean'])}{arrow}",
                                    (lim[0] if left else lim[1], y), va="center", ha="left" if left else "right",
                                    fontsize=SMALL_PT, color=colour, gid=f"clipped:{panel}:{r['protocol']}:{r['method']}")
                        continue
                    lo = r["low"] if _finite(r["low"]) else r["mean"]
                    hi = r["high"] if _finite(r["high"]) else r["mean"]
                    filled = r["protocol"] == protocols[0]
                    ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - lo], [hi - r["mean"]]], color=colour,
                                marker=marker, ms=3.8, lw=0, elinewidth=0.9, capsize=1.6,
                                mfc=colour if filled else "white", mec=colour,
                                gid=f"{panel}:{r['protocol']}:{r['method']}")
                if panel == "vanilla":
                    for k, method in enumerate(methods):
                        wins = [f"{rs[0]['wins']}/{rs[0]['n_seeds']}" if rs else "–"
                                for rs in (dt.where(method=method, protocol=p).rows for p in protocols)]
                        if any(w != "–" for w in wins):
                            ax.annotate(" · ".join(wins), (1.0, k), xycoords=("axes fraction", "data"),
                                        xytext=(2, 0), textcoords="offset points", va="center", ha="left",
                                        fontsize=SMALL_PT, color=method_style(method, k)[1], annotation_clip=False)
                ax.set_ylim(len(methods) - 0.5, -0.5)
                ax.set_yticks(range(len(methods)))
                ax.set_yticklabels([row_label(m, pd.meta.get("matched") or {}, k) for k, m in enumerate(methods)])
                ax.tick_params(axis="y", length=0)
                ax.grid(axis="y", color="0.92", lw=0.5)
                ax.set_axisbelow(True)
                unit = METRIC_UNITS.get(metric, "")
                best_label = method_style(pd.meta["best"].get(task) or "", 0)[0]
                if wide or j == len(tasks) - 1:
                    ax.set_xlabel(("test " if panel == "vanilla" else "")
                                  + f"{metric} − " + ("vanilla" if panel == "vanilla" else "best layer-aware")
                                  + (f", {unit}" if unit else "")
                                  + ("" if panel == "vanilla" or not wide else f"\n(here: {best_label})"))
                if panel == "vanilla":
                    head = pd.meta["titles"].get(task, task)
                    van = [r["reference_mean"] for r in dt if _finite(r["reference_mean"])]
                    vtxt = f"vanilla {np.mean(van):.1f}{' %' if metric == 'accuracy' else ''}" if van else "\n"
                    orc = t.where(panel="oracle", task=task, protocol=protocols[0]).rows
                    if orc:
                        o = orc[0]
                        ci = f" [{_fmt(o['low'])}, {_fmt(o['high'])}]" if _finite(o["low"]) else ""
                        vtxt += f"\noracle {_fmt(o['mean'])}{ci} {unit}"
                    else:
                        vtxt += "\n"
                    label = f"$\\bf{{({chr(ord('a') + (j if wide else 2 * j))})}}$"
                    ax.set_title(f"{label} {head}\n{vtxt}" if wide else f"{label} {head}\n{vtxt.strip()}".replace(
                        "\n", "; ").replace("; ", "\n", 1), loc="center" if wide else "left")
                else:
                    if not wide:
                        ax.set_title(f"$\\bf{{({chr(ord('a') + 2 * j + 1)})}}$ vs the best layer-aware member\n"
                                     f"(here: {best_label})", loc="left")
                    best = pd.meta["best"].get(task)
                    if best in methods:
                        right = lim[1] - 0.0 < 0.3 * (lim[1] - lim[0])
                        ax.text(0.0, methods.index(best) + off[protocols[0]], "reference " if right else " reference",
                                va="center",
                                ha="right" if right else "left", fontsize=SMALL_PT, color=GREY)
                    if wide:
                        panel_label(ax, i * len(tasks) + j)
            for ax in (axes[i, :] if not wide else axes[i, :1]):
                for lab, m in zip(ax.get_yticklabels(), methods):
                    lab.set_color(method_style(m, methods.index(m))[1])
        handles = [Line2D([], [], color="0.25", marker="o", lw=0, mfc="0.25" if p == protocols[0] else "white",
                          mec="0.25", label=PROTOCOL_LABELS.get(p, p)) for p in protocols]
        n_seeds = sorted({int(v) for v in t.values("n_seeds") if v is not None})
        seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
        fig.legend(handles, [h.get_label() for h in handles], loc="outside upper center", ncol=2,
                   title=(f"{pd.meta['noise']} label noise. " if pd.meta.get("noise") else "")
                   + f"Paired differences, 95 % t interval over {seeds} seeds; wins/seeds vs vanilla at the right"
                     + (f" ({', '.join(protocols)})" if len(protocols) > 1 else "") + ".")
    return fig


def figure(final: Table, curves: Table | None = None, **kw: Any) -> Figure:
    """Figure 6 from the curation ``final`` table (``curves`` is accepted and not drawn)."""
    return draw(data(final, curves, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "task_title", "best_member", "is_member"]
