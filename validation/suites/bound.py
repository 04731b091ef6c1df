"""Bound suite: the theory's bounds on the Ghost - LAI error, checked on every sample of the scored batch.

At one scored step (float64 model and batches, a :class:`StepContext`):

* Ghost, LAI (all layers) and Exact scores; ``error = ghost - lai``;
* ``theory.decomposition`` (the error split by layer) — its layers must sum to the error;
* ``theory.data_bound`` and ``theory.apriori_bound`` (the latter may raise ``NotImplementedError`` for
  architectures where only the data bound is valid, e.g. attention/LayerNorm: recorded as not available);
* a violation is ``|error_i| > bound_i + tol`` with ``tol = rel_tol * max(max_i |ghost_i|, max_i |lai_i|)``
  (``rel_tol = 1e-9``: float64 rounding of sums over ~1e3-1e6 terms stays far below it, a real violation
  does not); the count must be zero;
* tightness ``|error_i| / bound_i`` (1 = the bound is attained; 0 when both vanish);
* each layer's share of the error ``|E_l,i| / sum_l |E_l,i|``;
* ``theory.kendall_lower_bound(ghost, bound)`` (bound = the data bound, else the a-priori one) next to the
  actual Kendall tau-b of LAI vs Ghost, and (when theory provides it) ``theory.guaranteed_filter_accuracy(
  ghost, bound)`` next to the measured share of samples where the filter ``keep = score >= 0`` decides the
  same on LAI as on Ghost.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .context import StepContext
from .metrics import kendall

REL_TOL = 1e-9


def _f(t: Tensor) -> list[float]:
    return t.detach().double().cpu().tolist()


def _rel(a: Tensor, b: Tensor, scale: float) -> float:
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _vec(v: Any) -> Tensor:
    return torch.as_tensor(v).detach().double().cpu().reshape(-1)


def bound_step(ctx: StepContext, theory: ModuleType | None = None, rel_tol: float = REL_TOL,
               data_bound: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Rows of the ``bound``, ``bound_layers`` and ``bound_steps`` tables for one scored step.

    ``data_bound=False`` skips ``theory.data_bound`` (recorded as not available), for settings where its
    per-sample Jacobians are too costly (the byte-level transformer in the quick profile)."""
    if theory is None:
        import theory as th  # a core package; ``theory=`` substitutes a stand-in (tests)
    else:
        th = theory
    ctx.theory_value((id(th), "_object"), lambda: th)  # keeps th alive with the memo: its id stays unique there
    args = (ctx.model, ctx.loss_fn, ctx.train, ctx.ref, ctx.lr)
    ghost = ctx.scores("ghost").detach().double().cpu()
    lai = ctx.scores("lai").detach().double().cpu()
    exact = ctx.scores("exact").detach().double().cpu()
    decomp = ctx.theory_value((id(th), "decomposition"), lambda: th.decomposition(*args))
    decomp = {str(k): _vec(v) for k, v in decomp.items()}
    data_b = _vec(ctx.theory_value((id(th), "data_bound"), lambda: th.data_bound(*args))) if data_bound else None
    try:
        apriori = _vec(ctx.theory_value((id(th), "apriori_bound"), lambda: th.apriori_bound(*args)))
    except NotImplementedError:
        apriori = None

    n = ctx.n
    error = ghost - lai
    abs_err = error.abs()
    scale = max(float(ghost.abs().max()), float(lai.abs().max())) if n else 0.0
    tol = rel_tol * scale
    layer_sum = sum(decomp.values(), torch.zeros(n, dtype=torch.float64))
    abs_layers = torch.stack([v.abs() for v in decomp.values()]) if decomp else torch.zeros(0, n, dtype=torch.float64)
    layer_total = abs_layers.sum(0)

    def check(bound: Tensor | None) -> tuple[list[Any], list[Any], list[Any], int, float | None]:
        """Per-sample bound, tightness and violation (None when the bound is not available), count, median."""
        if bound is None:
            return [None] * n, [None] * n, [None] * n, 0, None
        t = torch.where((abs_err == 0) & (bound == 0), torch.zeros_like(abs_err), abs_err / bound)
        viol = abs_err > bound + tol
        return (bound.tolist(), t.tolist(), [int(v) for v in viol.tolist()], int(viol.sum()),
                float(t.median()) if n else None)

    b_d, t_d, v_d, nv_d, med_d = check(data_b)
    b_a, t_a, v_a, nv_a, med_a = check(apriori)

    key = {"model": ctx.model_name, "seed": ctx.seed, "step": ctx.step}
    ids = ctx.ids.cpu().tolist()
    noisy = [int(v) for v in ctx.is_noisy.cpu().tolist()]
    rows = [{**key, "sample": ids[j], "is_noisy": noisy[j], "ghost": float(ghost[j]), "lai": float(lai[j]),
             "exact": float(exact[j]), "error": float(error[j]), "abs_error": float(abs_err[j]),
             "decomposition_sum": float(layer_sum[j]), "data_bound": b_d[j], "apriori_bound": b_a[j],
             "tightness_data": t_d[j], "tightness_apriori": t_a[j], "violation_data": v_d[j],
             "violation_apriori": v_a[j]} for j in range(n)]
    layer_rows = []
    for name, e in decomp.items():
        share = torch.where(layer_total > 0, e.abs() / layer_total.clamp_min(1e-300), torch.zeros_like(e))
        layer_rows.extend({**key, "sample": ids[j], "layer": name, "error": float(e[j]), "share": float(share[j])}
                          for j in range(n))

    tightest = data_b if data_b is not None else apriori  # the ranking corollaries use the tightest bound at hand
    k_act = kendall(lai, ghost)
    k_lb = float(th.kendall_lower_bound(ghost, tightest)) if tightest is not None and n >= 2 else math.nan
    filt_g = filt_a = None
    if tightest is not None and callable(getattr(th, "guaranteed_filter_accuracy", None)):
        filt_g = float(th.guaranteed_filter_accuracy(ghost, tightest))
        filt_a = float(((ghost >= 0) == (lai >= 0)).double().mean())
    step_row = {**key, "n": n, "violations_data": nv_d, "violations_apriori": nv_a,
                "data_available": int(data_b is not None), "apriori_available": int(apriori is not None),
                "tolerance": tol, "median_tightness_data": med_d, "median_tightness_apriori": med_a,
                "ghost_vs_exact_rel_err": _rel(ghost, exact, max(float(exact.abs().max()), 1e-300) if n else 0.0),
                "decomposition_rel_err": _rel(layer_sum, error, scale),
                "kendall_lai_ghost": k_act, "kendall_lower_bound": k_lb,
                "kendall_bound_holds": None if math.isnan(k_lb) or math.isnan(k_act) else int(k_act >= k_lb - 1e-12),
                "filter_guaranteed": filt_g, "filter_agreement": filt_a,
                "filter_bound_holds": None if filt_g is None else int(filt_a >= filt_g)}
    return {"bound": rows, "bound_layers": layer_rows, "bound_steps": [step_row]}


__all__ = ["bound_step", "REL_TOL"]
