"""The report's checks: paired comparisons that decide PASS / FAIL / inconclusive by their intervals, the
project's bar for "ranks like Exact", the README's cost claims (no slack) and the software checks."""

from __future__ import annotations

from typing import Any

from validation.settings import estimators as chosen

# the README's cost column: estimator -> (the pass it is compared with, in words, (low, high) ratio on 1 thread);
# tests/test_readme.py checks that the README says the same
README_COST = {"lai": ("forward", "a forward pass", (1.1, 2.3)),
               "ghost": ("forward_backward", "a forward+backward", (0.8, 1.5))}

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
    * detection (noisy-label AUROC): loss - LAI; detection-combined: the combined rank loss+lai-last - loss;
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
    for model in sorted(ev.get("auroc_combined", {})):  # does adding the influence score to the loss help?
        out.append(_comparison("detection-combined", model, "loss+lai-last", "loss", ev["auroc_combined"][model],
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
    """"+0.06 [+0.02, +0.10]"; an interval that excludes 0 but would print as [+0.00, ...] gets the digits (up to
    6) that show its end nearest 0, so a difference called real never reads as zero."""
    lo, hi = c.get("low"), c.get("high")
    if lo is not None and hi is not None and (lo > 0 or hi < 0):
        while digits < 6 and min(abs(lo), abs(hi)) < 0.5 * 10.0 ** -digits:
            digits += 1
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
        if (c["question"] == "fidelity" and c["a"] == "loss") or c["question"] == "detection-combined":
            continue  # in the verdict, not a check on LAI
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


__all__ = ["EXACT_TOL", "RANK_BAR", "README_COST", "LAYER_PAIRS", "NOT_COMPARED", "cheap_rivals", "top_layers",
           "best_cheap", "comparisons", "bar_status", "bar_detail", "cost_claims", "checks", "theory_checks",
           "failed_theory_checks"]
