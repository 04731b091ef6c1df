"""The curation table's further paired comparisons (added as columns of ``paired``, PAIR_COLUMNS):

* against the **best layer-aware member** of the task: the layer-aware method (registry family ``lai`` or
  ``top-layers``: lai, lai-last, exact-top2, ...; never Exact or Ghost) with the highest mean final test metric on
  that (task, protocol); ``vs_best_*`` is method − that member, paired by seed;
* the same two comparisons (− vanilla, − best layer-aware member) on the test metric at the best clean-validation
  epoch (``best_val_test``): ``bv_*`` and ``bv_best_*``;
* against the method's **own rate-matched random** (``random-as-<method>``, or plain ``random`` for ``lai``):
  ``vs_random_*`` is method − random (same kept fraction), paired by seed;
* **convergence** of the task's vanilla runs by the plateau rule (validation/curation/convergence.py):
  ``vanilla_plateau`` ("held/seeds"), ``vanilla_plateau_gain`` (the largest gain over the window, in the
  metric's units: pp for accuracy) and ``epochs``.

Accuracy differences are in percentage points; every interval is the 95 % paired t interval over the seeds both
sides finished (``validation.report.stats.paired_difference``). Method names the registry does not know (a later
entry, ``<rate>-as-<method>`` variants) are handled by name: they are never layer-aware, and
:func:`method_label` writes ``random-as-lai-last`` as "random (rate of lai-last)".
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from influence.curation.methods import MATCH_SEP, get_method
from validation.report.tables import Table

#: registry families whose members are layer-aware (exact-top2 is ``top-layers``, LAI's variants ``lai``)
LAYER_AWARE_FAMILIES = ("lai", "top-layers")
RATE_SEP = MATCH_SEP  # <rate method>-as-<method>: keeps the kept fraction of <method> (influence.curation.methods)
COMBINED_PREFIX = "loss+"  # loss+<estimator>: the combined rank, rate-matched to <estimator>
#: plain names of the rate-matched controls: ``random`` keeps LAI's fraction
PLAIN_MATCH = {"random": "lai"}
#: how the small-loss variants read: small-loss is handed the task's true noise rate
SPECIAL_LABELS = {"small-loss": "small-loss (oracle rate)", "small-loss-est": "small-loss (estimated rate)"}
PAIR_COLUMNS = ["best_layer_aware", "best_layer_aware_mean", "vs_best_diff", "vs_best_low", "vs_best_high",
                "vs_best_n", "bv_vanilla_mean", "bv_method_mean", "bv_diff", "bv_low", "bv_high", "bv_n",
                "bv_best_diff", "bv_best_low", "bv_best_high", "random_control", "vs_random_diff", "vs_random_low",
                "vs_random_high", "vs_random_n", "plateau", "vanilla_plateau", "vanilla_plateau_gain", "epochs"]


def split_rate(method: str) -> tuple[str, str] | None:
    """``random-as-lai-last`` -> ("random", "lai-last"); plain ``random`` -> ("random", "lai"); else None."""
    if RATE_SEP in method:
        base, _, target = method.partition(RATE_SEP)
        return (base, target) if base and target else None
    return (method, PLAIN_MATCH[method]) if method in PLAIN_MATCH else None


def matched_to(method: str, match: str) -> str:
    """The method whose kept fraction ``method`` used, as the method table says (``Method.match``: X for
    ``<rate>-as-X`` and ``loss+X``; ``match`` for the other rate-matched methods; "" for the rest). A name the table
    does not know (a method of another code revision) is read by its spelling: X for ``<rate>-as-X`` and ``loss+X``."""
    try:
        m = get_method(method)
    except ValueError:
        if RATE_SEP in method:
            return (split_rate(method) or ("", ""))[1]
        return method[len(COMBINED_PREFIX):] if method.startswith(COMBINED_PREFIX) else ""
    return m.match or (match if m.rate_matched else "")


def method_label(method: str, matched: str | None = None) -> str:
    """How a curation method reads in the report: ``random-as-X`` -> "random (rate of X)", small-loss ->
    "small-loss (oracle rate)", small-loss-est -> "small-loss (estimated rate)", anything else its name.
    ``matched``: the method whose kept fraction it matched as its units recorded it (``rate_matched_to``; "" for
    none), which overrides the spelling (plain ``random`` is LAI's only under the default match)."""
    if method in SPECIAL_LABELS:
        return SPECIAL_LABELS[method]
    sp = split_rate(method)
    if sp and matched is not None:
        sp = (sp[0], matched)
    return (f"{sp[0]} (rate of {sp[1]})" if sp[1] else sp[0]) if sp else method


def is_layer_aware(method: str) -> bool:
    """Whether ``method`` is a layer-aware estimator of the registry (family lai or top-layers, not exact)."""
    if split_rate(method) is not None:
        return False
    try:
        from validation.settings import estimators as chosen

        return chosen.family(method) in LAYER_AWARE_FAMILIES and not chosen.is_exact(method)
    except Exception:  # noqa: BLE001 - a name the registry does not know (a curation baseline, a later entry)
        return False


def rate_control(method: str, methods: set[str] | list[str], recorded: dict[str, str] | None = None) -> str | None:
    """The rate-matched random of ``method`` among ``methods``. ``recorded``: method -> the method whose kept
    fraction it matched, as its units recorded it (``matched_to``); without a record, ``random-as-<method>``, or plain
    ``random`` for LAI (the experiment's default match)."""
    randoms = [m for m in methods if (split_rate(m) or ("",))[0] == "random"]
    if recorded and any(m in recorded for m in randoms):  # the units say what each random matched: use only that
        hits = [m for m in randoms if recorded.get(m) == method]
        return min(hits, key=lambda m: (m != f"random{RATE_SEP}{method}", m), default=None)
    if f"random{RATE_SEP}{method}" in methods:
        return f"random{RATE_SEP}{method}"
    return next((m for m, target in PLAIN_MATCH.items() if target == method and m in methods), None)


def _truth(v: Any) -> bool | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return None
    return v in (True, 1, 1.0) or str(v).strip().lower() in ("true", "1", "yes")


def _values(t: Table, method: str, column: str, scale: float) -> dict[int, float]:
    out = {}
    for r in t.where(method=method):
        v = r.get(column)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[int(r["seed"])] = scale * float(v)
    return out


def _mean(d: dict[int, float]) -> float | None:
    return sum(d.values()) / len(d) if d else None


def _pair(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """diff, low, high, n of a − b over the seeds both have (None where fewer than one pair / no interval)."""
    from validation.report.stats import paired_difference

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"diff": None, "low": None, "high": None, "n": 0}
    pd = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
    clean = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731
    return {"diff": clean(pd.mean), "low": clean(pd.low), "high": clean(pd.high), "n": pd.n}


def best_layer_aware(t: Table, higher_is_better: bool = True) -> tuple[str | None, float | None]:
    """(name, mean final) of the layer-aware method with the best mean final metric in ``t`` (one task and
    protocol); (None, None) when none ran."""
    means = {m: _mean(_values(t, m, "final", 1.0)) for m in t.unique("method") if is_layer_aware(m)}
    means = {m: v for m, v in means.items() if v is not None}
    if not means:
        return None, None
    pick = max if higher_is_better else min
    best = pick(sorted(means), key=lambda m: means[m])
    return best, means[best]


def plateau_summary(t: Table, method: str) -> tuple[str | None, float | None]:
    """("held/seeds", largest gain) of the plateau rule over ``method``'s units in ``t``; (None, None) if none
    record it."""
    held = [_truth(r.get("plateau_held")) for r in t.where(method=method)]
    held = [h for h in held if h is not None]
    gains = [float(r["plateau_gain"]) for r in t.where(method=method)
             if r.get("plateau_gain") is not None and not (isinstance(r["plateau_gain"], float)
                                                              and math.isnan(r["plateau_gain"]))]
    return (f"{sum(held)}/{len(held)}" if held else None), (max(gains) if gains else None)


def _recorded(t: Table) -> dict[str, str]:
    """method -> the method whose kept fraction its units matched (``matched_to``; one value per method, else
    left out); empty for units without the column."""
    seen: dict[str, set[str]] = {}
    for r in t:
        v = r.get("matched_to")
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            seen.setdefault(r["method"], set()).add(str(v))
    return {m: next(iter(v)) for m, v in seen.items() if len(v) == 1}


def common_match(rows: Iterable[dict[str, Any]], method: str) -> str | None:
    """The ``rate_matched_to`` that every paired row of ``method`` gives (one per task and protocol), so a label over
    all tasks can name it; None when the rows disagree or there are none."""
    seen = {r.get("rate_matched_to") for r in rows if r.get("method") == method}
    return next(iter(seen)) if len(seen) == 1 else None


def add_pairs(rows: list[dict[str, Any]], final: Table, control: str = "vanilla") -> list[dict[str, Any]]:
    """``rows`` (the paired table, method − ``control`` per task and protocol) with PAIR_COLUMNS filled in."""
    groups = final.group("task", "protocol")
    for r in rows:
        t = groups.get((r["task"], r["protocol"]))
        for c in PAIR_COLUMNS:
            r.setdefault(c, None)
        if t is None or not len(t):
            continue
        scale = 100.0 if r.get("metric") == "accuracy" else 1.0
        lower = r.get("metric") == "perplexity"
        vt = t if len(t.where(method=control)) else final.where(task=r["task"])  # vanilla borrowed across protocols
        fin = lambda m, tab=t: _values(tab, m, "final", scale)  # noqa: E731
        bvt = lambda m, tab=t: _values(tab, m, "best_val_test", scale)  # noqa: E731
        method = r["method"]
        best, best_mean = best_layer_aware(t, higher_is_better=not lower)
        r["best_layer_aware"] = best or ""
        r["best_layer_aware_mean"] = None if best_mean is None else scale * best_mean
        if best and best != method:
            p = _pair(fin(method), fin(best))
            r.update(vs_best_diff=p["diff"], vs_best_low=p["low"], vs_best_high=p["high"], vs_best_n=p["n"])
            p = _pair(bvt(method), bvt(best))
            r.update(bv_best_diff=p["diff"], bv_best_low=p["low"], bv_best_high=p["high"])
        bv_m, bv_v = bvt(method), _values(vt, control, "best_val_test", scale)
        p = _pair(bv_m, bv_v)
        r.update(bv_vanilla_mean=_mean({s: bv_v[s] for s in set(bv_m) & set(bv_v)}),
                 bv_method_mean=_mean({s: bv_m[s] for s in set(bv_m) & set(bv_v)}),
                 bv_diff=p["diff"], bv_low=p["low"], bv_high=p["high"], bv_n=p["n"])
        rc = rate_control(method, set(t.unique("method")), _recorded(t))
        r["random_control"] = rc or ""
        if rc:
            p = _pair(fin(method), fin(rc))
            r.update(vs_random_diff=p["diff"], vs_random_low=p["low"], vs_random_high=p["high"],
                     vs_random_n=p["n"])
        r["plateau"] = plateau_summary(t, method)[0]
        held, gain = plateau_summary(vt, control)
        r["vanilla_plateau"], r["vanilla_plateau_gain"] = held, None if gain is None else scale * gain
        epochs = sorted({int(e) for e in vt.where(method=control).values("epochs") if e is not None})
        r["epochs"] = "/".join(str(e) for e in epochs) if epochs else None
    return rows


__all__ = ["LAYER_AWARE_FAMILIES", "PAIR_COLUMNS", "split_rate", "method_label", "is_layer_aware", "rate_control", "matched_to",
           "common_match", "best_layer_aware", "plateau_summary", "add_pairs"]
