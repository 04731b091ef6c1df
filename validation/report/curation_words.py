"""The curated-training questions in plain words (the verdict's bottom lines and the per-task bullets), from the
paired table's further columns (validation/report/curation_pairs.py) and the comparisons with LAI:

* does the layer-aware sum (LAI) beat last-layer LAI;
* does the best layer-aware member beat vanilla and its own rate-matched random;
* which method is best overall and by how much over the best layer-aware member;
* did vanilla converge (the plateau rule, every seed);

and, for detection, does adding the influence score to the loss (the combined rank) help. Every difference is
a − b with its 95 % paired interval; "no difference shown" where the interval covers 0."""

from __future__ import annotations

from typing import Any

from .curation_pairs import method_label
from .wording import _group

NOT_BEST = ("oracle", "vanilla")  # never "best overall": the oracle knows which labels are noisy


def _num(v: float, digits: int = 1) -> str:
    return f"{v:+.{digits}f}"


def diff_text(d: Any, lo: Any, hi: Any, unit: str = "", digits: int = 1) -> str:
    """"+1.3 [+0.2, +2.4] pp" (no interval: "+1.3 pp (no interval)")."""
    ci = f" [{_num(lo, digits)}, {_num(hi, digits)}]" if lo is not None and hi is not None else ""
    return f"{_num(d, digits)}{ci}{unit}" + ("" if ci else " (no interval)")


def finding(d: Any, lo: Any, hi: Any, lower_is_better: bool = False) -> str:
    """"better" / "worse" (a − b's interval excludes 0 on the good / bad side) or "no difference shown"."""
    if d is None or lo is None or hi is None or lo <= 0 <= hi:
        return "no difference shown"
    return "better" if (lo > 0) != lower_is_better else "worse"


def _unit(r: dict[str, Any]) -> str:
    return " pp" if r.get("metric") == "accuracy" else ""


def _where(r: dict[str, Any]) -> str:
    return f"{r.get('task')} ({r.get('protocol') or 'ours'})"


def _lower(r: dict[str, Any]) -> bool:
    return r.get("metric") == "perplexity"


def _yes_no(r: dict[str, Any], prefix: str, a: str, b: str, digits: int = 1) -> str:
    """"yes (+1.3 [+0.2, +2.4] pp)" / "no, <b> is better (...)" / "no difference shown (...)" for a − b."""
    d, lo, hi = r.get(f"{prefix}diff"), r.get(f"{prefix}low"), r.get(f"{prefix}high")
    if d is None:
        return "not measured"
    f = finding(d, lo, hi, _lower(r))
    txt = diff_text(d, lo, hi, _unit(r), digits)
    return {"better": f"yes ({txt})", "worse": f"no, {b} is better ({txt})"}.get(f, f"no difference shown ({txt})")


