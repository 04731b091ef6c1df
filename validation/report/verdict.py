"""The verdict of a report in plain words: the bottom lines first (one sentence per question: fidelity, detection,
curation, cost, the first-order caveat), then the paired comparisons behind them, the first-order caveat, the
README's cost ranges (met only inside them, no slack), the bound, and last the software checks (regression tests
of the implementation, not evidence for the paper's claim). Every claim carries its 95 % interval."""

from __future__ import annotations

import math
from typing import Any

from validation.settings import estimators as chosen

from .checks import RANK_BAR, README_COST, cost_claims
from .curation_pairs import common_match, method_label
from .curation_words import combined_detection, curation_bottoms, task_lines
from .wording import (
    _above,
    _bar_words,
    _cmp,
    _d,
    _e,
    _group,
    _label,
    _list,
    _miss,
    _models,
    _pp,
    _said,
)


def _rank_lines(s: dict[str, Any]) -> list[str]:

    sp = s["evidence"]["spearman"]
    if not sp:
        return ["- **Ranking like Exact**: fidelity suite not run."]
    method = next((e["method"] for m in sp.values() for e in m.values()), "")
    lines = [f"- **Ranking like Exact** (Spearman vs Exact, mean over scored steps; 95 % interval, {method}; "
             f"Ghost equals Exact; the bar is {RANK_BAR:g}; paired differences a − b, positive = a ranks closer):"]
    for model in _models(sp):
        est = sp[model]
        shown = [e for e in (*chosen.scored(), "loss") if e in est and e != "exact" and not chosen.is_exact(e)]
        lines.append(f"  - {model}: " + "; ".join(f"{_label(e)} {_e(est[e])}" for e in shown) + ".")
        lai = est.get("lai")
        if lai and lai.get("value") is not None:
            cs = [c for c in _cmp(s, "fidelity", model) if c["a"] != "loss"]
            lines.append(f"    LAI {_e(lai)} is {_bar_words(lai)}. " + "; ".join(
                ("best cheap estimator: " if c.get("best") else "") + _said(c) for c in cs) + ".")
    return lines

def _fit_summary(sp: dict[str, Any], diff: dict[str, Any]) -> str:
    """One sentence: where LAI-fit ranks closer to Exact than both all-layer and last-layer LAI."""
    models = [m for m in _models(sp) if "lai-fit" in sp[m]]
    if not models:
        return ""
    def val(m: str, k: str) -> float:
        v = (diff.get(m, {}).get(k) or {}).get("value")
        return -math.inf if v is None else v
    point = [m for m in models if val(m, "lai-fit-vs-lai") > 0 and val(m, "lai-fit-vs-lai-last") > 0]
    sig = [m for m in models if _above(diff[m].get("lai-fit-vs-lai"), 0) and
           _above(diff[m].get("lai-fit-vs-lai-last"), 0)]
    return (f"LAI-fit (layer weights fitted against Ghost on a probe) ranks closer to Exact than both all-layer and "
            f"last-layer LAI on {len(point)} of {len(models)} models by the point estimate"
            + (f" ({', '.join(point)})" if point else "") + f", with both paired intervals above 0 on {len(sig)}"
            + (f" ({', '.join(sig)})" if sig else "") + " (see the layer-aware section).")

def _auroc_lines(s: dict[str, Any]) -> list[str]:
    au = s["evidence"]["auroc"]
    if not au:
        return []
    lines = ["- **Noisy-label detection** (AUROC of -score, noisy = positive; 95 % interval; paired difference "
             "loss − LAI):"]
    for model in _models(au):
        est = au[model]
        lai = est.get("lai")
        infl = {e: v for e, v in est.items() if e in chosen.influence_estimators() and v.get("value") is not None}
        top = max(infl, key=lambda e: infl[e]["value"], default=None)
        parts = [f"LAI {_e(lai)}, {lai.get('n_positive')} noisy of {lai.get('n')}" if lai else "LAI not scored", f"loss {_e(est.get('loss'))}" if "loss" in est else "",
                 f"best influence estimator {_label(top)} {_e(infl[top])}" if top else ""]
        c = _cmp(s, "detection", model)
        lines.append(f"  - {model}: " + "; ".join(p for p in parts if p)
                     + (f". {_said(c[0], 'finds the noisy labels better')}" if c else "") + ".")
    return lines

