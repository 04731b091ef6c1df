"""report.md of a run folder: the verdict in plain words first, then the checks and the tables behind them.

:func:`verdict` turns a summary (validation/report/summary.py) into markdown bullet lines; :func:`render` writes the
whole report. Every claim carries its 95 % interval and what it was computed over.
"""

from __future__ import annotations

import math
from typing import Any

from validation.settings import estimators as chosen

MARK = {"pass": "PASS", "fail": "**FAIL**", "not run": "not run", "no guarantee": "no guarantee",
        "inconclusive": "inconclusive"}
# the README's cost column: estimator -> (the pass it is compared with, in words, (low, high) ratio on 1 thread);
# tests/test_readme.py checks that the README says the same
README_COST = {"lai": ("forward", "a forward pass", (1.3, 2.1)),
               "ghost": ("forward_backward", "a forward+backward", (0.9, 1.3))}
CLAIM_SLACK = 2.0  # the README's cost ranges, checked as at most this factor times their upper end


def _e(e: dict[str, Any] | None, digits: int = 2) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    if e.get("low") is None or e.get("high") is None:
        return f"{e['value']:.{digits}f}"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _label(name: str) -> str:
    return chosen.label(name)  # the registry's label (research variants' and baselines' from validation.settings)


def _models(d: dict[str, Any]) -> list[str]:
    order = ("mlp", "cnn1d", "cnn2d", "transformer")
    return [m for m in order if m in d] + sorted(m for m in d if m not in order)


def _above(e: dict[str, Any] | None, x: float) -> bool:
    return bool(e) and e.get("low") is not None and e["low"] > x


def _below(e: dict[str, Any] | None, x: float) -> bool:
    return bool(e) and e.get("high") is not None and e["high"] < x


def _rank_lines(s: dict[str, Any]) -> list[str]:
    sp, diff = s["evidence"]["spearman"], s["evidence"]["spearman_diff"]
    if not sp:
        return ["- **Ranking like Exact**: fidelity suite not run."]
    method = next((e["method"] for m in sp.values() for e in m.values()), "")
    lines = [f"- **Ranking like Exact** (Spearman vs Exact, mean over scored steps; 95 % interval, {method}; "
             "Ghost equals Exact):"]
    like, closer, sig_closer = [], [], []
    for model in _models(sp):
        est = sp[model]
        shown = [e for e in (*chosen.influence_estimators(), "loss") if e in est and not chosen.is_exact(e)]
        best = max((e for e in chosen.cheap() if e in est and est[e]["value"] is not None),
                   key=lambda e: est[e]["value"], default=None)
        lines.append(f"  - {model}: " + "; ".join(f"{_label(e)} {_e(est[e])}" for e in shown)
                     + (f" — closest cheap estimator: {_label(best)}" if best else ""))
        if _above(est.get("lai"), 0.5):
            like.append(model)
        d = diff.get(model, {}).get("lai-last-vs-lai")
        if d and d["value"] is not None and d["value"] > 0:
            closer.append(model)
            if _above(d, 0.0):
                sig_closer.append(model)
    n = len(sp)
    lines.append(f"  - All-layer LAI ranks like Exact (interval above 0.5) on {len(like)} of {n} models"
                 + (f" ({', '.join(like)})" if like else "") + f". Last-layer LAI ranks closer to Exact than "
                 f"all-layer LAI on {len(closer)} of {n} models, with the interval of the difference above 0 on "
                 f"{len(sig_closer)}" + (f" ({', '.join(sig_closer)})" if sig_closer else "") + ".")
    fit_lines = _fit_summary(sp, diff)
    if fit_lines:
        lines.append("  - " + fit_lines)
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
    better, chance, worse, loss_wins = [], [], [], []
    for model in _models(au):
        est = au[model]
        lai = est.get("lai")
        if lai is None:
            continue
        txt = f"{model} {_e(lai)}, {lai.get('n_positive')} noisy of {lai.get('n')}"
        (better if _above(lai, 0.5) else worse if _below(lai, 0.5) else chance).append(txt)
        infl = {e: v for e, v in est.items() if e in chosen.influence_estimators() and v.get("value") is not None}
        loss = est.get("loss")
        if loss and infl and loss["value"] > max(v["value"] for v in infl.values()):
            top = max(infl, key=lambda e: infl[e]["value"])
            loss_wins.append(f"{model} (loss {_e(loss)} vs best estimator {_label(top)} {_e(infl[top])})")
    lines = ["- **Noisy-sample detection** (AUROC of -score, noisy = positive; 95 % interval):"]
    lines.append("  - LAI better than chance (interval above 0.5): " + ("; ".join(better) or "none") + ".")
    if chance:
        lines.append("  - LAI not distinguishable from chance: " + "; ".join(chance) + ".")
    if worse:
        lines.append("  - LAI worse than chance: " + "; ".join(worse) + ".")
    if loss_wins:
        lines.append(f"  - The loss-only baseline beats every influence estimator on {len(loss_wins)} of {len(au)} "
                     "models: " + "; ".join(loss_wins) + ".")
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
    c = s["cost_ratio_to_train_step"]
    if not c:
        return ["- **Cost**: cost suite not run."]
    claims = " and ".join(f"{_label(est)} {lo:g}-{hi:g}x {words}" for est, (_, words, (lo, hi)) in README_COST.items())
    lines = [f"- **Cost vs the README** (which gives {claims} on 1 thread; checked here as at most {CLAIM_SLACK:g} "
             "times the upper end; wall time at the largest size of this run — a few timed repeats, noisy when other "
             "work shares the CPU; where a forward pass takes well under the README workloads' 3 ms, the library's "
             "fixed work per call, about 1 ms, dominates; `lai bench` is the reference):"]
    head = s.get("cost_headline") or {}
    for est, (base, words, (_, hi)) in README_COST.items():
        parts, missed = [], []
        for m in _models(c):
            r, b = c[m].get(est), c[m].get(base)
            if r is None or not b:
                continue
            ms = head.get(m, {}).get("forward_ms")
            parts.append(f"{m} {r / b:.1f}x" + (f" (forward {ms:.2g} ms)" if ms is not None else ""))
            if r / b > CLAIM_SLACK * hi:
                missed.append(m)
        lines.append(f"  - {_label(est)} / {words}: " + ", ".join(parts)
                     + (f" — claim not met on {', '.join(missed)}" if missed else " — met"))
    return lines


