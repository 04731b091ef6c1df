"""Headline numbers and checks of a run folder: ``summary.json`` and ``report.md``.

``summary.json`` keys (medians are over all scored steps and seeds of the folder's units):

* ``bound_violations`` (int): samples whose |Ghost - LAI| exceeds the data or a-priori bound (+ tolerance);
  null when the bound suite has not run;
* ``spearman_vs_exact`` / ``spearman_vs_counterfactual`` / ``spearman_vs_counterfactual_small_lr``:
  {model: {estimator: median Spearman}};
* ``kendall_vs_exact``, ``topk_overlap_vs_exact``, ``sign_agreement_vs_exact``: the same for those metrics;
* ``noisy_auroc``: {model: {estimator: median AUROC}} (noisy = positive, -score the detector);
  ``noisy_auroc_final``: the same at the last scored step only;
* ``cost_ratio_to_train_step``, ``cost_peak_ratio_to_train_step``: {model: {estimator: ratio}} at the
  model's headline cost point ``cost_headline`` ({model: {"width", "batch"}}: the largest width and batch);
* ``bound``: {model: {"violations", "steps", "median_tightness_data", "median_tightness_apriori",
  "apriori_available", "max_ghost_vs_exact_rel_err", "max_decomposition_rel_err", "layer_share"}};
* ``training``: {model: {"final_ref_loss", "final_ref_accuracy"}} (median over seeds at the last step);
* ``checks``: [{"name", "kind" (theory | expectation), "passed" (true/false/null = not run), "detail"}];
  theory checks must pass (they are identities or proven bounds); expectations are empirical findings;
* ``units``: {suite: number of finished units}; ``config_id``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

from .results import RunDir, atomic_write_json, atomic_write_text, config_id

EXACT_TOL = 1e-8  # float64: Ghost vs Exact and the decomposition identity are equal up to rounding


def _median(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _group_median(rows: list[dict[str, Any]], value: str, **where: Any) -> dict[str, dict[str, float | None]]:
    groups: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            groups[r["model"]][r["estimator"]].append(r.get(value))
    return {m: {e: _median(v) for e, v in est.items()} for m, est in groups.items()}


def _last_step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        k = (r["model"], r["seed"])
        last[k] = max(last.get(k, r["step"]), r["step"])
    return [r for r in rows if r["step"] == last[(r["model"], r["seed"])]]


def _bound_summary(rd: RunDir) -> tuple[int | None, dict[str, Any]]:
    steps = rd.table_rows("bound_steps")
    if not steps:
        return None, {}
    layers = rd.table_rows("bound_layers")
    out: dict[str, Any] = {}
    total = 0
    for model in sorted({r["model"] for r in steps}):
        rs = [r for r in steps if r["model"] == model]
        v = sum(int(r["violations_data"]) + int(r["violations_apriori"]) for r in rs)
        total += v
        share: dict[str, list[float]] = defaultdict(list)
        for r in layers:
            if r["model"] == model:
                share[r["layer"]].append(r["share"])
        out[model] = {
            "violations": v, "steps": len(rs),
            "median_tightness_data": _median(r["median_tightness_data"] for r in rs),
            "median_tightness_apriori": _median(r["median_tightness_apriori"] for r in rs),
            "data_available": all(bool(r.get("data_available", 1)) for r in rs),
            "apriori_available": all(bool(r["apriori_available"]) for r in rs),
            "n_scored": max(int(r["n"]) for r in rs),
            "max_ghost_vs_exact_rel_err": max(float(r["ghost_vs_exact_rel_err"]) for r in rs),
            "max_decomposition_rel_err": max(float(r["decomposition_rel_err"]) for r in rs),
            "kendall_bound_failures": sum(1 for r in rs if r.get("kendall_bound_holds") == 0),
            "filter_bound_failures": sum(1 for r in rs if r.get("filter_bound_holds") == 0),
            "median_filter_guaranteed": _median(r.get("filter_guaranteed") for r in rs),
            "median_filter_agreement": _median(r.get("filter_agreement") for r in rs),
            "median_kendall_lai_ghost": _median(r["kendall_lai_ghost"] for r in rs),
            "median_kendall_lower_bound": _median(r["kendall_lower_bound"] for r in rs),
            "layer_share": {k: statistics.fmean(v) for k, v in share.items()},
        }
    return total, out


def _cost_summary(rows: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    time_r: dict[str, dict[str, Any]] = {}
    peak_r: dict[str, dict[str, Any]] = {}
    head: dict[str, dict[str, int]] = {}
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        w = max(r["width"] for r in rs)
        b = max(r["batch"] for r in rs if r["width"] == w)
        pick = [r for r in rs if r["width"] == w and r["batch"] == b]
        head[model] = {"width": w, "batch": b}
        time_r[model] = {r["estimator"]: r["ratio_to_train_step"] for r in pick}
        peak_r[model] = {r["estimator"]: r["peak_ratio_to_train_step"] for r in pick}
    return time_r, peak_r, head


def _check(name: str, kind: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "passed": passed, "detail": detail}


def summarize(rd: RunDir) -> dict[str, Any]:
    """The summary dict of a run folder (see the module docstring)."""
    config = rd.read_config()
    fid = rd.table_rows("fidelity")
    auroc = rd.table_rows("auroc")
    cost = rd.table_rows("cost")
    training = rd.table_rows("training")
    violations, bound = _bound_summary(rd)
    cost_t, cost_p, cost_head = _cost_summary(cost) if cost else ({}, {}, {})
    final_train = {}
    for model in sorted({r["model"] for r in training}):
        last = _last_step_rows([r for r in training if r["model"] == model])
        final_train[model] = {"step": last[0]["step"], "final_ref_loss": _median(r["ref_loss"] for r in last),
                              "final_ref_accuracy": _median(r["ref_accuracy"] for r in last)}
    s: dict[str, Any] = {
        "config_id": config_id(config),
        "profile": config.get("profile"),
        "bound_violations": violations,
        "spearman_vs_exact": _group_median(fid, "spearman", target="exact"),
        "spearman_vs_counterfactual": _group_median(fid, "spearman", target="counterfactual"),
        "spearman_vs_counterfactual_small_lr": _group_median(fid, "spearman", target="counterfactual_small_lr"),
        "kendall_vs_exact": _group_median(fid, "kendall", target="exact"),
        "topk_overlap_vs_exact": _group_median(fid, "topk_overlap", target="exact"),
        "sign_agreement_vs_exact": _group_median(fid, "sign_agreement", target="exact"),
        "noisy_auroc": _group_median(auroc, "auroc"),
        "noisy_auroc_final": _group_median(_last_step_rows(auroc), "auroc") if auroc else {},
        "cost_ratio_to_train_step": cost_t,
        "cost_peak_ratio_to_train_step": cost_p,
        "cost_headline": cost_head,
        "bound": bound,
        "training": final_train,
        "units": {suite: sum(1 for _ in rd.iter_units(suite)) for suite in ("bound", "fidelity", "cost")},
    }
    s["checks"] = checks(s)
    return s


def checks(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Pass/fail of each headline claim (None = not run)."""
    out = []
    bound = s["bound"]
    v = s["bound_violations"]
    out.append(_check("zero bound violations", "theory", None if v is None else v == 0,
                      "bound suite not run" if v is None else f"{v} violations over "
                      f"{sum(b['steps'] for b in bound.values())} scored steps"))
    if bound:
        err = max(b["max_ghost_vs_exact_rel_err"] for b in bound.values())
        out.append(_check("Ghost equals Exact (float64)", "theory", err <= EXACT_TOL,
                          f"max relative difference {err:.2e} (tolerance {EXACT_TOL:g})"))
        err = max(b["max_decomposition_rel_err"] for b in bound.values())
        out.append(_check("per-layer decomposition sums to Ghost - LAI", "theory", err <= EXACT_TOL,
                          f"max relative difference {err:.2e} (tolerance {EXACT_TOL:g})"))
        fails = sum(b["kendall_bound_failures"] for b in bound.values())
        out.append(_check("Kendall tau(LAI, Ghost) >= theory's lower bound", "theory", fails == 0,
                          f"{fails} scored steps below the bound"))
        fails = sum(b["filter_bound_failures"] for b in bound.values())
        out.append(_check("filter keep = score >= 0 agrees at least where guaranteed", "theory", fails == 0,
                          f"{fails} scored steps below the guaranteed agreement"))
    else:
        for name in ("Ghost equals Exact (float64)", "per-layer decomposition sums to Ghost - LAI"):
            out.append(_check(name, "theory", None, "bound suite not run"))
    for model, est in sorted(s["spearman_vs_exact"].items()):
        rho = est.get("lai")
        out.append(_check(f"{model}: LAI ranks like Exact (median Spearman > 0.5)", "expectation",
                          None if rho is None else rho > 0.5, "no value" if rho is None else f"{rho:.3f}"))
    for model, est in sorted(s["noisy_auroc"].items()):
        a = est.get("lai")
        out.append(_check(f"{model}: LAI flags noisy samples better than chance (AUROC > 0.5)", "expectation",
                          None if a is None else a > 0.5, "no value" if a is None else f"{a:.3f}"))
    for model, est in sorted(s["cost_ratio_to_train_step"].items()):
        lai, ex = est.get("lai"), est.get("exact")
        ok = None if lai is None or ex is None else lai < ex
        out.append(_check(f"{model}: LAI is cheaper than Exact (time)", "expectation", ok,
                          f"LAI {lai:.2f}x, Exact {ex:.2f}x a training step" if ok is not None else "no value"))
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(title: str, data: dict[str, dict[str, Any]], digits: int = 3) -> list[str]:
    if not data:
        return []
    cols: list[str] = []
    for est in data.values():
        cols.extend(e for e in est if e not in cols)
    lines = [f"### {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, est in data.items():
        lines.append(f"| {model} | " + " | ".join(_fmt(est.get(c), digits) for c in cols) + " |")
    return lines + [""]


def render(s: dict[str, Any], config: dict[str, Any]) -> str:
    """Markdown report of a summary."""
    mark = {True: "PASS", False: "FAIL", None: "not run"}
    lines = [f"# Validation run `{s['profile']}-{s['config_id']}`", "",
             f"Profile `{config.get('profile')}`, seeds {config.get('seeds')}, device `{config.get('device')}`. "
             f"Finished units: {s['units']}.", "", "## Checks", "", "| check | kind | result | detail |",
             "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['kind']} | {mark[c['passed']]} | {c['detail']} |" for c in s["checks"]]
    lines += ["", f"**Bound violations: {_fmt(s['bound_violations'])}**", ""]
    if s["bound"]:
        lines += _table("Bound suite (float64)", {m: {k: v for k, v in b.items() if k != "layer_share"}
                                                  for m, b in s["bound"].items()}, digits=3)
    lines += ["## Fidelity", "", "Medians over scored steps and seeds. Estimators: exact, ghost, lai (all layers), "
              "lai-last, lai-aligned/lai-last-aligned (transformer, aligned token pairing), tracin, tracin-last, "
              "loss (= -loss, loss-only baseline), counterfactual (actual one-step effect at the training lr), "
              "counterfactual_small_lr (the same for a step at lr / 10, rescaled). Where the step at the training lr "
              "overshoots along sharp directions, the actual effect departs from every first-order score.", ""]
    lines += _table("Spearman vs Exact", s["spearman_vs_exact"])
    lines += _table("Spearman vs one-step counterfactual (training lr)", s["spearman_vs_counterfactual"])
    lines += _table("Spearman vs one-step counterfactual at lr / 10 (first-order regime)",
                    s["spearman_vs_counterfactual_small_lr"])
    lines += _table("Noisy-sample AUROC (noisy = positive, -score detects)", s["noisy_auroc"])
    lines += _table("Noisy-sample AUROC at the last scored step", s["noisy_auroc_final"])
    if s["cost_ratio_to_train_step"]:
        lines += ["## Cost", "", "Ratios to one SGD training step on the same batch, at "
                  + ", ".join(f"{m}: width {h['width']}, batch {h['batch']}" for m, h in s["cost_headline"].items())
                  + " (all points in cost.csv). The forward and forward_backward baselines run over the train and "
                  "reference batches together, as every estimator needs both (validation/cost.py).", ""]
        lines += _table("Wall time / training step", s["cost_ratio_to_train_step"], digits=2)
        lines += _table("Peak memory / training step", s["cost_peak_ratio_to_train_step"], digits=2)
    if s["training"]:
        lines += _table("Training (last scored step)", s["training"])
    lines += ["Tables: bound.csv, bound_layers.csv, bound_steps.csv, fidelity.csv, auroc.csv, scores.csv, cost.csv, "
              "training.csv (formats: validation/results.py).", ""]
    return "\n".join(lines)


def write_report(rd: RunDir) -> dict[str, Any]:
    """Write the CSV tables, summary.json and report.md of a run folder; returns the summary."""
    rd.write_tables()
    s = summarize(rd)
    atomic_write_json(rd.root / "summary.json", s)
    atomic_write_text(rd.root / "report.md", render(s, rd.read_config()))
    return s


__all__ = ["summarize", "write_report", "render", "checks"]
