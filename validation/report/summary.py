"""Headline numbers, checks and verdict of a run folder: ``summary.json`` and ``report.md``.

``summary.json`` keys (medians are over all scored steps and seeds of the folder's units):

* ``verdict``: the report's plain-words conclusions (list of markdown lines, see report_render.py);
* ``checks``: [{"name", "kind" (theory | expectation | claim), "status" (pass | fail | not run | no guarantee |
  inconclusive), "passed" (true / false / null = not decided), "detail"}]. Theory checks are software checks
  (regression tests of the implementation: identities and proven bounds), not evidence for the paper's claim;
  they must pass; a check whose guarantee is vacuous at every step is "no guarantee", never pass.
  Expectations are paired comparisons (``comparisons``): LAI passes one only when the 95 % interval of the
  difference shows LAI better, fails when it shows the other better, and is inconclusive ("no difference shown")
  when it covers 0; "ranks like Exact" passes only when the mean Spearman and the interval's lower end are at
  least ``RANK_BAR`` (0.9), fails when the mean is below it. Claims (the README's cost ranges) pass only inside
  the stated range;
* ``comparisons``: [{"question" (fidelity | detection | curation), "where" (model, or task/protocol), "a", "b",
  "value" (a - b), "low", "high", "n", "method", "finding" (a | b | none: which is better by the interval; none =
  the interval covers 0), "metric"}] (see :func:`comparisons`);
* ``first_order``: {model: {"counterfactual" | "counterfactual_small_lr": interval}}: Spearman of Exact vs the
  actual one-step effect at the training lr and at lr / 10 (``report_evidence.first_order_evidence``);
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
  ``curation_vs_lai``: the same with LAI as the control (method - LAI), or null;
* ``units``: {suite: finished units}; ``config_id``, ``profile``.

:func:`failed_theory_checks` names the theory checks that failed (``lai run`` exits non-zero on them).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from validation.report.evidence import (
    auroc_difference,
    auroc_evidence,
    bound_evidence,
    canon,
    first_order_evidence,
    layer_evidence,
    rank_evidence,
)
from validation.report.results import RunDir, atomic_write_json, atomic_write_text, config_id
from validation.settings import estimators as chosen

EXACT_TOL = 1e-8  # float64: Ghost vs Exact and the decomposition identity are equal up to rounding
RANK_BAR = 0.9  # the project's bar for "ranks like Exact": mean Spearman vs Exact at least this
#: paired Spearman differences the layer-aware section shows besides the comparisons with LAI
LAYER_PAIRS = (("lai-last", "lai"), ("lai-fit", "lai"), ("lai-fit", "lai-last"))
NOT_COMPARED = ("oracle",)  # curation methods left out of the comparisons (they know which labels are noisy)


def _is_influence(name: str) -> bool:
    """Whether a scored name estimates influence (rankings such as EL2N or the loss do not)."""
    if name in chosen.RESEARCH:
        return True
    if name in chosen.BASELINES:
        return False
    try:
        from influence.estimators import get_estimator

        return bool(getattr(get_estimator(name).caps, "influence", True))
    except Exception:  # noqa: BLE001 - an unknown name in old results: not an estimator
        return False


def cheap_rivals() -> list[str]:
    """The registry's non-exact influence estimators other than LAI (``chosen.cheap`` without LAI and the
    rankings): the candidates for "the best cheap estimator"."""
    return [e for e in chosen.cheap() if e != "lai" and _is_influence(e)]


def top_layers() -> list[str]:
    """The registered members of the top-layers family (exact terms of the top layers)."""
    return [e for e in chosen.scored() if chosen.family(e) == "top-layers"]


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


def curation_lai_rows(folder: Path | None) -> list[dict[str, Any]] | None:
    """Paired rows method - LAI (``validation.report.curation.paired`` with LAI as the control) over the
    (task, protocol) groups that ran LAI; None when there are none or they cannot be read."""
    if folder is None:
        return None
    try:
        from validation.report.curation import load_curation, paired

        final = load_curation(folder).final
        with_lai = {(r["task"], r["protocol"]) for r in final if r["method"] == "lai"}
        final = final.where(lambda r: (r["task"], r["protocol"]) in with_lai)
        if not len(final):
            return None
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        return [{k: clean(v) for k, v in r.items()} for r in paired(final, control="lai").rows]
    except Exception:  # noqa: BLE001 - the vanilla table (curation_rows) says why the folder cannot be read
        return None


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
    versus_lai = [(e, "lai") for e in dict.fromkeys([*cheap_rivals(), *top_layers(), "loss"])]
    ranks = rank_evidence(scores, pairs=list(dict.fromkeys([*LAYER_PAIRS, *versus_lai]))) if scores else {}
    aur = auroc_evidence(scores) if scores else {}
    aur_diff = auroc_difference(scores, pairs=(("loss", "lai"),)) if scores else {}
    with_bound = [b for b in bound.values() if b["steps_with_bound"]]
    cur_folder = Path(curate) if curate is not None else find_curation(rd)
    cur_rows, cur_note = curation_rows(cur_folder)
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
            "auroc_diff": {m: {k: v.to_dict() for k, v in r.items()} for m, r in aur_diff.items()},
        },
        "first_order": {m: {t: v.to_dict() for t, v in r.items()} for m, r in first_order_evidence(fid).items()},
        "layers": layer_evidence(rd.table_rows("layer_terms")),
        "cost_ratio_to_train_step": cost_t,
        "cost_peak_ratio_to_train_step": cost_p,
        "cost_headline": cost_head,
        "bound": bound,
        "training": final_train,
        "curation": cur_rows,
        "curation_vs_lai": curation_lai_rows(cur_folder) if cur_rows else None,
        "curation_note": cur_note,
        "units": (rd.unit_counts() if isinstance(rd, StoredRun) else
                  {suite: sum(1 for _ in rd.iter_units(suite)) for suite in ("bound", "fidelity", "cost")}),
    }
    s["comparisons"] = comparisons(s)
    s["checks"] = checks(s)
    from validation.report.render import verdict

    s["verdict"] = verdict(s)
    return s


def _check(name: str, kind: str, status: str, detail: str) -> dict[str, Any]:
    passed = {"pass": True, "fail": False}.get(status)
    return {"name": name, "kind": kind, "status": status, "passed": passed, "detail": detail}


def _finding(value: Any, low: Any, high: Any) -> str:
    """"a" when the interval of a - b lies above 0, "b" when below, "none" when it covers 0 or is missing."""
    if value is None or low is None or high is None:
        return "none"
    return "a" if low > 0 else "b" if high < 0 else "none"


def _comparison(question: str, where: str, a: str, b: str, e: dict[str, Any] | None, metric: str,
                **extra: Any) -> dict[str, Any] | None:
    if not e or e.get("value") is None:
        return None
    low, high = e.get("low"), e.get("high")
    return {"question": question, "where": where, "a": a, "b": b, "value": e["value"], "low": low, "high": high,
            "n": e.get("n"), "method": e.get("method", ""), "finding": _finding(e["value"], low, high),
            "metric": metric, **extra}


def best_cheap(est: dict[str, Any]) -> str | None:
    """The best estimator by mean Spearman vs Exact among :func:`cheap_rivals` present in ``est``."""
    have = [e for e in cheap_rivals() if (est.get(e) or {}).get("value") is not None]
    return max(have, key=lambda e: est[e]["value"], default=None)


def comparisons(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired comparisons behind the expectations and the verdict (see the module docstring), a - b each:

    * fidelity (Spearman vs Exact, paired per seed; per seed and step with fewer than three seeds): last-layer
      LAI - LAI, the best cheap estimator - LAI (``best`` True), each top-layers member - LAI, loss - LAI;
    * detection (noisy-label AUROC): loss - LAI;
    * curation (final test metric, paired over seeds): each method - LAI and each method - vanilla (``control``).
    """
    out: list[dict[str, Any] | None] = []
    ev = s["evidence"]
    for model in sorted(ev["spearman"]):
        est, diff = ev["spearman"][model], ev["spearman_diff"].get(model, {})
        best = best_cheap(est)
        shown = dict.fromkeys(["lai-last", *([best] if best else []), *top_layers(), "loss"])
        for a in shown:
            c = _comparison("fidelity", model, a, "lai", diff.get(f"{a}-vs-lai"), "Spearman vs Exact",
                            best=a == best, family=chosen.family(a))
            out.append(c)
    for model in sorted(ev.get("auroc_diff", {})):
        out.append(_comparison("detection", model, "loss", "lai", ev["auroc_diff"][model].get("loss-vs-lai"),
                               "noisy-label AUROC"))
    for control, rows in (("lai", s.get("curation_vs_lai") or []), ("vanilla", s.get("curation") or [])):
        for r in rows:
            if r.get("method") in NOT_COMPARED or r.get("diff") is None:
                continue
            where = f"{r.get('task')} ({r.get('protocol') or 'ours'})"
            unit = "pp" if r.get("metric") == "accuracy" else str(r.get("metric"))
            out.append(_comparison("curation", where, r["method"], control,
                                   {"value": r["diff"], "low": r.get("low"), "high": r.get("high"), "n": r.get("n"),
                                    "method": f"paired t over {r.get('n')} seeds"},
                                   f"final {r.get('metric')} ({unit})", control=control,
                                   lower_is_better=r.get("metric") == "perplexity"))
    return [c for c in out if c is not None]


