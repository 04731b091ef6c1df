"""Figure 7 — the layer-aware question: does LAI rank like Exact better over all layers or the last one, and which
layers' terms hurt?

(a) Spearman vs Exact of all-layer LAI, last-layer LAI and LAI-fit (last layer plus lower-layer terms weighted
against Ghost on a small probe, validation/suites/lai_variants.py) per model, mean over scored steps and seeds with the
95 % interval of validation/report/evidence.py (bootstrap over the scored samples for one or two seeds, t over
seeds from three); Ghost equals Exact (ρ = 1, dashed).
(b) per layer: how much LAI's Spearman vs Exact would rise if that layer's term were exact (``rho_fixed`` of
the layer minus LAI's own, mean over steps and seeds), labelled with the Spearman of the layer's LAI term vs
Ghost's term. A layer whose term hurts has a large bar and a low term ρ.

Inputs: ``scores.csv`` (fidelity suite) and ``layer_terms.csv`` (fidelity suite, per-layer diagnostics).
Plotted data (CSV): panel (fidelity | layers), model, estimator, value, low, high, method, layer, layer_index,
gain, term_spearman, error_share, n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from validation.report.evidence import canon, rank_evidence
from validation.report.tables import Table
from validation.settings import estimators as chosen

from .fig2_fidelity import MODEL_ORDER, ordered
from .fig3_bound import short_layer_name
from .plotdata import MissingResults, PlotData, panel_label
from .style import DOUBLE, GREY, SMALL_PT, estimator_style, model_style, new_figure, style

NAME = "layers"
COLUMNS = ["panel", "model", "estimator", "value", "low", "high", "method", "layer", "layer_index", "gain",
           "term_spearman", "error_share", "n"]


def data(scores: Table, layer_terms: Table | None = None) -> PlotData:
    """Spearman-vs-Exact intervals of the LAI variants, and each layer's gain when its term is made exact."""
    scores.require("model", "seed", "step", "sample", "is_noisy", "estimator", "score")
    variants = chosen.layer_variants()
    keep = [r for r in scores.rows if canon(r["estimator"]) in (*variants, "exact")]
    ev = rank_evidence(keep, pairs=())
    if not ev:
        raise MissingResults("scores.csv has no exact and LAI scores")
    models = ordered(list(ev), MODEL_ORDER)
    rows: list[dict[str, Any]] = []
    for m in models:
        for e in variants:
            est = ev[m]["spearman"].get(e)
            if est is not None:
                rows.append({"panel": "fidelity", "model": m, "estimator": e, "value": est.value, "low": est.low,
                             "high": est.high, "method": est.method, "n": est.n})
    if layer_terms is not None and len(layer_terms):
        layer_terms.require("model", "seed", "step", "layer", "layer_index", "is_last", "rho_fixed", "term_spearman")
        for m in ordered(layer_terms.unique("model"), MODEL_ORDER):
            lt = layer_terms.where(model=m)
            base = {(r["seed"], r["step"]): r["rho_fixed"] for r in lt.rows if int(r["is_last"])}
            for layer in lt.unique("layer"):
                rs = [r for r in lt.where(layer=layer).rows if (r["seed"], r["step"]) in base]
                gains = [r["rho_fixed"] - base[(r["seed"], r["step"])] for r in rs if r["rho_fixed"] is not None]
                tr = [r["term_spearman"] for r in rs if r["term_spearman"] is not None]
                if not gains or int(rs[0]["is_last"]):
                    continue
                rows.append({"panel": "layers", "model": m, "layer": layer, "layer_index": rs[0]["layer_index"],
                             "gain": float(np.nanmean(gains)), "term_spearman": float(np.nanmean(tr)) if tr else None,
                             "error_share": float(np.nanmean([r.get("error_share") or 0.0 for r in rs])),
                             "n": len(gains)})
    return PlotData(COLUMNS, rows, {"models": models})


def draw(pd: PlotData) -> Figure:
    t = pd.table()
    fid, lay = t.where(panel="fidelity"), t.where(panel="layers")
    models = pd.meta["models"]
    n_layers = len(lay)
    with style():
        fig = new_figure(DOUBLE, max(2.6, 0.13 * n_layers + 0.9))
        axes = fig.subplots(1, 2 if n_layers else 1, squeeze=False,
                            gridspec_kw={"width_ratios": [1, 1.25] if n_layers else [1]})[0]
        ax = axes[0]
        variants = chosen.layer_variants()
        width = 0.8 / len(variants)
        ax.axhline(1.0, color=GREY, lw=0.8, ls="--", label="Ghost (= Exact)", zorder=0)
        for k, e in enumerate(variants):
            sub = fid.where(estimator=e)
            if not len(sub):
                continue
            label, colour, marker = estimator_style(e, k)
            xs = np.array([models.index(m) for m in sub.values("model")]) + (k - (len(variants) - 1) / 2) * width
            v, lo, hi = sub.array("value"), sub.array("low"), sub.array("high")
            err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
            ax.errorbar(xs, v, yerr=err, fmt=marker, color=colour, ms=4, capsize=2, lw=1.0, label=label,
                        gid=f"fidelity:{e}")
        ax.set_xticks(range(len(models)), [model_style(m)[0] for m in models])
        ax.set_xlim(-0.6, len(models) - 0.4)
        lows = fid.array("low")
        floor = np.nanmin(np.concatenate([lows[np.isfinite(lows)], fid.array("value")]))
        ax.set_ylim(min(0.0, np.floor(floor * 10) / 10), 1.05)
        ax.set_ylabel("Spearman ρ vs Exact\n(mean, 95 % interval)")
        ax.legend(loc="lower right", fontsize=SMALL_PT)
        panel_label(ax, 0)
        if n_layers:
            _draw_layers(axes[1], lay, models)
            panel_label(axes[1], 1)
    return fig


def _draw_layers(ax: Any, lay: Table, models: list[str]) -> None:
    y, ticks, labels = 0, [], []
    for m in models:
        sub = sorted(lay.where(model=m).rows, key=lambda r: r["layer_index"])
        if not sub:
            continue
        colour = model_style(m)[1]
        for r in sub:
            ax.barh(y, r["gain"], height=0.7, color=colour, gid=f"layer:{m}:{r['layer']}")
            tr = r["term_spearman"]
            txt = "no LAI term" if tr is None else f"term ρ {tr:.2f}"
            ax.text(max(r["gain"], 0) + 0.005, y, txt, va="center", ha="left", fontsize=SMALL_PT, color=GREY)
            ticks.append(y)
            labels.append(f"{model_style(m)[0]}: {short_layer_name(str(r['layer']))}")
            y += 1
        y += 0.6
    ax.set_yticks(ticks, labels, fontsize=SMALL_PT)
    ax.set_ylim(y - 0.4, -0.8)
    ax.axvline(0, color=GREY, lw=0.6)
    gains = lay.array("gain")
    ax.set_xlim(min(0.0, float(np.nanmin(gains)) * 1.1), max(float(np.nanmax(gains)), 0.02) * 1.45)
    ax.set_xlabel("rise of LAI's ρ vs Exact\nif this layer's term were exact")


def figure(scores: Table, layer_terms: Table | None = None) -> Figure:
    """Figure 7 from ``scores.csv`` and ``layer_terms.csv``."""
    return draw(data(scores, layer_terms))


__all__ = ["data", "draw", "figure", "NAME", "COLUMNS"]
