"""The words and numbers of the report: status marks, the README's cost ranges, and how an estimate, a paired
difference, a label or a number is written (shared by the verdict and the tables)."""

from __future__ import annotations

import math
from typing import Any

from validation.settings import estimators as chosen

from .checks import RANK_BAR, _fmt_diff

MARK = {"pass": "PASS", "fail": "**FAIL**", "not run": "not run", "no guarantee": "no guarantee",
        "inconclusive": "inconclusive"}

KIND = {"theory": "software check", "expectation": "comparison", "claim": "README claim"}

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

def _cmp(s: dict[str, Any], question: str, where: str | None = None, **match: Any) -> list[dict[str, Any]]:
    return [c for c in s.get("comparisons", []) if c["question"] == question
            and (where is None or c["where"] == where) and all(c.get(k) == v for k, v in match.items())]

def _d(c: dict[str, Any], digits: int = 2) -> str:
    return _fmt_diff(c, digits)

def _said(c: dict[str, Any], better: str = "ranks closer to Exact") -> str:
    """One comparison in words: "Last-layer LAI − LAI +0.06 [+0.02, +0.10]: last-layer LAI ranks closer"."""
    a, b = _label(c["a"]), _label(c["b"])
    if c["finding"] == "none":
        return f"{a} − {b} {_d(c)}: no difference shown"
    win = a if c["finding"] == "a" else b
    return f"{a} − {b} {_d(c)}: {win} {better}"

def _bar_words(e: dict[str, Any]) -> str:

    if e["value"] < RANK_BAR:
        return "below the bar"
    lo = e.get("low")
    return "at the bar" + ("" if lo is not None and lo >= RANK_BAR else ", but the interval's lower end is below it")

def _miss(c: dict[str, Any]) -> str:
    """How far a measured cost ratio lies outside the README's range, in x of the base pass."""
    m = abs(c["miss"])
    return f"{m:.2f}x" if m >= 0.01 else f"{m:.1g}x"

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

def _list(items: list[str], empty: str = "none") -> str:
    return ", ".join(items) if items else empty

def _num(v: Any, digits: int = 3) -> str:
    """Fixed-point for ordinary numbers, 2 significant digits for small ones (a ratio of 0.00015 is not 0.000)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.2g}" if v != 0 and abs(v) < 10 ** -(digits - 1) else f"{v:.{digits}f}"
