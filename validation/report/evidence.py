"""The numbers behind the report's claims, each with its uncertainty (validation/report/stats.py).

From a run folder's tables (rows as dicts, see validation/report/results.py):

* :func:`rank_evidence`: per model and estimator, Spearman vs Exact (mean over scored steps and seeds) with a
  95 % interval, and paired differences between estimators (e.g. last-layer minus all-layer LAI);
* :func:`auroc_evidence`: per model and score, the noisy-sample AUROC with its interval and positives;
* :func:`bound_evidence`: per model, the bound's violations counted over the steps where it was computed, how
  loose it is and whether its ranking/filter guarantees say anything;
* :func:`layer_evidence`: the per-layer comparison of LAI's terms with Ghost's (table ``layer_terms``);
* :func:`auroc_difference`: per model, paired AUROC differences between two scores (e.g. LAI minus the loss);
* :func:`first_order_evidence`: per model, Spearman of Exact vs the actual one-step effect (the fidelity suite's
  ``counterfactual`` targets: a step at the training lr, and at lr / 10), the first-order model's own accuracy.

Intervals: with one or two seeds, a bootstrap over the scored samples (each sample's scores at every step
resampled together); with three or more seeds, a t interval over the per-seed means (the seed-to-seed spread
of training is then the larger uncertainty). ``method`` in every estimate says which.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
from scipy.stats import rankdata

from validation.report.stats import (
    AurocEstimate,
    Estimate,
    auroc_ci,
    mean_ci,
    mean_spearman,
    paired_difference,
    spearman_ci,
    spearman_difference_ci,
    within,
)
from validation.settings import estimators as chosen

SEED_T_MIN = 3  # seeds from which intervals are t intervals over seeds
N_BOOT = 1000


def canon(name: Any) -> str:
    """The registered spelling (``validation.settings.estimators.canonical``: old files use underscores)."""
    return chosen.canonical(name)


def _score_grid(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, dict[int, dict[str, dict[int, Any]]]]]:
    """{model: {seed: {step: {estimator: {sample: (score, is_noisy)}}}}}."""
    grid: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(dict))))
    for r in rows:
        grid[r["model"]][int(r["seed"])][int(r["step"])][canon(r["estimator"])][int(r["sample"])] = (
            float(r["score"]), bool(int(r["is_noisy"] or 0)))
    return grid


def _matrix(per_seed: dict[int, dict[str, dict[int, Any]]], est: str) -> tuple[np.ndarray, np.ndarray] | None:
    """[steps, n] scores of one seed (samples in id order) and the noisy flags [n]; None when missing."""
    steps = sorted(per_seed)
    if any(est not in per_seed[s] for s in steps):
        return None
    ids = sorted(per_seed[steps[0]][est])
    try:
        m = np.array([[per_seed[s][est][i][0] for i in ids] for s in steps], dtype=np.float64)
    except KeyError:
        return None
    noisy = np.array([per_seed[steps[0]][est][i][1] for i in ids], dtype=bool)
    return m, noisy


def _stack(grid_m: dict[int, Any], est: str) -> np.ndarray | None:
    """[seeds * steps, n] (samples matched by position within each seed)."""
    mats = [_matrix(grid_m[s], est) for s in sorted(grid_m)]
    if any(m is None for m in mats) or len({m[0].shape[1] for m in mats}) != 1:
        return None
    return np.concatenate([m[0] for m in mats])


def rank_evidence(score_rows: list[dict[str, Any]], target: str = "exact",
                  pairs: Iterable[tuple[str, str]] = (("lai-last", "lai"), ("lai-fit", "lai"),
                                                      ("lai-fit", "lai-last"))
                  ) -> dict[str, dict[str, Any]]:
    """{model: {"spearman": {estimator: Estimate}, "diff": {"a-vs-b": Estimate}, "seeds": k, "n": samples}}."""
    out: dict[str, dict[str, Any]] = {}
    for model, seeds in _score_grid(score_rows).items():
        k = len(seeds)
        ests = sorted({e for s in seeds.values() for st in s.values() for e in st})
        res: dict[str, Any] = {"spearman": {}, "diff": {}, "seeds": k, "n": None}
        tgt = _stack(seeds, target)
        if tgt is None:
            continue
        res["n"] = tgt.shape[1]
        for e in ests:
            if e == target:
                continue
            if k >= SEED_T_MIN:
                per = [_seed_rho(seeds[s], e, target) for s in sorted(seeds)]
                res["spearman"][e] = within(_with_method(mean_ci(per), f"t over {k} seeds"), -1.0, 1.0)
            else:
                m = _stack(seeds, e)
                if m is not None:
                    res["spearman"][e] = _with_method(spearman_ci(m, tgt, n_resamples=N_BOOT),
                                                      f"bootstrap over {tgt.shape[1]} samples")
        for a, b in pairs:
            if a not in res["spearman"] or b not in res["spearman"]:
                continue
            if k >= SEED_T_MIN:
                d = paired_difference([_seed_rho(seeds[s], a, target) for s in sorted(seeds)],
                                      [_seed_rho(seeds[s], b, target) for s in sorted(seeds)])
                res["diff"][f"{a}-vs-{b}"] = Estimate(d.mean, d.low, d.high, d.n, d.confidence,
                                                      f"paired t over {k} seeds")
            else:
                res["diff"][f"{a}-vs-{b}"] = _with_method(
                    spearman_difference_ci(_stack(seeds, a), _stack(seeds, b), tgt, n_resamples=N_BOOT),
                    f"paired bootstrap over {tgt.shape[1]} samples")
        out[model] = res
    return out


def _paired_estimate(a: list[float], b: list[float], what: str) -> Estimate:
    d = paired_difference(a, b)
    return Estimate(d.mean, d.low, d.high, d.n, d.confidence, f"paired t over {d.n} {what}")


def _step_auroc(m: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """AUROC of -score per scored step (rows of ``m``); NaN where a class is missing."""
    n_pos, n_neg = int(noisy.sum()), int((~noisy).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(len(m), math.nan)
    ranks = rankdata(-m, axis=1)  # Mann-Whitney: ties count one half
    return (ranks[:, noisy].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _boot_auroc_diff(xa: list, xb: list, n_resamples: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean AUROC(a) - AUROC(b) with the samples of each seed resampled (stratified:
    noisy and clean separately, a sample's scores at every step and under both scores moving together)."""
    rng = np.random.default_rng(seed)
    dist = np.empty(n_resamples)
    for k in range(n_resamples):
        per = []
        for (ma, noisy), (mb, _) in zip(xa, xb):
            pos, neg = np.flatnonzero(noisy), np.flatnonzero(~noisy)
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
            y = noisy[idx]
            per.append(np.nanmean(_step_auroc(ma[:, idx], y) - _step_auroc(mb[:, idx], y)))
        dist[k] = np.nanmean(per)
    q = (1 - 0.95) / 2
    return float(np.nanquantile(dist, q)), float(np.nanquantile(dist, 1 - q))