def _bound_lines(s: dict[str, Any]) -> list[str]:
    b = s["bound"]
    if not b:
        return ["- **Bound**: bound suite not run."]
    with_b = {m: v for m, v in b.items() if v["steps_with_bound"]}
    without = [m for m, v in b.items() if not v["steps_with_bound"]]
    if not with_b:
        return ["- **Bound**: no step had a bound (" + ", ".join(without) + ")."]
    v = sum(x["violations"] for x in with_b.values())
    head = (f"- **Bound**: {'holds' if v == 0 else 'VIOLATED'} — {v} violations over "
            f"{sum(x['samples_with_bound'] for x in with_b.values())} samples at "
            f"{sum(x['steps_with_bound'] for x in with_b.values())} steps with a bound"
            + (f" (no bound computed for {', '.join(without)})" if without else "") + ".")
    parts = []
    for m in _models(with_b):
        x = with_b[m]
        r = [f"data {x['median_ratio_data']:.2g} ({1 / x['median_ratio_data']:.0f}x looser than the error)"
             if x["median_ratio_data"] else None,
             f"a-priori {x['median_ratio_apriori']:.2g}" if x["median_ratio_apriori"] else None]
        parts.append(f"{m}: median |error|/bound " + ", ".join(p for p in r if p))
    inf_k = sum(x["kendall_informative_steps"] for x in with_b.values())
    inf_f = sum(x["filter_informative_steps"] for x in with_b.values())
    steps = sum(x["steps_with_bound"] for x in with_b.values())
    informative = inf_k > 0 or inf_f > 0
    lines = [head, "  - How loose: " + "; ".join(parts) + "."]
    if informative:
        lines.append(f"  - Informative on some steps: a Kendall guarantee above -1 at {inf_k} of {steps} steps, "
                     f"a filter-agreement guarantee above 0 at {inf_f} of {steps}.")
    else:
        meas = [x["median_kendall"] for x in with_b.values() if x["median_kendall"] is not None]
        lines.append(f"  - **Not informative at this size**: at every one of the {steps} steps it guarantees only "
                     "Kendall tau(LAI, Ghost) >= -1 and filter agreement >= 0 (no guarantee)"
                     + (f", while the measured median tau is {min(meas):.2f}–{max(meas):.2f}" if meas else "") + ".")
    return lines

def _cost_lines(s: dict[str, Any]) -> list[str]:

    if not s["cost_ratio_to_train_step"]:
        return ["- **Cost**: cost suite not run."]
    claims = " and ".join(f"{_label(est)} {lo:g}-{hi:g}x {words}" for est, (_, words, (lo, hi)) in README_COST.items())
    lines = [f"- **Cost vs the README** (which gives {claims} on 1 thread; met only inside the stated range; wall "
             "time at the largest size of this run — a few timed repeats, noisy when other work shares the CPU; "
             "where a forward pass takes well under the README workloads' 3 ms, the library's fixed work per call, "
             "about 1 ms, dominates; `lai bench` is the reference):"]
    cc = cost_claims(s)
    for est, (base, words, (lo, hi)) in README_COST.items():
        order = _models({c["model"]: 0 for c in cc})
        mine = sorted((c for c in cc if c["estimator"] == est), key=lambda c: order.index(c["model"]))
        if not mine:
            continue
        parts = []
        for c in mine:
            ms = c.get("forward_ms")
            txt = f"{c['model']} {c['ratio']:.2f}x" + (f" (forward {ms:.2g} ms)" if ms is not None else "")
            if not c["met"]:
                txt += f" misses by {_miss(c)} ({'above' if c['miss'] > 0 else 'below'} {lo:g}-{hi:g}x)"
            parts.append(txt)
        missed = [c["model"] for c in mine if not c["met"]]
        lines.append(f"  - {_label(est)} / {words}: " + ", ".join(parts)
                     + (f" — claim not met on {', '.join(missed)}" if missed else " — met on every model"))
    return lines

def _curation_lines(s: dict[str, Any]) -> list[str]:
    rows = s.get("curation")
    if not rows:
        return [f"- **Curated training**: not run ({s.get('curation_note', 'no results')})."]
    lines = ["- **Curated training** (final test metric minus vanilla, paired over seeds; 95 % t interval; "
             "* = interval excludes 0; \"Beat LAI\" and \"worse than LAI\": paired method − LAI interval "
             "excluding 0):"]
    extra = task_lines(rows)
    for (task, proto), rs in _group(rows).items():
        txt = []
        for r in rs:
            if r.get("diff") is None:
                continue
            sig = r.get("low") is not None and (r["low"] > 0 or r["high"] < 0)
            txt.append(f"{method_label(r['method'], r.get('rate_matched_to'))} {_pp(r)}{' *' if sig else ''}")
        where = f"{task} ({proto})"
        vs = [c for c in _cmp(s, "curation", where, control="lai")]
        good = "b" if any(c.get("lower_is_better") for c in vs) else "a"
        matched = {r["method"]: r.get("rate_matched_to") for r in rs}
        better = [f"{method_label(c['a'], matched.get(c['a']))} {_pp({'diff': c['value'], 'low': c['low'], 'high': c['high'], 'metric': rs[0].get('metric')})}"
                  for c in vs if c["finding"] == good]
        worse = [method_label(c["a"], matched.get(c["a"])) for c in vs if c["finding"] not in (good, "none") and c["a"] != "vanilla"]
        lines.append(f"  - {task} ({proto} protocol, {rs[0].get('n')} seeds): " + "; ".join(txt) + "."
                     + (f" Beat LAI: {', '.join(better)}." if better else (" Beat LAI: none." if vs else ""))
                     + (f" Worse than LAI: {', '.join(worse)}." if worse else ""))
        lines += extra.get((task, proto), [])
    return lines