def _curation_lines(s: dict[str, Any]) -> list[str]:
    rows = s.get("curation")
    if not rows:
        return [f"- **Curated training**: not run ({s.get('curation_note', 'no results')})."]
    lines = ["- **Curated training** (final test metric minus vanilla, paired over seeds; 95 % t interval):"]
    for (task, proto), rs in _group(rows).items():
        txt = []
        for r in rs:
            if r.get("diff") is None:
                continue
            sig = r.get("low") is not None and (r["low"] > 0 or r["high"] < 0)
            txt.append(f"{r['method']} {_pp(r)}{' *' if sig else ''}")
        lai = next((r for r in rs if r["method"] == "lai" and r.get("diff") is not None), None)
        better = [r["method"] for r in rs if lai is not None and r["method"] not in ("lai", "oracle")
                  and r.get("diff") is not None and r["diff"] > lai["diff"]]
        lines.append(f"  - {task} ({proto} protocol, {rs[0].get('n')} seeds): " + "; ".join(txt)
                     + " (* = interval excludes 0)."
                     + (f" Beat LAI: {', '.join(better)}." if better else ""))
    return lines


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((str(r.get("task")), str(r.get("protocol") or "ours")), []).append(r)
    return out


def _pp(r: dict[str, Any]) -> str:
    unit = " pp" if r.get("metric") == "accuracy" else ""
    lo, hi = r.get("low"), r.get("high")
    ci = f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None and hi is not None else ""
    return f"{r['diff']:+.1f}{unit}{ci}"


def verdict(s: dict[str, Any]) -> list[str]:
    """The plain-words conclusions of a summary, as markdown lines."""
    theory = [c for c in s["checks"] if c["kind"] == "theory"]
    failed = [c["name"] for c in theory if c["status"] == "fail"]
    vacuous = [c["name"] for c in theory if c["status"] == "no guarantee"]
    passed = [c["name"] for c in theory if c["status"] == "pass"]
    head = (f"- **Theory checks**: {'FAILED: ' + '; '.join(failed) if failed else 'none failed'}; "
            f"{len(passed)} passed" + (f"; no guarantee to check: {'; '.join(vacuous)}" if vacuous else "") + ".")
    return [head, *_rank_lines(s), *_auroc_lines(s), *_bound_lines(s), *_curation_lines(s), *_cost_lines(s)]


