"""Headline numbers, checks and verdict of a run folder: ``summary.json`` and ``report.md``.

``summary.json`` keys (medians are over all scored steps and seeds of the folder's units):

* ``verdict``: the report's plain-words conclusions (list of markdown lines, see report_render.py);
* ``checks``: [{"name", "kind" (theory | expectation | claim), "status" (pass | fail | not run | no guarantee |
  inconclusive), "passed" (true / false / null = not decided), "detail"}]. Theory checks must pass (identities
  and proven bounds); a check whose guarantee is vacuous at every step is "no guarantee", never pass.
  Expectations pass only when the 95 % interval clears the threshold (fail when it lies below it);
* ``bound_violations`` (int): samples whose |Ghost - LAI| exceeds a bound, over the steps where a bound was
  computed; null when no step had one; ``bound``: per model, see ``report_evidence.bound_evidence``;
* ``spearman_vs_exact`` / ``spearman_vs_counterfactual`` / ``spearman_vs_counterfactual_small_lr``,
  ``kendall_vs_exact``, ``topk_overlap_vs_exact``, ``sign_agreement_vs_exact``: {model: {estimator: median}};
* ``noisy_auroc``, ``noisy_auroc_final`` (last scored step): {model: {estimator: median AUROC}};
* ``evidence``: {"spearman": {model: {estimator: interval}}, "spearman_diff": {model: {"a-vs-b": interval}},
  "auroc": {model: {score: interval with n_positive}}, "positives": {model: [noisy samples per seed]}}, every
  interval a ``validation.report.stats`` dict (value, low, high, n, confidence, method);
* ``layers``: {model: per-layer comparison of LAI's and Ghost's terms} (``report_evidence.layer_evidence``);
* ``cost_ratio_to_train_step``, ``cost_peak_ratio_to_train_step``: {model: {estimator: ratio}} at
  ``cost_headline`` ({model: {"width", "batch", "forward_ms"}}: the largest width and batch, and the wall time
  of one forward pass there);
* ``training``: {model: {"step", "final_ref_loss", "final_ref_accuracy"}};
* ``curation``: rows of the curated-training paired table (method - vanilla per task and protocol), or null;
* ``units``: {suite: finished units}; ``config_id``, ``profile``.

:func:`failed_theory_checks` names the theory checks that failed (``lai run`` exits non-zero on them).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from validation.report.evidence import auroc_evidence, bound_evidence, canon, layer_evidence, rank_evidence
from validation.report.results import RunDir, atomic_write_json, atomic_write_text, config_id

EXACT_TOL = 1e-8  # float64: Ghost vs Exact and the decomposition identity are equal up to rounding
RANK_THRESHOLD = 0.5  # "ranks like Exact": Spearman interval above this
CHANCE = 0.5


def _median(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _group_median(rows: list[dict[str, Any]], value: str, **where: Any) -> dict[str, dict[str, float | None]]:
    groups: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            groups[r["model"]][canon(r["estimator"])].append(r.get(value))
    return {m: {e: _median(v) for e, v in est.items()} for m, est in groups.items()}


def _last_step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        k = (r["model"], r["seed"])
        last[k] = max(last.get(k, r["step"]), r["step"])
    return [r for r in rows if r["step"] == last[(r["model"], r["seed"])]]


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
        fwd = next((r for r in pick if canon(r["estimator"]) == "forward"), None)
        if fwd is not None and fwd.get("median_s") is not None:
            head[model]["forward_ms"] = float(fwd["median_s"]) * 1e3
        time_r[model] = {canon(r["estimator"]): r["ratio_to_train_step"] for r in pick}
        peak_r[model] = {canon(r["estimator"]): r["peak_ratio_to_train_step"] for r in pick}
    return time_r, peak_r, head


def find_curation(rd: RunDir) -> Path | None:
    """Where the curated-training results of this run are: ``<run>/curate`` or ``<results root>/curate``."""
    for p in (rd.root / "curate", rd.root.parent / "curate"):
        if p.is_dir():
            return p
    return None


def curation_rows(folder: Path | None) -> tuple[list[dict[str, Any]] | None, str]:
    """(paired rows method - vanilla, note) from ``validation.report.curation`` (the curation tables' home);
    (None, why) when there are none or they cannot be read."""
    if folder is None:
        return None, "no curated-training results next to this run"
    try:
        from validation.report.curation import load_curation, paired
    except ImportError as exc:
        return None, f"curation tables unavailable ({exc})"
    try:
        res = load_curation(folder)
        if not len(res.final):
            return None, f"no finished curated-training units under {folder}"
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        return [{k: clean(v) for k, v in r.items()} for r in paired(res.final).rows], f"from {folder}"
    except Exception as exc:  # a malformed results folder: say so instead of failing the whole report
        return None, f"curation results under {folder} could not be read: {type(exc).__name__}: {exc}"


def summarize(rd: RunDir, curate: str | Path | None = None) -> dict[str, Any]:
    """The summary dict of a run folder (see the module docstring). ``curate``: the curated-training results
    folder (default: :func:`find_curation`)."""
    config = rd.read_config()
    fid = rd.table_rows("fidelity")
    auroc = rd.table_rows("auroc")
    cost = rd.table_rows("cost")
    training = rd.table_rows("training")
    scores = rd.table_rows("scores")
    bound = bound_evidence(rd.table_rows("bound_steps"))
    cost_t, cost_p, cost_head = _cost_summary(cost) if cost else ({}, {}, {})
    final_train = {}
    for model in sorted({r["model"] for r in training}):
        last = _last_step_rows([r for r in training if r["model"] == model])
        final_train[model] = {"step": last[0]["step"], "final_ref_loss": _median(r["ref_loss"] for r in last),
                              "final_ref_accuracy": _median(r["ref_accuracy"] for r in last)}
    ranks = rank_evidence(scores) if scores else {}
    aur = auroc_evidence(scores) if scores else {}
    with_bound = [b for b in bound.values() if b["steps_with_bound"]]
    cur_rows, cur_note = curation_rows(Path(curate) if curate is not None else find_curation(rd))
    s: dict[str, Any] = {
        "config_id": config_id(config),
        "profile": config.get("profile"),
        "bound_violations": sum(b["violations"] for b in with_bound) if with_bound else None,
        "spearman_vs_exact": _group_median(fid, "spearman", target="exact"),
        "spearman_vs_counterfactual": _group_median(fid, "spearman", target="counterfactual"),
        "spearman_vs_counterfactual_small_lr": _group_median(fid, "spearman", target="counterfactual_small_lr"),
        "kendall_vs_exact": _group_median(fid, "kendall", target="exact"),
        "topk_overlap_vs_exact": _group_median(fid, "topk_overlap", target="exact"),
        "sign_agreement_vs_exact": _group_median(fid, "sign_agreement", target="exact"),
        "noisy_auroc": _group_median(auroc, "auroc"),
        "noisy_auroc_final": _group_median(_last_step_rows(auroc), "auroc") if auroc else {},
        "evidence": {
            "spearman": {m: {e: v.to_dict() for e, v in r["spearman"].items()} for m, r in ranks.items()},
            "spearman_diff": {m: {k: v.to_dict() for k, v in r["diff"].items()} for m, r in ranks.items()},
            "auroc": {m: {e: v.to_dict() for e, v in r["auroc"].items()} for m, r in aur.items()},
            "positives": {m: r["positives"] for m, r in aur.items()},
        },
        "layers": layer_evidence(rd.table_rows("layer_terms")),
        "cost_ratio_to_train_step": cost_t,
        "cost_peak_ratio_to_train_step": cost_p,
        "cost_headline": cost_head,
        "bound": bound,
        "training": final_train,
        "curation": cur_rows,
        "curation_note": cur_note,
        "units": {suite: sum(1 for _ in rd.iter_units(suite)) for suite in ("bound", "fidelity", "cost")},
    }
    s["checks"] = checks(s)
    from validation.report.render import verdict

    s["verdict"] = verdict(s)
    return s


def _check(name: str, kind: str, status: str, detail: str) -> dict[str, Any]:
    passed = {"pass": True, "fail": False}.get(status)
    return {"name": name, "kind": kind, "status": status, "passed": passed, "detail": detail}


def _interval_status(est: dict[str, Any] | None, threshold: float) -> str:
    """pass: the interval lies above ``threshold``; fail: below; inconclusive: it contains it (or no interval)."""
    if not est or est.get("value") is None:
        return "not run"
    lo, hi = est.get("low"), est.get("high")
    if lo is not None and lo > threshold:
        return "pass"
    if hi is not None and hi < threshold:
        return "fail"
    return "inconclusive"


def _fmt_est(e: dict[str, Any], digits: int = 2) -> str:
    v, lo, hi = e.get("value"), e.get("low"), e.get("high")
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{v:.{digits}f} (no interval)"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def checks(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Each headline claim with its status (see the module docstring)."""
    out = []
    bound = s["bound"]
    with_b = {m: b for m, b in bound.items() if b["steps_with_bound"]}
    without = [f"{m} ({b['steps']} steps)" for m, b in bound.items() if not b["steps_with_bound"]]
    if not bound:
        out.append(_check("the bound holds on every sample", "theory", "not run", "bound suite not run"))
    elif not with_b:
        out.append(_check("the bound holds on every sample", "theory", "not run",
                          "no step had a bound: " + ", ".join(without)))
    else:
        v = sum(b["violations"] for b in with_b.values())
        detail = (f"{v} violations over {sum(b['samples_with_bound'] for b in with_b.values())} samples at "
                  f"{sum(b['steps_with_bound'] for b in with_b.values())} steps with a bound")
        if without:
            detail += "; no bound computed for " + ", ".join(without)
        out.append(_check("the bound holds on every sample", "theory", "pass" if v == 0 else "fail", detail))
    if bound:
        err = max(b["max_ghost_vs_exact_rel_err"] for b in bound.values())
        out.append(_check("Ghost equals Exact (float64)", "theory", "pass" if err <= EXACT_TOL else "fail",
                          f"max relative difference {err:.2e} (tolerance {EXACT_TOL:g})"))
        err = max(b["max_decomposition_rel_err"] for b in bound.values())
        out.append(_check("per-layer decomposition sums to Ghost - LAI", "theory",
                          "pass" if err <= EXACT_TOL else "fail",
                          f"max relative difference {err:.2e} (tolerance {EXACT_TOL:g})"))
        for key, name, trivial in (("kendall", "Kendall tau(LAI, Ghost) >= the bound's guarantee", "tau >= -1"),
                                   ("filter", "filter keep = score >= 0 agrees at least where guaranteed",
                                    "agreement >= 0")):
            inf = sum(b[f"{key}_informative_steps"] for b in with_b.values())
            fails = sum(b[f"{key}_failures"] for b in with_b.values())
            steps = sum(b["steps_with_bound"] for b in with_b.values())
            if not with_b:
                out.append(_check(name, "theory", "not run", "no step had a bound"))
            elif inf == 0:
                out.append(_check(name, "theory", "no guarantee",
                                  f"the bound guarantees only {trivial} at all {steps} steps with a bound"))
            else:
                out.append(_check(name, "theory", "pass" if fails == 0 else "fail",
                                  f"{fails} of {inf} steps with a non-trivial guarantee below it "
                                  f"({steps - inf} steps guarantee only {trivial})"))
    else:
        for name in ("Ghost equals Exact (float64)", "per-layer decomposition sums to Ghost - LAI"):
            out.append(_check(name, "theory", "not run", "bound suite not run"))
    ev = s["evidence"]
    for model, est in sorted(ev["spearman"].items()):
        e = est.get("lai")
        out.append(_check(f"{model}: LAI ranks like Exact (Spearman > {RANK_THRESHOLD})", "expectation",
                          _interval_status(e, RANK_THRESHOLD),
                          f"{_fmt_est(e)} ({e['method']})" if e else "no value"))
    for model, est in sorted(ev["auroc"].items()):
        e = est.get("lai")
        out.append(_check(f"{model}: LAI flags noisy samples better than chance (AUROC > 0.5)", "expectation",
                          _interval_status(e, CHANCE),
                          f"{_fmt_est(e)}, {e['n_positive']} noisy of {e['n']} ({e['method']})" if e else "no value"))
    for model, est in sorted(s["cost_ratio_to_train_step"].items()):
        lai, ex = est.get("lai"), est.get("exact")
        ok = None if lai is None or ex is None else lai < ex
        out.append(_check(f"{model}: LAI is cheaper than Exact (time)", "expectation",
                          "not run" if ok is None else ("pass" if ok else "fail"),
                          f"LAI {lai:.2f}x, Exact {ex:.2f}x a training step" if ok is not None else "no value"))
    return out


def failed_theory_checks(summary: dict[str, Any]) -> list[str]:
    """Names of the theory checks that failed (status "fail"). "not run" and "no guarantee" are not failures:
    a vacuous guarantee cannot fail, and the report says so. ``lai run`` exits non-zero when this is non-empty."""
    return [c["name"] for c in summary["checks"] if c["kind"] == "theory" and c.get("passed") is False]


def write_report(rd: RunDir, curate: str | Path | None = None) -> dict[str, Any]:
    """Write the CSV tables, summary.json and report.md of a run folder; returns the summary. ``curate``: the
    curated-training results folder (default ``<run>/curate`` or ``<results root>/curate`` when present).
    Call it again after curated training finished to add its section (``refresh_report``)."""
    from validation.report.render import render

    rd.write_tables()
    s = summarize(rd, curate)
    atomic_write_json(rd.root / "summary.json", s)
    atomic_write_text(rd.root / "report.md", render(s, rd.read_config()))
    return s


def refresh_report(run: str | Path, curate: str | Path | None = None) -> dict[str, Any]:
    """:func:`write_report` on the run folder at ``run`` (e.g. after the curated-training runs of the main job)."""
    return write_report(RunDir(run), curate)


__all__ = ["summarize", "write_report", "refresh_report", "checks", "failed_theory_checks", "find_curation",
           "curation_rows"]
