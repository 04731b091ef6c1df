"""Figure 3 — the bound: measured |Ghost − LAI| against the data-dependent bound (a) and the a-priori bound
(b), one point per scored sample and step, log axes with the identity line (every point must lie on or
below it); (c) each layer's mean share of the error, per model (one horizontal stacked bar each).

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
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .fig2_fidelity import MODEL_ORDER, ordered
from .plotdata import MissingResults, PlotData, mean_std, panel_label
from .style import DOUBLE, GREY, SMALL_PT, model_style, new_figure, style
from .tables import Table

NAME = "bound"
COLUMNS = ["panel", "model", "seed", "step", "sample", "is_noisy", "bound", "abs_error", "layer", "layer_index",
           "n_layers", "share", "share_std", "n"]
BOUNDS = {"data": ("data_bound", "data-dependent bound"), "apriori": ("apriori_bound", "a-priori bound")}
LAYER_CMAP = "viridis"  # perceptually uniform and colour-blind safe


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


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    has_layers = bool(len(t.where(panel="layers")))
    with style():
        fig = new_figure(DOUBLE, 2.45)
        ratios = [1, 1, 1.5] if has_layers else [1, 1]
        axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
        pts = t.where(lambda r: r["panel"] in BOUNDS)
        both = np.concatenate([pts.array("bound"), pts.array("abs_error")])
        lo, hi = float(both.min()) / 2, float(both.max()) * 2
        for i, (panel, (_, title)) in enumerate(BOUNDS.items()):
            ax = axes[i]
            sub = t.where(panel=panel)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.plot([lo, hi], [lo, hi], color=GREY, lw=0.8, ls="--", label="|error| = bound", zorder=3)
            if len(sub):
                for k, model in enumerate(sub.unique("model")):
                    m = sub.where(model=model)
                    label, colour, marker = model_style(model, k)
                    ax.scatter(m.array("bound"), m.array("abs_error"), s=6, color=colour, marker=marker,
                               alpha=0.6, linewidths=0, label=label, gid=f"points:{model}")
                frac = float(np.median(sub.array("abs_error") / sub.array("bound")))
                ax.text(0.03, 0.97, f"median |error| / bound\n= {frac:.2g}", transform=ax.transAxes, ha="left",
                        va="top", fontsize=SMALL_PT)
            else:
                ax.text(0.5, 0.5, "not available for\nthese architectures", transform=ax.transAxes,
                        ha="center", va="center", color=GREY)
            missing = [model_style(mo)[0] for mo in pd.meta["models"] if mo not in sub.unique("model")]
            if missing and len(sub):
                ax.text(0.03, 0.78, "no bound recorded:\n" + ", ".join(missing), transform=ax.transAxes,
                        ha="left", va="top", fontsize=SMALL_PT, color=GREY)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel(f"{title} (nats)")
            ax.set_ylabel("measured |Ghost − LAI| (nats)")
            panel_label(ax, i)
        handles: dict[str, Any] = {}
        for ax in axes[:2]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles),
                   markerscale=2)
        if has_layers:
            _draw_layers(axes[2], t.where(panel="layers"), width_in=0.62 * DOUBLE * ratios[2] / sum(ratios))
            panel_label(axes[2], 2)
    return fig


def _draw_layers(ax: Any, t: Table, width_in: float) -> None:
    """One horizontal stacked bar per model (top to bottom): each layer's mean share, first layer on the left,
    coloured by depth; a segment is labelled with its layer name when the name fits inside it
    (``width_in``: approximate width of the axes in inches)."""
    cmap = colormaps[LAYER_CMAP]
    models = t.unique("model")
    char_in = SMALL_PT / 72 * 0.6  # average glyph width of the sans-serif font
    for j, model in enumerate(models):
        m = t.where(model=model)
        left = 0.0
        n_layers = int(m.rows[0]["n_layers"])
        for r in sorted(m.rows, key=lambda r: r["layer_index"]):
            depth = r["layer_index"] / max(n_layers - 1, 1)
            ax.barh(j, r["share"], left=left, height=0.75, color=cmap(depth), edgecolor="white", linewidth=0.4,
                    gid=f"layer:{model}:{r['layer']}")
            name = short_layer_name(str(r["layer"]))
            if (len(name) + 1) * char_in < r["share"] * width_in:
                ax.text(left + r["share"] / 2, j, name, ha="center", va="center", fontsize=SMALL_PT,
                        color="white" if depth < 0.6 else "black")
            left += r["share"]
    ax.set_yticks(range(len(models)), [model_style(m)[0] for m in models])
    ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("share of |Ghost − LAI| (mean over samples)")
    sm = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
    cb = ax.figure.colorbar(sm, ax=ax, ticks=[0, 1], fraction=0.06, pad=0.02)
    cb.ax.set_yticklabels(["first", "last"])
    cb.set_label("layer position")


CONTAINERS = frozenset({"blocks", "layers", "layer", "h", "model", "transformer", "encoder", "decoder", "net"})


def short_layer_name(name: str) -> str:
    """A layer's module name without a leading container (``blocks.0.attn.qkv`` -> ``0.attn.qkv``)."""
    parts = name.split(".")
    return ".".join(parts[1:]) if len(parts) >= 3 and parts[0] in CONTAINERS else name


def figure(bound: Table, layers: Table | None = None) -> Figure:
    """Figure 3 from ``bound.csv`` (and ``bound_layers.csv`` for the per-layer panel)."""
    return draw(data(bound, layers))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS"]