def _first_order_lines(s: dict[str, Any]) -> list[str]:
    fo = s.get("first_order") or {}
    if not fo:
        return ["- **First-order caveat**: no counterfactual targets in this run (fidelity suite not run)."]
    lines = ["- **First-order caveat** (Exact is the first-order effect of a step; Spearman of Exact vs the actual "
             "one-step effect on the reference loss, mean over scored steps; 95 % interval):"]
    for model in _models(fo):
        t = fo[model]
        lines.append(f"  - {model}: at the training lr {_e(t.get('counterfactual'))}; at lr/10 "
                     f"{_e(t.get('counterfactual_small_lr'))}.")
    return lines

def _software_lines(s: dict[str, Any]) -> list[str]:
    theory = [c for c in s["checks"] if c["kind"] == "theory"]
    failed = [c["name"] for c in theory if c["status"] == "fail"]
    vacuous = [c["name"] for c in theory if c["status"] == "no guarantee"]
    passed = [c["name"] for c in theory if c["status"] == "pass"]
    return [f"- **Software checks (regression tests of the implementation), not evidence for the paper's claim**: "
            f"{'FAILED: ' + '; '.join(failed) if failed else 'none failed'}; {len(passed)} passed"
            + (f" ({'; '.join(passed)})" if passed else "")
            + (f"; no guarantee to check: {'; '.join(vacuous)}" if vacuous else "") + "."]

def _fidelity_bottom(s: dict[str, Any]) -> str:

    sp = s["evidence"]["spearman"]
    models = [m for m in _models(sp) if (sp[m].get("lai") or {}).get("value") is not None]
    if not models:
        return "Fidelity: not measured (fidelity suite not run)."
    at = [m for m in models if sp[m]["lai"]["value"] >= RANK_BAR]
    vals = " / ".join(f"{sp[m]['lai']['value']:.2f}" for m in models)
    txt = (f"Fidelity: all-layer LAI reaches the project's bar (mean Spearman vs Exact >= {RANK_BAR:g}) on "
           f"{len(at)} of {len(models)} models ({vals} for {' / '.join(models)})")
    last = {c["where"]: c for c in _cmp(s, "fidelity", a="lai-last")}
    helps = [m for m in models if m in last and last[m]["finding"] == "b"]
    hurts = [f"{m} ({_d(last[m])})" for m in models if m in last and last[m]["finding"] == "a"]
    flat = [f"{m} ({_d(last[m])})" for m in models if m in last and last[m]["finding"] == "none"]
    if last:
        txt += (f"; the layer-aware sum (all-layer over last-layer LAI) does not help on {len(hurts) + len(flat)} of "
                f"{len(last)} models" + (f" — last-layer LAI ranks closer to Exact on {_list(hurts)}" if hurts else "")
                + (f"{',' if hurts else ' —'} no difference shown on {_list(flat)}" if flat else "")
                + " (last-layer LAI − LAI)" + (f", and helps on {_list(helps)}" if helps else ""))
    beaters = [f"{_label(c['a'])} on {c['where']} ({_d(c)})" for c in _cmp(s, "fidelity")
               if c["a"] not in ("lai-last", "loss") and c["finding"] == "a"]
    if beaters:
        txt += "; other estimators ranking closer to Exact than LAI (paired interval above 0): " + "; ".join(beaters)
    return txt + "."

def _detection_bottom(s: dict[str, Any]) -> str:
    cs = _cmp(s, "detection")
    if not cs:
        return "Detection: not measured (no noisy-label scores with the loss baseline)."
    loss = [f"{c['where']} ({_d(c)})" for c in cs if c["finding"] == "a"]
    lai = [f"{c['where']} ({_d(c)})" for c in cs if c["finding"] == "b"]
    none = [c["where"] for c in cs if c["finding"] == "none"]
    return (f"Detection: the training loss alone finds the noisy labels better than LAI on {len(loss)} of {len(cs)} "
            f"models (AUROC loss − LAI: {_list(loss)}); LAI better on {_list(lai)}; no difference shown on "
            f"{_list(none)}{combined_detection(s)}.")