def auroc_difference(score_rows: list[dict[str, Any]], pairs: Iterable[tuple[str, str]] = (("lai", "loss"),)
                     ) -> dict[str, dict[str, Estimate]]:
    """{model: {"a-vs-b": Estimate of AUROC(a) - AUROC(b)}} (noisy = positive, -score detects; each seed's AUROC
    averaged over its scored steps): a paired t interval over seeds with three or more seeds, else a paired
    stratified bootstrap over the scored samples."""
    out: dict[str, dict[str, Estimate]] = {}
    for model, seeds in _score_grid(score_rows).items():
        k = len(seeds)
        res: dict[str, Estimate] = {}
        for a, b in pairs:
            xa = [_matrix(seeds[s], a) for s in sorted(seeds)]
            xb = [_matrix(seeds[s], b) for s in sorted(seeds)]
            if any(x is None for x in xa + xb) or any(p[0].shape != q[0].shape for p, q in zip(xa, xb)):
                continue
            ua = [float(np.nanmean(_step_auroc(m, noisy))) for m, noisy in xa]
            ub = [float(np.nanmean(_step_auroc(m, noisy))) for m, noisy in xb]
            if k >= SEED_T_MIN:
                d = paired_difference(ua, ub)
                res[f"{a}-vs-{b}"] = Estimate(d.mean, d.low, d.high, d.n, d.confidence, f"paired t over {k} seeds")
            elif all(x[1].any() and (~x[1]).any() for x in xa):
                lo, hi = _boot_auroc_diff(xa, xb)
                n = xa[0][0].shape[1]
                res[f"{a}-vs-{b}"] = Estimate(float(np.mean(ua) - np.mean(ub)), lo, hi, n, 0.95,
                                              f"paired stratified bootstrap over {n} samples")
        if res:
            out[model] = res
    return out


