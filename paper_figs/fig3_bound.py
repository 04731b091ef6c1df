"""Figure 3 — the bound: measured |Ghost − LAI| against the data-dependent bound (a) and the a-priori bound
(b), one point per scored sample and step, log axes fitted to the data with the identity line where visible
(every point must lie on or below it); (c) each layer's mean share of the error, one labelled bar per layer.

Inputs: ``bound.csv`` (bound suite: model, seed, step, sample, is_noisy, abs_error, data_bound,
apriori_bound — empty where the theory gives no a-priori bound for the architecture) and, for (c),
``bound_layers.csv`` (model, seed, step, sample, layer, error, share).

Plotted data (CSV), one row per drawn mark, ``panel`` says which:
* ``data`` / ``apriori``: model, seed, step, sample, is_noisy, bound, abs_error (points with a zero error
  or bound cannot sit on log axes and are left out; ``meta["dropped"]`` counts them);
* ``layers``: model, layer, layer_index (execution order as recorded), n_layers, share (mean over samples,
  steps and seeds of |E_l| / sum_l |E_l|), share_std, n (rows averaged).

Models of bound.csv without a value in a panel (e.g. no a-priori bound for attention) are named in it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from validation.report.tables import Table

from .fig2_fidelity import MODEL_ORDER, ordered
from .plotdata import MissingResults, PlotData, mean_std, panel_label
from .style import DOUBLE, GREY, SMALL_PT, model_style, new_figure, style

NAME = "bound"
COLUMNS = ["panel", "model", "seed", "step", "sample", "is_noisy", "bound", "abs_error", "layer", "layer_index",
           "n_layers", "share", "share_std", "n"]
BOUNDS = {"data": ("data_bound", "data-dependent bound"), "apriori": ("apriori_bound", "a-priori bound")}


def data(bound: Table, layers: Table | None = None) -> PlotData:
    """Scatter points of |Ghost − LAI| vs each bound, and the mean error share of each layer."""
    bound.require("model", "seed", "step", "sample", "abs_error", "data_bound")
    rows: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    models = ordered(bound.unique("model"), MODEL_ORDER)
    for panel, (column, _) in BOUNDS.items():
        if column not in bound.columns:
            continue
        for model in models:
            for r in bound.where(model=model).rows:
                b, e = r.get(column), r.get("abs_error")
                if b is None or e is None:
                    continue
                if not (b > 0 and e > 0 and np.isfinite(b) and np.isfinite(e)):
                    dropped[panel] = dropped.get(panel, 0) + 1
                    continue
                rows.append({"panel": panel, "model": model, "seed": r["seed"], "step": r["step"],
                             "sample": r["sample"], "is_noisy": r.get("is_noisy"), "bound": b, "abs_error": e})
    if not any(r["panel"] == "data" for r in rows):
        raise MissingResults("bound.csv has no sample with a positive error and data bound")
    if layers is not None and len(layers):
        layers.require("model", "layer", "share")
        for model in ordered(layers.unique("model"), MODEL_ORDER):
            lt = layers.where(model=model)
            names = lt.unique("layer")
            for i, name in enumerate(names):
                mu, sd, n = mean_std(lt.where(layer=name).values("share"))
                rows.append({"panel": "layers", "model": model, "layer": name, "layer_index": i,
                             "n_layers": len(names), "share": mu, "share_std": sd, "n": n})
    return PlotData(COLUMNS, rows, {"dropped": dropped, "models": models})


def _log_range(v: np.ndarray) -> tuple[float, float]:
    """Limits of a log axis around the positive finite values: a quarter decade of margin each side."""
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return 1e-3, 1.0
    return float(v.min()) / 10 ** 0.25, float(v.max()) * 10 ** 0.25


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    layers = t.where(panel="layers")
    has_layers = bool(len(layers))
    with style():
        fig = new_figure(DOUBLE, max(2.6, 0.115 * len(layers) + 1.0) if has_layers else 2.6)
        ratios = [1, 1, 1.25] if has_layers else [1, 1]
        axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
        for i, (panel, (_, title)) in enumerate(BOUNDS.items()):
            ax = axes[i]
            sub = t.where(panel=panel)
            ax.set_xscale("log")
            ax.set_yscale("log")
            x_lo, x_hi = _log_range(sub.array("bound")) if len(sub) else (1e-3, 1.0)
            y_lo, y_hi = _log_range(sub.array("abs_error")) if len(sub) else (1e-3, 1.0)
            lo, hi = min(x_lo, y_lo), max(x_hi, y_hi)
            ax.plot([lo, hi], [lo, hi], color=GREY, lw=0.8, ls="--", label="|error| = bound", zorder=3)
            notes = []
            if len(sub):
                for k, model in enumerate(sub.unique("model")):
                    m = sub.where(model=model)
                    label, colour, marker = model_style(model, k)
                    ax.scatter(m.array("bound"), m.array("abs_error"), s=6, color=colour, marker=marker,
                               alpha=0.6, linewidths=0, label=label, gid=f"points:{model}")
                frac = float(np.median(sub.array("abs_error") / sub.array("bound")))
                notes.append(f"median |error|/bound {frac:.2g}")
            else:
                ax.text(0.5, 0.5, "not available for\nthese architectures", transform=ax.transAxes,
                        ha="center", va="center", color=GREY)
            missing = [model_style(mo)[0] for mo in pd.meta["models"] if mo not in sub.unique("model")]
            if missing and len(sub):
                notes.append("no bound: " + ", ".join(missing))
            ax.set_xlim(x_lo, x_hi)  # each axis fitted to its own data; the y = x line shows where it is visible
            ax.set_ylim(y_lo, y_hi)
            # notes go under the axis label, never inside the axes (nothing is drawn under the y = x line)
            ax.set_xlabel("\n".join([f"{title} (nats)", *notes]))
            ax.set_ylabel("measured |Ghost − LAI| (nats)")
            panel_label(ax, i)
        handles: dict[str, Any] = {}
        for ax in axes[:2]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles),
                   markerscale=2)
        if has_layers:
            _draw_layers(axes[2], layers)
            panel_label(axes[2], 2)
    return fig


def _draw_layers(ax: Any, t: Table) -> None:
    """One horizontal bar per layer (execution order), grouped by model, coloured by the model, each labelled
    ``Model: layer``; the bar is the layer's mean share of |Ghost − LAI| with its standard deviation over
    samples and steps."""
    y, ticks, labels = 0.0, [], []
    for k, model in enumerate(t.unique("model")):
        colour = model_style(model, k)[1]
        for r in sorted(t.where(model=model).rows, key=lambda r: r["layer_index"]):
            ax.barh(y, r["share"], height=0.75, color=colour, gid=f"layer:{model}:{r['layer']}")
            if r["share"] < 1e-9:
                ax.text(0.005, y, "0 (LAI's term is exact)", va="center", ha="left", fontsize=SMALL_PT,
                        color=GREY)
            ticks.append(y)
            labels.append(f"{model_style(model)[0]}: {short_layer_name(str(r['layer']))}")
            y += 1
        y += 0.6
    ax.set_yticks(ticks, labels, fontsize=SMALL_PT)
    ax.set_ylim(y - 0.4, -0.8)
    ax.set_xlim(0, min(1.0, max(0.05, float(np.nanmax(t.array("share"))) * 1.1)))
    ax.set_xlabel("share of |Ghost − LAI|\n(mean over samples and steps)")


CONTAINERS = frozenset({"blocks", "layers", "layer", "h", "model", "transformer", "encoder", "decoder", "net"})


def short_layer_name(name: str) -> str:
    """A layer's module name without a leading container (``blocks.0.attn.qkv`` -> ``0.attn.qkv``)."""
    parts = name.split(".")
    return ".".join(parts[1:]) if len(parts) >= 3 and parts[0] in CONTAINERS else name


def figure(bound: Table, layers: Table | None = None) -> Figure:
    """Figure 3 from ``bound.csv`` (and ``bound_layers.csv`` for the per-layer panel)."""
    return draw(data(bound, layers))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS"]
