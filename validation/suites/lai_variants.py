"""Research-only layer-aware influence variants evaluated next to LAI: not registered estimators (not part of
``influence``; named in ``validation.settings.estimators.RESEARCH``, scored only by ``lai run``'s fidelity suite).
A candidate moves to ``influence.estimators`` only if it ranks closer to Exact than both all-layer and last-layer
LAI at LAI's cost.

LAI's score is a sum of per-layer terms, ``lai_i = sum_l lai_l,i`` (``InfluenceResult.per_layer``), each
approximating Ghost's term ``ghost_l,i`` (whose sum equals Exact). The last layer's term is exact (its output
gradient is g); the others replace the Jacobian from the layer to the output by the identity, and for
convolutions pair the flattened input map with the whole output gradient, so their scale and even sign can be
off. :func:`layer_diagnostics` measures this per layer; :func:`fit_layer_weights` / :func:`weighted_lai`
implement the variant

    lai-fit_i = lai_last,i + sum_{l != last} w_l lai_l,i,

with weights w_l fitted (default ``fit="joint"``) by least squares of Ghost's lower-layer sum
``ghost_i - ghost_last,i`` on the LAI terms ``lai_l,i`` over a small *probe* (p training samples disjoint from the scored ones, scored against R
chunks of the reference batch: p * R equations), refitted every K steps. Inference is LAI's per-layer terms and
a weighted sum (LAI's cost); the fit costs R Ghost and LAI calls on p samples every K steps. w = 0 is
last-layer LAI, w = 1 all-layer LAI.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import influence
from influence import InfluenceResult
from influence.batch import Batch, LossFn


def last_layer_name(lai_last: InfluenceResult) -> str:
    """The layer ``influence.lai(..., layers="last")`` scores (its only per-layer key with a term)."""
    names = [k for k, v in lai_last.per_layer.items() if bool(torch.as_tensor(v).ne(0).any())]
    names = names or list(lai_last.per_layer)
    if len(names) != 1:
        raise ValueError(f"last-layer LAI has terms for {names}; expected one layer")
    return names[0]


def _terms(result: InfluenceResult) -> dict[str, Tensor]:
    return {str(k): torch.as_tensor(v).detach().double().cpu().reshape(-1) for k, v in result.per_layer.items()}


FITS = ("per_layer", "joint", "shared")


def fit_layer_weights(model: nn.Module, loss_fn: LossFn, probe: Batch, ref: Batch, lr: float, *,
                      ref_chunks: int = 8, ridge: float = 1e-3, fit: str = "joint") -> dict[str, float]:
    """{layer: w_l} for every LAI layer but the last (see the module docstring).

    probe: p training samples (not the ones to be scored); ref: the reference batch, split into ``ref_chunks``
    chunks so that the fit has p * ref_chunks equations. ``fit``:

    * ``"per_layer"``: w_l = <ghost_l, lai_l> / <lai_l, lai_l>, each layer's term regressed on its own exact
      counterpart (a term that ranks poorly or has the wrong size is shrunk; no interaction between layers);
    * ``"joint"``: least squares of Ghost's lower-layer sum on all lai_l together, with a small ridge toward
      w = 1 relative to the design's scale (``ridge``);
    * ``"shared"``: one weight for every lower layer (least squares of the lower-layer sum on sum_l lai_l)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    n_ref = len(ref[1])
    chunks = max(1, min(ref_chunks, n_ref))
    bounds = np.linspace(0, n_ref, chunks + 1).round().astype(int)
    rows_x: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    rows_g: list[np.ndarray] = []
    layers: list[str] | None = None
    last = None
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        sub = (ref[0][a:b], ref[1][a:b])
        g = _terms(influence.ghost(model, loss_fn, probe, sub, lr))
        lai = _terms(influence.lai(model, loss_fn, probe, sub, lr, layers="all"))
        if last is None:
            last = last_layer_name(influence.lai(model, loss_fn, probe, sub, lr, layers="last"))
            layers = [k for k in lai if k != last]
        target = sum(g.values()) - lai[last]  # Ghost's lower-layer sum (lai_last is exact)
        rows_y.append(target.numpy())
        rows_x.append(np.stack([lai[k].numpy() for k in layers], 1) if layers else np.zeros((len(target), 0)))
        rows_g.append(np.stack([g[k].numpy() for k in layers], 1) if layers else np.zeros((len(target), 0)))
    x, y, gl = np.concatenate(rows_x), np.concatenate(rows_y), np.concatenate(rows_g)
    if not layers:
        return {}
    if fit == "per_layer":
        den = (x * x).sum(0)
        w = np.where(den > 0, (x * gl).sum(0) / np.where(den > 0, den, 1.0), 0.0)
        return {k: float(v) for k, v in zip(layers, w)}
    if fit == "shared":
        s = x.sum(1)
        w0 = float(s @ y / (s @ s)) if float(s @ s) > 0 else 0.0
        return {k: w0 for k in layers}
    # ridge toward w = 1: minimise |x w - y|^2 + lam |w - 1|^2, lam relative to the mean column energy
    lam = ridge * float((x * x).sum(0).mean()) if x.size else 0.0
    ones = np.ones(len(layers))
    w = np.linalg.solve(x.T @ x + lam * np.eye(len(layers)), x.T @ y + lam * ones)
    return {k: float(v) for k, v in zip(layers, w)}