def combined_auroc_difference(score_rows: list[dict[str, Any]], estimator: str = "lai-last") -> dict[str, Estimate]:
    """{model: Estimate of AUROC(loss+<estimator>) - AUROC(loss)} (:func:`auroc_difference`: each seed's AUROC
    averaged over its scored steps, paired t over three or more seeds, else a paired bootstrap): does adding the
    influence score to the loss find the noisy labels better than the loss alone? The combined rank is formed
    here from the ``scores`` table as curation's ``loss+<estimator>`` keeps it: rank(score) + rank(loss from the
    top) (influence.curation.policies.rank_sum with the per-sample losses), so a low value flags a sample. (The
    ``auroc`` table's own ``loss+`` rows are not read: validation/suites/fidelity.py hands rank_sum the loss
    baseline's score, -loss, where it takes the loss, which flips the loss half of the rank.)"""
    combo = f"loss+{estimator}"
    cells: dict = defaultdict(dict)
    names = {n: canon(n) for n in {r["estimator"] for r in score_rows}}  # canon per distinct name, not per row
    for r in score_rows:
        e = names[r["estimator"]]
        if e in (estimator, "loss"):
            cells[(r["model"], r["seed"], r["step"])].setdefault(e, {})[int(r["sample"])] = r
    rows = []
    rank = lambda v: np.argsort(np.argsort(np.asarray(v), kind="stable"), kind="stable")  # noqa: E731
    for by in cells.values():
        if estimator not in by or "loss" not in by:
            continue
        ids = sorted(set(by[estimator]) & set(by["loss"]))
        # the loss baseline's score is -loss: its rank (0 = lowest) is the rank of the loss from the top
        total = (rank([float(by[estimator][i]["score"]) for i in ids])
                 + rank([float(by["loss"][i]["score"]) for i in ids]))
        rows += [by["loss"][i] for i in ids]
        rows += [{**by[estimator][i], "estimator": combo, "score": float(t)} for i, t in zip(ids, total)]
    diff = auroc_difference(rows, pairs=((combo, "loss"),))
    return {m: d[f"{combo}-vs-loss"] for m, d in diff.items() if f"{combo}-vs-loss" in d}


def first_order_evidence(fidelity_rows: list[dict[str, Any]], estimator: str = "exact",
                         targets: tuple[str, ...] = ("counterfactual", "counterfactual_small_lr")
                         ) -> dict[str, dict[str, Estimate]]:
    """{model: {target: Estimate}}: Spearman of ``estimator`` (Exact) vs each one-step counterfactual target,
    mean over scored steps and seeds; t interval over the per-seed means with three or more seeds, else over the
    (seed, step) values."""
    vals: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in fidelity_rows:
        if canon(r["estimator"]) != estimator or r.get("target") not in targets:
            continue
        v = r.get("spearman")
        if v is None or v == "" or not math.isfinite(float(v)):
            continue
        vals[r["model"]][r["target"]][int(r["seed"])].append(float(v))
    out: dict[str, dict[str, Estimate]] = {}
    for model, by_t in vals.items():
        out[model] = {}
        for t, by_seed in by_t.items():
            if len(by_seed) >= SEED_T_MIN:
                e = _with_method(mean_ci([statistics.fmean(v) for v in by_seed.values()]),
                                 f"t over {len(by_seed)} seeds")
            else:
                e = _with_method(mean_ci([x for v in by_seed.values() for x in v]),
                                 f"t over {sum(map(len, by_seed.values()))} scored steps")
            out[model][t] = within(e, -1.0, 1.0)
    return out


def _pair(per_seed: dict, a: str, b: str) -> tuple[np.ndarray, np.ndarray] | None:
    x, y = _matrix(per_seed, a), _matrix(per_seed, b)
    return None if x is None or y is None else (x[0], y[0])


def _seed_rho(per_seed: dict, a: str, target: str) -> float:
    p = _pair(per_seed, a, target)
    return math.nan if p is None else mean_spearman(*p)


def _with_method(e: Estimate, method: str) -> Estimate:
    kw = {k: getattr(e, k) for k in e.__dataclass_fields__}
    kw["method"] = method
    return type(e)(**kw)