def task_lines(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Per (task, protocol): the sub-bullets under the task's curation bullet (best layer-aware member and every
    method against it, at the end of training and at the best-validation epoch; each method against its own
    rate-matched random; vanilla's convergence)."""
    out: dict[tuple[str, str], list[str]] = {}
    for key, rs in _group(rows).items():
        lines = []
        best = next((r["best_layer_aware"] for r in rs if r.get("best_layer_aware")), None)
        unit = _unit(rs[0])
        if best:
            mean = next((r.get("best_layer_aware_mean") for r in rs if r.get("best_layer_aware_mean") is not None),
                        None)
            vs = [f"{method_label(r['method'], r.get('rate_matched_to'))} {diff_text(r['vs_best_diff'], r.get('vs_best_low'), r.get('vs_best_high'))}"
                  for r in rs if r.get("vs_best_diff") is not None]
            lines.append(f"    - Best layer-aware member: {best}" + (f" (mean {mean:.1f}{unit.strip() and ' %'})"
                                                                       if mean is not None else "")
                         + f". Method − {best}{unit and ' (pp)'}: " + ("; ".join(vs) or "no other method") + ".")
        bv = [f"{method_label(r['method'], r.get('rate_matched_to'))} {diff_text(r['bv_diff'], r.get('bv_low'), r.get('bv_high'))}"
              + (f" (− {best}: {diff_text(r['bv_best_diff'], r.get('bv_best_low'), r.get('bv_best_high'))})"
                 if r.get("bv_best_diff") is not None else "") for r in rs if r.get("bv_diff") is not None]
        if bv:
            lines.append("    - At the best-validation epoch (test metric there; method − vanilla, and − "
                         f"{best or 'the best layer-aware member'}): " + "; ".join(bv) + ".")
        rnd = [f"{method_label(r['method'], r.get('rate_matched_to'))} − {method_label(r['random_control'], r['method'])} "
               f"{diff_text(r['vs_random_diff'], r.get('vs_random_low'), r.get('vs_random_high'), unit)}: "
               + finding(r["vs_random_diff"], r.get("vs_random_low"), r.get("vs_random_high"), _lower(r))
               for r in rs if r.get("random_control") and r.get("vs_random_diff") is not None]
        if rnd:
            lines.append("    - Against dropping as many samples at random (its own rate-matched random, paired by "
                         "seed): " + "; ".join(rnd) + ".")
        conv = convergence_text(rs[0])
        if conv:
            lines.append(f"    - Convergence: {conv}.")
        out[key] = lines
    return out


def convergence_text(r: dict[str, Any]) -> str:
    """"vanilla's plateau rule held on every seed (3 of 3; 40 epochs)" / "... did NOT hold on every seed ..."."""
    kn = _held(r)
    if kn is None:
        return ""
    k, n = kn
    gain = r.get("vanilla_plateau_gain")
    g = f", largest gain over the window {gain:+.1f}{_unit(r)}" if gain is not None else ""
    tol = "1 pp" if r.get("metric") == "accuracy" else "its tolerance"
    return (f"vanilla's plateau rule (the best clean-validation value of the last epochs gains < {tol}) "
            f"{'held on every seed' if k == n else 'did NOT hold on every seed'} ({k} of {n}; "
            f"{r.get('epochs') or '?'} epochs{g})")


def _vs_lai_last(s: dict[str, Any]) -> list[str]:
    parts = []
    for r in s.get("curation_vs_lai") or []:
        if r.get("method") == "lai-last" and r.get("diff") is not None:  # the row is lai-last − lai: flip it
            flip = {"diff": -r["diff"], "low": None if r.get("high") is None else -r["high"],
                    "high": None if r.get("low") is None else -r["low"], "metric": r.get("metric")}
            parts.append(f"{_where(r)}: " + _yes_no(flip, "", "LAI", "last-layer LAI"))
    return parts


def _held(r: dict[str, Any]) -> tuple[int, int] | None:
    held = r.get("vanilla_plateau")
    if not held or "/" not in str(held):
        return None
    k, n = (int(x) for x in str(held).split("/"))
    return k, n


def curation_bottoms(s: dict[str, Any]) -> list[str]:
    """One plain sentence per curation question (see the module docstring); [] without curation results."""
    rows = [r for r in s.get("curation") or [] if r.get("diff") is not None]
    if not rows:
        return []
    out = []
    last = _vs_lai_last(s)
    out.append("Curation, the layer-aware sum: does all-layer LAI beat last-layer LAI (final test metric, LAI − "
               "last-layer LAI)? " + ("; ".join(last) if last else "not measured (no run of both)") + ".")
    member, best_all, conv = [], [], []
    for (task, proto), rs in _group(rows).items():
        where = f"{task} ({proto})"
        best = next((r["best_layer_aware"] for r in rs if r.get("best_layer_aware")), None)
        b = next((r for r in rs if r["method"] == best), None)
        if b is not None:
            rnd = (f"beats {method_label(b['random_control'], best)}: "
                   + _yes_no(b, "vs_random_", best, method_label(b["random_control"], best))
                   if b.get("random_control") else "no rate-matched random was run")
            member.append(f"{where}, {best}: beats vanilla: {_yes_no(b, '', best, 'vanilla')}; {rnd}")
        cands = [r for r in rs if r["method"] not in NOT_BEST and r.get("method_mean") is not None]
        if cands and best:
            pick = min if _lower(rs[0]) else max
            top = pick(cands, key=lambda r: r["method_mean"])
            if top["method"] == best:
                best_all.append(f"{where}: the best layer-aware member {best} itself")
            else:
                best_all.append(f"{where}: {method_label(top['method'], top.get('rate_matched_to'))}, "
                                f"{diff_text(top.get('vs_best_diff'), top.get('vs_best_low'), top.get('vs_best_high'), _unit(top))}"
                                f" over {best} ({finding(top.get('vs_best_diff'), top.get('vs_best_low'), top.get('vs_best_high'), _lower(top))})"
                                if top.get("vs_best_diff") is not None
                                else f"{where}: {method_label(top['method'], top.get('rate_matched_to'))}")
        kn = _held(rs[0])
        if kn is not None:
            conv.append((where, kn[0] == kn[1], rs[0]))
    out.append("Curation, the best layer-aware member (highest mean final metric among lai, lai-last, exact-top2, "
               "...): does it beat vanilla and its own rate-matched random? "
               + ("; ".join(member) if member else "no layer-aware method was run") + ".")
    if best_all:
        out.append("Curation, the best method overall (highest mean final metric, the oracle left out), and by how "
                   "much over the best layer-aware member (paired): " + "; ".join(best_all) + ".")
    if conv:
        bad = [f"{w} ({r.get('vanilla_plateau')} seeds, {r.get('epochs')} epochs)" for w, ok, r in conv if not ok]
        out.append(f"Curation, convergence: vanilla's plateau rule held on every seed on {len(conv) - len(bad)} of "
                   f"{len(conv)} task/protocols" + (f"; not on {', '.join(bad)}" if bad else "") + ".")
    return out


def combined_detection(s: dict[str, Any]) -> str:
    """The detection bottom line's clause on the combined rank: AUROC(loss+lai-last) − AUROC(loss) per model."""
    cs = [c for c in s.get("comparisons", []) if c["question"] == "detection-combined"]
    if not cs:
        return ""
    parts = []
    for c in cs:
        lo, hi = c.get("low"), c.get("high")
        f = finding(c["value"], lo, hi)
        parts.append(f"{c['where']} {diff_text(c['value'], lo, hi, digits=3)} "
                     + {"better": "(helps)", "worse": "(hurts)"}.get(f, "(no difference shown)"))
    return ("; does adding the influence score to the loss help detection (combined rank of the loss and "
            "last-layer LAI, AUROC loss+lai-last − loss)? " + ", ".join(parts))


__all__ = ["task_lines", "curation_bottoms", "combined_detection", "convergence_text", "finding", "diff_text"]