def _fmt_est(e: dict[str, Any], digits: int = 2) -> str:
    v, lo, hi = e.get("value"), e.get("low"), e.get("high")
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{v:.{digits}f} (no interval)"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt_diff(c: dict[str, Any], digits: int = 2) -> str:
    lo, hi = c.get("low"), c.get("high")
    ci = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if lo is not None and hi is not None else " (no interval)"
    return f"{c['value']:+.{digits}f}{ci}"


def bar_status(e: dict[str, Any] | None, bar: float = RANK_BAR) -> str:
    """"Ranks like Exact" at the project's bar: pass when the mean and the interval's lower end are at least
    ``bar``, fail when the mean is below it, inconclusive when only the mean clears it."""
    if not e or e.get("value") is None:
        return "not run"
    if e["value"] < bar:
        return "fail"
    return "pass" if e.get("low") is not None and e["low"] >= bar else "inconclusive"


def bar_detail(e: dict[str, Any], bar: float = RANK_BAR) -> str:
    lo = e.get("low")
    side = "at or above" if e["value"] >= bar else "below"
    low = ("no interval" if lo is None else
           f"the interval's lower end {lo:.2f} {'clears' if lo >= bar else 'does not clear'} it")
    return f"mean {_fmt_est(e)} ({e.get('method', '')}): {side} the {bar:g} bar; {low}"


