"""Figure 5 — cost: wall time and peak memory of each estimator relative to one SGD training step on the
same model and batch, over batch size (at the model's largest width) and over width (at the largest batch).
Rows: models; columns: time vs batch, time vs width, memory vs batch, memory vs width. The dashed line at 1
is the training step itself; the grey reference lines are one forward pass (dotted) and one forward+backward
pass (dash-dot) of the same batch, so an estimator's cost reads in passes. Time marks are the median over the
timed repeats with an error bar from their 25th to 75th percentile (``times_s``; each divided by the training
step's median); peak memory is measured once (no bar). Both axes are logarithmic with plain numbers.

Input: ``cost.csv`` (cost suite): model, width, batch, estimator, median_s, peak_mb, ratio_to_train_step,
peak_ratio_to_train_step. ``width_units`` ({model: unit name}) labels the width axis; the run's
``config.json`` gives each model's ``width_key`` (see ``style.WIDTH_UNITS``).

Plotted data (CSV): model, sweep (batch | width), x, width, batch, estimator, time_ratio, time_lo, time_hi
(25th / 75th percentile of the repeats, same units), n_repeats, memory_ratio, median_s, peak_mb.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from validation.report.tables import Table
from validation.settings import estimators as chosen

from .fig2_fidelity import MODEL_ORDER, ordered
from .plotdata import MissingResults, PlotData, panel_label
from .style import (
    DOUBLE,
    GREY,
    MODEL_WIDTH_KEY,
    WIDTH_UNITS,
    estimator_style,
    model_style,
    new_figure,
    readable_log_ticks,
    style,
)

NAME = "cost"
COLUMNS = ["model", "sweep", "x", "width", "batch", "estimator", "time_ratio", "time_lo", "time_hi", "n_repeats",
           "memory_ratio", "median_s", "peak_mb"]
#: the passes drawn as grey reference lines (not estimators): label, line style
REFERENCES = {"forward": ("1× forward pass", ":"), "forward_backward": ("1× forward+backward", "-.")}
PANELS = (("time_ratio", "batch"), ("time_ratio", "width"), ("memory_ratio", "batch"), ("memory_ratio", "width"))


def default_estimators() -> list[str]:
    """The reference passes and the estimators the cost rows time (``validation.settings.estimators.timed``)."""
    return [*REFERENCES, *chosen.timed(sequence=True)]


def repeats(row: dict[str, Any]) -> list[float]:
    """The timed repeats of a cost row (``times_s``: a list, or its JSON text in a CSV)."""
    import json

    v = row.get("times_s")
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else []


def spread(row: dict[str, Any]) -> tuple[float, float, int]:
    """25th and 75th percentile of the row's repeats as ratios to the training step (the median's own scale:
    ratio_to_train_step / median_s), and the number of repeats; NaN when there are none."""
    t = repeats(row)
    ratio, med = row.get("ratio_to_train_step"), row.get("median_s")
    if not t or not ratio or not med:
        return float("nan"), float("nan"), len(t)
    q25, q75 = np.percentile(t, [25, 75])
    return float(q25 * ratio / med), float(q75 * ratio / med), len(t)


def data(cost: Table, estimators: Sequence[str] | None = None,
         width_units: dict[str, str] | None = None) -> PlotData:
    """The batch sweep at each model's largest width and the width sweep at its largest batch (``estimators``:
    default :func:`default_estimators`)."""
    estimators = default_estimators() if estimators is None else list(estimators)
    cost.require("model", "width", "batch", "estimator", "ratio_to_train_step", "peak_ratio_to_train_step")
    t = cost.where(estimator=list(estimators))
    if not len(t):
        raise MissingResults(f"cost.csv has no rows for estimators {list(estimators)}")
    rows = []
    models = ordered(t.unique("model"), MODEL_ORDER)
    for model in models:
        tm = t.where(model=model)
        w_max, b_max = max(tm.unique("width")), max(tm.unique("batch"))
        for sweep, fixed in (("batch", {"width": w_max}), ("width", {"batch": b_max})):
            sub = tm.where(**fixed)
            for est in [e for e in estimators if e in sub.unique("estimator")]:
                for r in sorted(sub.where(estimator=est).rows, key=lambda r: r[sweep]):
                    lo, hi, n = spread(r)
                    rows.append({"model": model, "sweep": sweep, "x": r[sweep], "width": r["width"],
                                 "batch": r["batch"], "estimator": est, "time_ratio": r["ratio_to_train_step"],
                                 "time_lo": lo, "time_hi": hi, "n_repeats": n,
                                 "memory_ratio": r["peak_ratio_to_train_step"], "median_s": r.get("median_s"),
                                 "peak_mb": r.get("peak_mb")})
    units = {m: WIDTH_UNITS.get(MODEL_WIDTH_KEY.get(m, ""), "width") for m in models}
    units.update(width_units or {})
    return PlotData(COLUMNS, rows, {"models": models, "width_units": units,
                                    "estimators": [e for e in estimators if e in t.unique("estimator")]})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    models = pd.meta["models"]
    with style():
        fig = new_figure(DOUBLE, 1.45 * len(models) + 0.45)
        axes = fig.subplots(len(models), len(PANELS), squeeze=False)
        for i, model in enumerate(models):
            tm = t.where(model=model)
            for j, (value, sweep) in enumerate(PANELS):
                ax = axes[i, j]
                sub = tm.where(sweep=sweep)
                ax.axhline(1.0, color=GREY, lw=0.8, ls="--", label="1× training step", zorder=0)
                for k, est in enumerate(pd.meta["estimators"]):
                    s = sub.where(estimator=est)
                    if not len(s):
                        continue
                    y = s.array(value)
                    ok = np.isfinite(y) & (y > 0)
                    x = s.array("x")[ok]
                    if est in REFERENCES:
                        label, ls = REFERENCES[est]
                        ax.plot(x, y[ok], color=GREY, lw=1.0, ls=ls, label=label, zorder=1,
                                gid=f"{value}:{sweep}:{est}")
                        continue
                    label, colour, marker = estimator_style(est, k)
                    ax.plot(x, y[ok], color=colour, marker=marker, ms=3, lw=0.9, label=label,
                            gid=f"{value}:{sweep}:{est}")
                    if value == "time_ratio":
                        lo, hi = s.array("time_lo")[ok], s.array("time_hi")[ok]
                        bar = np.isfinite(lo) & np.isfinite(hi)
                        if bar.any():
                            ax.errorbar(x[bar], y[ok][bar], yerr=[np.maximum(y[ok][bar] - lo[bar], 0),
                                                                  np.maximum(hi[bar] - y[ok][bar], 0)],
                                        fmt="none", ecolor=colour, elinewidth=0.8, capsize=1.5,
                                        gid=f"spread:{sweep}:{est}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                readable_log_ticks(ax, "y")
                xs = sorted(set(sub.values("x")))
                if xs:
                    ax.set_xticks(xs, [str(int(v)) for v in xs])
                    ax.xaxis.set_minor_formatter(NullFormatter())
                    if len(xs) == 1:
                        ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
                fixed = (f"width {sub.rows[0]['width']}" if sweep == "batch" else f"batch {sub.rows[0]['batch']}"
                         ) if len(sub) else ""
                ax.set_title(fixed, loc="right")
                unit = pd.meta["width_units"].get(model, "width")
                ax.set_xlabel("batch size (samples)" if sweep == "batch" else f"width ({unit})")
                if j == 0:
                    ax.set_ylabel(f"{model_style(model)[0]}\ntime / training step")
                elif j == 2:
                    ax.set_ylabel("peak memory /\ntraining step")
                panel_label(ax, i * len(PANELS) + j)
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=min(len(handles), 5),
                   title="time: median over the timed repeats, bar 25th–75th percentile; memory: one measurement")
    return fig


def figure(cost: Table, **kw: Any) -> Figure:
    """Figure 5 from a ``cost.csv`` table (keywords: estimators, width_units)."""
    return draw(data(cost, **kw))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS", "PANELS"]
