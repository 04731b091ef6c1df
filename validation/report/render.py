"""report.md of a run folder: the verdict in plain words first, then the checks and the tables behind them.

:func:`render` writes the whole report of a summary (``validation.report.summary``): the verdict
(``validation.report.verdict``), the checks (``validation.report.checks``) and the tables behind them.
"""

from __future__ import annotations

import math
from typing import Any

from validation.settings import estimators as chosen

from .verdict import _fit_summary, verdict  # noqa: F401  (verdict re-exported: the report's verdict lines)
from .wording import KIND, MARK, _e, _group, _models, _num, _pp


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
             "Comparisons are paired (a − b per seed; 95 % t interval): LAI passes one only when the interval shows "
             "it better, fails when it shows the other better, and is inconclusive (no difference shown) when the "
             "interval covers 0. \"Ranks like Exact\" needs a mean Spearman of at least 0.9 (inconclusive when the "
             "interval's lower end is below it). A README claim holds only inside its stated range. Software checks "
             "(identities and proven bounds) are regression tests of the implementation, not evidence for the "
             "paper's claim; they must pass, and a check whose guarantee is vacuous is \"no guarantee\".", "",
             "| check | kind | result | detail |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {KIND.get(c['kind'], c['kind'])} | {MARK.get(c['status'], c['status'])} | {c['detail']} |"
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