def cost_claims(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (README cost claim, model): the measured ratio (estimator / its base pass at the largest size) against
    the README's stated range, met only inside it: {"estimator", "base", "words", "model", "ratio", "low",
    "high", "met", "miss" (how far outside, in x of the base pass; 0 inside), "forward_ms"}."""
    from validation.report.render import README_COST

    c = s.get("cost_ratio_to_train_step") or {}
    head = s.get("cost_headline") or {}
    out = []
    for est, (base, words, (lo, hi)) in README_COST.items():
        for m in sorted(c):
            r, b = c[m].get(est), c[m].get(base)
            if r is None or not b:
                continue
            x = r / b
            miss = x - hi if x > hi else x - lo if x < lo else 0.0
            out.append({"estimator": est, "base": base, "words": words, "model": m, "ratio": x, "low": lo,
                        "high": hi, "met": lo <= x <= hi, "miss": miss,
                        "forward_ms": head.get(m, {}).get("forward_ms")})
    return out


def checks(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Each headline claim with its status (see the module docstring): the expectations first, then the README's
    cost claims, then the software checks (theory)."""
    label = chosen.label
    out = []
    ev = s["evidence"]
    for model, est in sorted(ev["spearman"].items()):
        e = est.get("lai")
        out.append(_check(f"{model}: LAI ranks like Exact (mean Spearman >= {RANK_BAR:g})", "expectation",
                          bar_status(e), bar_detail(e) if e and e.get("value") is not None else "no value"))
    status = {"b": "pass", "a": "fail", "none": "inconclusive"}
    for c in s.get("comparisons", []):
        if c["question"] == "curation" and not (c["a"] == "lai" or (c["control"] == "lai" and c["a"] == "lai-last")):
            continue  # the checks hold LAI vs vanilla and LAI vs last-layer LAI; every other row is in the verdict
        if c["question"] == "fidelity" and c["a"] == "loss":
            continue
        a, b = label(c["a"]), label(c["b"])
        if c["question"] == "fidelity":
            name = f"{c['where']}: LAI ranks closer to Exact than {a}" + (" (the best cheap estimator)"
                                                                          if c.get("best") else "")
            st = status[c["finding"]]
        elif c["question"] == "detection":
            name = f"{c['where']}: LAI flags noisy labels better than the {a}"
            st = status[c["finding"]]
        else:  # curation: a = lai vs vanilla, or lai-last vs LAI
            flip = c.get("lower_is_better")
            if c["a"] == "lai":
                name = f"{c['where']}: LAI curation beats {b}"
                st = {"a": "fail" if flip else "pass", "b": "pass" if flip else "fail", "none": "inconclusive"}[
                    c["finding"]]
            else:
                name = f"{c['where']}: LAI curation beats {a}"
                st = {"a": "pass" if flip else "fail", "b": "fail" if flip else "pass", "none": "inconclusive"}[
                    c["finding"]]
        what = {"a": f"{a} better", "b": f"{b} better", "none": "no difference shown (the interval covers 0)"}
        out.append(_check(name, "expectation", st,
                          f"{a} − {b} {_fmt_diff(c)} {c['metric']} ({c['method']}): {what[c['finding']]}"))
    for model, est in sorted(s["cost_ratio_to_train_step"].items()):
        lai, ex = est.get("lai"), est.get("exact")
        ok = None if lai is None or ex is None else lai < ex
        out.append(_check(f"{model}: LAI is cheaper than Exact (time)", "expectation",
                          "not run" if ok is None else ("pass" if ok else "fail"),
                          f"LAI {lai:.2f}x, Exact {ex:.2f}x a training step" if ok is not None else "no value"))
    for c in cost_claims(s):
        out.append(_check(f"{c['model']}: {label(c['estimator'])} costs {c['low']:g}-{c['high']:g}x {c['words']} "
                          "(README)", "claim", "pass" if c["met"] else "fail",
                          f"measured {c['ratio']:.2f}x" + ("" if c["met"] else
                                                           f", {abs(c['miss']):.2g}x {'above' if c['miss'] > 0 else 'below'}"
                                                           " the stated range")))
    return out + theory_checks(s)