def auroc_evidence(score_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: {"auroc": {score: AurocEstimate}, "positives": noisy samples per seed, "n": samples}} (noisy =
    positive; -score is the detector: harmful = low score)."""
    out: dict[str, dict[str, Any]] = {}
    for model, seeds in _score_grid(score_rows).items():
        k = len(seeds)
        ests = sorted({e for s in seeds.values() for st in s.values() for e in st})
        res: dict[str, Any] = {"auroc": {}, "positives": [], "n": None}
        for e in ests:
            mats = [_matrix(seeds[s], e) for s in sorted(seeds)]
            if any(m is None for m in mats):
                continue
            per = [auroc_ci(noisy, -m, n_resamples=N_BOOT if k < SEED_T_MIN else 1) for m, noisy in mats]
            res["positives"] = [p.n_positive for p in per]
            res["n"] = per[0].n
            if k >= SEED_T_MIN:
                mc = mean_ci([p.value for p in per])
                res["auroc"][e] = within(AurocEstimate(mc.value, mc.low, mc.high, per[0].n, mc.confidence,
                                                       f"t over {k} seeds", int(np.median(res["positives"])),
                                                       per[0].n_negative), 0.0, 1.0)
            elif k == 1:
                res["auroc"][e] = _with_method(per[0], f"stratified bootstrap over {per[0].n} samples")
            else:  # two seeds: average the values; the interval of the pooled resamples is not available
                res["auroc"][e] = AurocEstimate(float(np.mean([p.value for p in per])), math.nan, math.nan,
                                                per[0].n, per[0].confidence, "2 seeds: no interval",
                                                per[0].n_positive, per[0].n_negative)
        out[model] = res
    return out


def _is_vacuous_kendall(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or float(v) <= -1.0 + 1e-12


def bound_evidence(step_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: steps (scored), steps_with_bound (a data or a-priori bound computed), samples_with_bound,
    violations (over those), median_ratio_data/apriori (median over steps of the median |error| / bound),
    kendall_informative_steps / filter_informative_steps (steps whose guarantee is better than the trivial
    tau >= -1 / agreement >= 0), kendall_failures / filter_failures (over the informative steps),
    median_kendall_lb, median_kendall, median_filter_guaranteed, median_filter_agreement."""
    out = {}
    for model in sorted({r["model"] for r in step_rows}):
        rs = [r for r in step_rows if r["model"] == model]
        with_b = [r for r in rs if int(r.get("data_available", 1) or 0) or int(r.get("apriori_available") or 0)]
        k_inf = [r for r in with_b if not _is_vacuous_kendall(r.get("kendall_lower_bound"))]
        f_inf = [r for r in with_b if r.get("filter_guaranteed") not in (None, "") and
                 float(r["filter_guaranteed"]) > 0]

        def med(key: str, src: list[dict[str, Any]]) -> float | None:
            v = [float(r[key]) for r in src if r.get(key) not in (None, "") and math.isfinite(float(r[key]))]
            return statistics.median(v) if v else None

        out[model] = {
            "steps": len(rs), "steps_with_bound": len(with_b),
            "samples_with_bound": sum(int(r["n"]) for r in with_b),
            "violations": sum(int(r["violations_data"]) + int(r["violations_apriori"]) for r in with_b),
            "data_steps": sum(1 for r in rs if int(r.get("data_available", 1) or 0)),
            "apriori_steps": sum(1 for r in rs if int(r.get("apriori_available") or 0)),
            "median_ratio_data": med("median_tightness_data", rs),
            "median_ratio_apriori": med("median_tightness_apriori", rs),
            "kendall_informative_steps": len(k_inf),
            "kendall_failures": sum(1 for r in k_inf if r.get("kendall_bound_holds") in (0, "0")),
            "filter_informative_steps": len(f_inf),
            "filter_failures": sum(1 for r in f_inf if r.get("filter_bound_holds") in (0, "0")),
            "median_kendall_lb": med("kendall_lower_bound", with_b), "median_kendall": med("kendall_lai_ghost", rs),
            "median_filter_guaranteed": med("filter_guaranteed", with_b),
            "median_filter_agreement": med("filter_agreement", with_b),
            "max_ghost_vs_exact_rel_err": max(float(r["ghost_vs_exact_rel_err"]) for r in rs),
            "max_decomposition_rel_err": max(float(r["decomposition_rel_err"]) for r in rs),
        }
    return out


def layer_evidence(layer_rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{model: [per layer, in execution order: layer, has_lai_term, is_last, term_spearman (mean over steps and
    seeds), scale_ratio (median), error_share (mean), ghost_share (mean), rho_alone (mean), rho_fixed (mean),
    fit_weight (median; None when lai-fit was not scored), n (steps x seeds)]}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in sorted({r["model"] for r in layer_rows}):
        rs = [r for r in layer_rows if r["model"] == model]
        order: dict[str, int] = {}
        for r in rs:
            order.setdefault(r["layer"], int(r["layer_index"]))
        rows = []
        for layer in sorted(order, key=order.get):
            lr = [r for r in rs if r["layer"] == layer]

            def agg(key: str, fn: Any = statistics.fmean) -> float | None:
                v = [float(r[key]) for r in lr if r.get(key) not in (None, "") and math.isfinite(float(r[key]))]
                return fn(v) if v else None

            rows.append({"layer": layer, "has_lai_term": int(lr[0]["has_lai_term"]), "is_last": int(lr[0]["is_last"]),
                         "term_spearman": agg("term_spearman"), "scale_ratio": agg("scale_ratio", statistics.median),
                         "error_share": agg("error_share"), "ghost_share": agg("ghost_share"),
                         "rho_alone": agg("rho_alone"), "rho_fixed": agg("rho_fixed"),
                         "fit_weight": agg("fit_weight", statistics.median), "n": len(lr)})
        out[model] = rows
    return out


__all__ = ["rank_evidence", "auroc_evidence", "auroc_difference", "combined_auroc_difference", "first_order_evidence", "bound_evidence", "layer_evidence", "canon"]