def _curation_bottom(s: dict[str, Any]) -> str:
    vv = _cmp(s, "curation", a="lai", control="vanilla")
    if not vv:
        return f"Curation: not run ({s.get('curation_note', 'no results')})."
    good = lambda c, side: c["finding"] == ("b" if c.get("lower_is_better") else "a") if side else \
        c["finding"] == ("a" if c.get("lower_is_better") else "b")  # noqa: E731
    beat_v = [c["where"] for c in vv if good(c, True)]
    worse_v = [c["where"] for c in vv if good(c, False)]
    vl = [c for c in _cmp(s, "curation", control="lai") if c["a"] != "vanilla"]
    n = len({c["where"] for c in vl})
    last = [c for c in vl if c["a"] == "lai-last"]
    last_over = [f"{c['where']} ({_d(c, 1)})" for c in last if good(c, True)]
    lai_over_last = [c["where"] for c in last if good(c, False)]
    flat_v = [f"{c['where']} ({_d(c, 1)})" for c in vv if c["finding"] == "none"]
    txt = (f"Curation: LAI beats vanilla on {len(beat_v)} of {len(vv)} task/protocols, is worse on "
           f"{len(worse_v)}" + (f" ({_list(worse_v)})" if worse_v else "")
           + f" and shows no difference from vanilla on {len(flat_v)}" + (f" ({_list(flat_v)})" if flat_v else ""))
    if last:
        txt += (f"; the layer-aware sum beats last-layer LAI (paired interval excluding 0) on {len(lai_over_last)} "
                f"of {len(last)}" + (f" ({_list(lai_over_last)})" if lai_over_last else "")
                + f" and loses to it on {len(last_over)}" + (f" ({_list(last_over)})" if last_over else ""))

    def by_method(side: bool) -> list[str]:
        out = []
        for m in dict.fromkeys(c["a"] for c in vl):
            cs = [c for c in vl if c["a"] == m and good(c, side)]
            if cs:
                lo, hi = min(c["value"] for c in cs), max(c["value"] for c in cs)
                label = method_label(m, common_match(s.get("curation") or [], m))
                out.append(f"{label} on {len(cs)} of {n} ({lo:+.1f} to {hi:+.1f})" if len(cs) > 1
                           else f"{label} on {cs[0]['where']} ({_d(cs[0], 1)})")
        return out

    unit = " pp" if any(c["metric"].endswith("(pp)") for c in vl) else ""
    txt += f"; methods better than LAI (method − LAI{unit}, paired interval above 0): {_list(by_method(True))}"
    under = by_method(False)
    if under:
        txt += f"; worse than LAI: {_list(under)}"
    return txt + "."

def _cost_bottom(s: dict[str, Any]) -> str:

    cc = cost_claims(s)
    if not cc:
        return "Cost: not measured (cost suite not run)."
    missed = [f"{_label(c['estimator'])} on {c['model']} {c['ratio']:.2f}x {c['words']} against "
              f"{c['low']:g}-{c['high']:g}x (misses by {_miss(c)})" for c in cc if not c["met"]]
    return (f"Cost: the README's stated ranges hold on {len(cc) - len(missed)} of {len(cc)} model/estimator pairs"
            + (f"; missed: {'; '.join(missed)}" if missed else "") + ".")

def _first_order_bottom(s: dict[str, Any]) -> str:
    fo = s.get("first_order") or {}
    models = [m for m in _models(fo) if fo[m].get("counterfactual")]
    if not models:
        return "First-order caveat: not measured (no counterfactual targets)."
    v = lambda m, t: "n/a" if not (fo[m].get(t) or {}).get("value") is not None else f"{fo[m][t]['value']:.2f}"  # noqa
    return (f"First-order caveat: Exact itself ranks the actual one-step effect at Spearman "
            f"{' / '.join(v(m, 'counterfactual') for m in models)} at the training lr and "
            f"{' / '.join(v(m, 'counterfactual_small_lr') for m in models)} at lr/10 ({' / '.join(models)}), so "
            "ranking like Exact means ranking like a first-order model that at the training lr is only this "
            "faithful to what a step actually does.")

def bottom_lines(s: dict[str, Any]) -> list[str]:
    """One sentence per question: fidelity, detection, curation, cost, the first-order caveat."""
    return ["- **Bottom lines**:", *(f"  - {f(s)}" for f in (_fidelity_bottom, _detection_bottom, _curation_bottom)),
            *(f"  - {line}" for line in curation_bottoms(s)),
            *(f"  - {f(s)}" for f in (_cost_bottom, _first_order_bottom))]

def verdict(s: dict[str, Any]) -> list[str]:
    """The plain-words conclusions of a summary, as markdown lines: the bottom lines first, then the evidence per
    question, and last the software checks (regression tests of the implementation, not evidence for the
    paper's claim)."""
    return [*bottom_lines(s), *_rank_lines(s), *_auroc_lines(s), *_curation_lines(s), *_first_order_lines(s),
            *_cost_lines(s), *_bound_lines(s), *_software_lines(s)]


__all__ = ["bottom_lines", "verdict"]