def theory_checks(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The software checks (kind "theory"): regression tests of the implementation (the bound, Ghost = Exact,
    the decomposition identity), not evidence for the paper's claim."""
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


class StoredRun(RunDir):
    """A stored run folder (``paper_figs.stored_run``: the CSV tables, config.json and summary.json, no units):
    its tables are read from the CSVs (``*.csv.gz`` in their place), so :func:`summarize` and
    :func:`write_stored_report` recompute the summary and report from the stored data."""

    def table_rows(self, table: str) -> list[dict[str, Any]]:
        from validation.report.tables import read_table

        t = read_table(self.root / f"{table}.csv")
        return [] if t is None else t.rows

    def iter_units(self, suite: str):  # noqa: ANN201 - no units are stored
        return iter(())

    def unit_counts(self) -> dict[str, int]:
        """The finished units the run had (from the stored summary.json; the units themselves are not stored)."""
        path = self.root / "summary.json"
        if path.is_file():
            from validation.report.results import read_json

            return dict(read_json(path).get("units") or {})
        return {}


def write_stored_report(folder: str | Path, curate: str | Path | None = None,
                        out: str | Path | None = None) -> dict[str, Any]:
    """Recompute summary.json and report.md of a stored run folder (default: in place; ``out``: another folder)
    from its CSV tables and the curation results ``curate`` (default: :func:`find_curation`)."""
    from validation.report.render import render

    rd = StoredRun(folder)
    s = summarize(rd, curate)
    dest = Path(out) if out is not None else rd.root
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / "summary.json", s)
    atomic_write_text(dest / "report.md", render(s, rd.read_config()))
    return s


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m validation.report.summary",
                                 description="rewrite summary.json and report.md of a run folder")
    ap.add_argument("folder", help="a run folder (lai run), or a stored one with --stored")
    ap.add_argument("--stored", action="store_true", help="the folder holds only the CSV tables (paper_figs/data)")
    ap.add_argument("--curate", default=None, help="curated-training results (run folders or a stored folder)")
    ap.add_argument("--out", default=None, help="write here instead of into the folder (--stored only)")
    args = ap.parse_args(argv)
    if args.stored:
        write_stored_report(args.folder, args.curate, args.out)
        print(Path(args.out or args.folder) / "report.md")
    else:
        refresh_report(args.folder, args.curate)
        print(Path(args.folder) / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["StoredRun", "write_stored_report", "summarize", "write_report", "refresh_report", "checks", "theory_checks", "comparisons", "cost_claims",
           "bar_status", "best_cheap", "cheap_rivals", "top_layers", "failed_theory_checks", "find_curation",
           "curation_rows", "curation_lai_rows", "RANK_BAR"]