def _num(v: Any, digits: int = 3) -> str:
    """Fixed-point for ordinary numbers, 2 significant digits for small ones (a ratio of 0.00015 is not 0.000)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.2g}" if v != 0 and abs(v) < 10 ** -(digits - 1) else f"{v:.{digits}f}"


def _table(title: str, data: dict[str, dict[str, Any]], cols: list[str] | None = None, digits: int = 3,
           fmt: Any = None) -> list[str]:
    if not data:
        return []
    if cols is None:
        cols = []
        for est in data.values():
            cols.extend(e for e in est if e not in cols)
    show = fmt or (lambda v: _num(v, digits))
    lines = [f"### {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model in _models(data):
        lines.append(f"| {model} | " + " | ".join(show(data[model].get(c)) for c in cols) + " |")
    return lines + [""]


def _layer_section(s: dict[str, Any]) -> list[str]:
    sp, diff, layers = s["evidence"]["spearman"], s["evidence"]["spearman_diff"], s["layers"]
    if not sp:
        return []
    lines = ["## Layer-aware question: all-layer LAI, last-layer LAI, LAI-fit and Ghost", "",
             "Spearman vs Exact with 95 % intervals, and paired differences (positive = the first ranks closer to "
             "Exact). LAI-fit (validation/suites/lai_variants.py): last-layer LAI plus the lower layers' LAI terms "
             "weighted by least squares against Ghost on a small probe outside the scored batch, refitted at every "
             "scored step (LAI's cost at scoring time).", ""]
    cols = [*chosen.layer_variants(), "ghost"]
    data = {m: {**{c: sp[m].get(c) for c in cols}, **diff.get(m, {})} for m in sp}
    dcols = ["lai-last-vs-lai", "lai-fit-vs-lai", "lai-fit-vs-lai-last"]
    lines += _table("Fidelity to Exact by layer choice", data, cols + dcols, fmt=_e)
    fit = _fit_summary(sp, diff)
    if fit:
        lines += [fit, ""]
    if layers:
        lines += ["Per layer (means over scored steps and seeds): `term ρ` = Spearman of LAI's term of the layer vs "
                  "Ghost's term; `scale` = Σ|LAI term| / Σ|Ghost term| (median); `error share` = the layer's share "
                  "of Σ|Ghost − LAI|; `ρ alone` = Spearman vs Exact if only this layer were approximated by LAI; "
                  "`ρ fixed` = LAI's Spearman vs Exact with this layer's term made exact; `w` = LAI-fit weight "
                  "(median). Convolution terms pair the flattened input map with the whole output gradient, and "
                  "every term below the last ignores the Jacobian to the output: where `term ρ` is low and `scale` "
                  "far from 1, the layer's term adds noise rather than signal.", "",
                  "| model | layer | term ρ | scale | error share | ρ alone | ρ fixed | w |", "|---" * 8 + "|"]
        f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        for m in _models(layers):
            for r in layers[m]:
                name = r["layer"] + (" (last)" if r["is_last"] else "") + ("" if r["has_lai_term"] else " (no LAI term)")
                lines.append(f"| {m} | {name} | {f(r['term_spearman'])} | {f(r['scale_ratio'])} | "
                             f"{f(r['error_share'])} | {f(r['rho_alone'])} | {f(r['rho_fixed'])} | "
                             f"{f(r['fit_weight'])} |")
        lines.append("")
    return lines


def _curation_section(s: dict[str, Any]) -> list[str]:
    lines = ["## Curated training", ""]
    rows = s.get("curation")
    if not rows:
        return lines + [f"Not run: {s.get('curation_note', 'no results')}. Produce it with `lai curate --profile "
                        "quick` (then rerun the report: `validation.report.summary.refresh_report(run_folder)`).", ""]
    lines += [f"Paired over seeds ({s.get('curation_note', '')}): final test metric of each method minus vanilla "
              "(accuracy in percentage points), 95 % t interval, two-sided paired t-test p, seeds won.", "",
              "| task | protocol | method | seeds | vanilla | method | difference [95 % CI] | p | wins/ties/losses "
              "| kept | noise recall |", "|---" * 11 + "|"]
    f = lambda v, d=3: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"  # noqa
    for (task, proto), rs in _group(rows).items():
        for r in rs:
            lines.append(f"| {task} | {proto} | {r['method']} | {r.get('n')} | {f(r.get('vanilla_mean'))} | "
                         f"{f(r.get('method_mean'))} | {_pp(r) if r.get('diff') is not None else 'n/a'} | "
                         f"{f(r.get('p'), 2)} | {r.get('wins')}/{r.get('ties')}/{r.get('losses')} | "
                         f"{f(r.get('kept_fraction'), 2)} | {f(r.get('noise_recall'), 2)} |")
    return lines + [""]


def render(s: dict[str, Any], config: dict[str, Any]) -> str:
    """Markdown report of a summary."""
    lines = [f"# Validation run `{s['profile']}-{s['config_id']}`", "",
             f"Profile `{config.get('profile')}`, seeds {config.get('seeds')}, device `{config.get('device')}`. "
             f"Finished units: {s['units']}.", "", "## Verdict", "", *s["verdict"], "", "## Checks", "",
             "Theory checks are identities or proven bounds and must pass; a check whose guarantee is vacuous is "
             "\"no guarantee\". Expectations pass only when their 95 % interval clears the threshold.", "",
             "| check | kind | result | detail |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['kind']} | {MARK.get(c['status'], c['status'])} | {c['detail']} |"
              for c in s["checks"]]
    lines.append("")
    if s["bound"]:
        lines += _table("Bound suite (float64)", s["bound"], digits=3)
    lines += _layer_section(s)
    lines += _curation_section(s)
    ev = s["evidence"]
    lines += ["## Fidelity", "", "Estimators: exact, ghost, lai (all layers), lai-last, lai-fit, lai-aligned/"
              "lai-last-aligned (transformer, aligned token pairing), tracin, tracin-last, loss (= -loss, "
              "loss-only baseline), counterfactual (actual one-step effect at the training lr), "
              "counterfactual_small_lr (the same for a step at lr / 10, rescaled).", ""]
    lines += _table("Spearman vs Exact (mean, 95 % interval)", ev["spearman"], fmt=_e)
    lines += _table("Spearman vs one-step counterfactual (training lr; median)", s["spearman_vs_counterfactual"])
    lines += _table("Spearman vs one-step counterfactual at lr / 10 (median)", s["spearman_vs_counterfactual_small_lr"])
    if ev["auroc"]:
        pos = "; ".join(f"{m}: {', '.join(map(str, p))}" for m, p in ev["positives"].items())
        lines += [f"Noisy samples per seed among the scored ones: {pos}.", ""]
    lines += _table("Noisy-sample AUROC (noisy = positive, -score detects; mean, 95 % interval)", ev["auroc"], fmt=_e)
    lines += _table("Noisy-sample AUROC at the last scored step (median)", s["noisy_auroc_final"])
    if s["cost_ratio_to_train_step"]:
        lines += ["## Cost", "", "Ratios to one SGD training step on the same batch, at "
                  + ", ".join(f"{m}: width {h['width']}, batch {h['batch']}" for m, h in s["cost_headline"].items())
                  + " (all points in cost.csv). The forward and forward_backward baselines run over the train and "
                  "reference batches together, as every estimator needs both (validation/bench/estimator_cost.py).", ""]
        lines += _table("Wall time / training step", s["cost_ratio_to_train_step"], digits=2)
        lines += _table("Peak memory / training step", s["cost_peak_ratio_to_train_step"], digits=2)
    if s["training"]:
        lines += _table("Training (last scored step)", s["training"])
    lines += ["Tables: bound.csv, bound_layers.csv, bound_steps.csv, fidelity.csv, auroc.csv, scores.csv, "
              "layer_terms.csv, cost.csv, training.csv (formats: validation/report/results.py).", ""]
    return "\n".join(lines)


__all__ = ["render", "verdict"]