def weighted_lai(lai_all: InfluenceResult, weights: dict[str, float]) -> Tensor:
    """lai_last + sum_l w_l lai_l over ``lai_all.per_layer`` (layers without a weight: the last layer, weight 1). [n]"""
    terms = _terms(lai_all)
    return sum((weights.get(k, 1.0) * v for k, v in terms.items()), torch.zeros_like(next(iter(terms.values()))))


def layer_diagnostics(ghost: InfluenceResult, lai: InfluenceResult, last: str | None = None) -> list[dict[str, Any]]:
    """Per layer of Ghost (LayerNorm layers have no LAI term, counted as 0):

    * ``term_spearman``: Spearman of lai_l vs ghost_l over the scored samples (does the term rank like its
      exact counterpart?);
    * ``scale_ratio``: sum_i |lai_l,i| / sum_i |ghost_l,i| (1 = right size);
    * ``error_share``: sum_i |ghost_l,i - lai_l,i| / sum_l sum_i |ghost_l,i - lai_l,i|;
    * ``rho_alone``: Spearman(ghost, ghost - (ghost_l - lai_l)): Exact's ranking if only this layer were
      approximated by LAI (how much this layer's term alone hurts);
    * ``rho_fixed``: Spearman(ghost, lai + (ghost_l - lai_l)): LAI's ranking with this layer's term exact;
    * ``ghost_share``: sum_i |ghost_l,i| / sum_l sum_i |ghost_l,i| (the layer's share of the exact score)."""
    from validation.suites.metrics import spearman  # (the suites import this module)

    g, a = _terms(ghost), _terms(lai)
    total_g = sum(g.values())
    total_a = sum(a.values(), torch.zeros_like(total_g))
    err = {k: g[k] - a.get(k, torch.zeros_like(g[k])) for k in g}
    err_sum = sum(float(e.abs().sum()) for e in err.values())
    g_sum = sum(float(v.abs().sum()) for v in g.values())
    rows = []
    for i, (k, gk) in enumerate(g.items()):
        ak = a.get(k)
        den = float(gk.abs().sum())
        rows.append({"layer": k, "layer_index": i, "n_layers": len(g), "has_lai_term": int(ak is not None),
                     "is_last": int(k == last),
                     "term_spearman": spearman(ak, gk) if ak is not None else math.nan,
                     "scale_ratio": float(ak.abs().sum()) / den if ak is not None and den > 0 else math.nan,
                     "error_share": float(err[k].abs().sum()) / err_sum if err_sum > 0 else 0.0,
                     "ghost_share": den / g_sum if g_sum > 0 else math.nan,
                     "rho_alone": spearman(total_g, total_g - err[k]),
                     "rho_fixed": spearman(total_g, total_a + err[k])})
    return rows


__all__ = ["fit_layer_weights", "weighted_lai", "layer_diagnostics", "last_layer_name"]
