"""The targets ``lai bench`` checks: the bounds of the cost issue, one target row per bound, and their text."""

from __future__ import annotations

import math
import os
from typing import Any

MB = float(1 << 20)
# Targets of the cost issue (issue 14's table; the transformer's Exact/Ghost bound is this package's own, the
# issue sets none): bound per (row, column).
GHOST_OVER_EXACT = {"mlp": 25.0, "transformer": 5.0}
LAI_OVER_FORWARD = 1.3
LAI_LAST_OVER_FORWARD = 1.1
LAI_PEAK_OVER_GHOST = 0.5
GHOST_OVER_FORWARD_BACKWARD = 1.3
CURATED_OVER_STEP = {"curated-lai": 1.15, "curated-ghost": 1.5}
SCALING_EXPONENT = 1.15
CLOCKS = ("wall", "cpu")


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["estimator"] == name), None)


def total_memory_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError, AttributeError):
        return math.inf


def check_targets(workload: str, section: dict[str, Any], clock: str = "wall") -> list[dict[str, Any]]:
    """The targets for one workload: [{"target", "value", "bound", "upper", "met", "clock"}] (value None = not
    measured). ``clock``: ``"wall"`` (wall-clock medians) or ``"cpu"`` (process CPU time medians)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    pre = "" if clock == "wall" else "cpu_"
    out = []

    def add(name: str, value: float | None, bound: float, upper: bool = True, by: str | None = clock,
            floor: dict[str, Any] | None = None) -> None:
        out.append(target(name, value, bound, upper, by))
        if floor:
            out[-1]["floor"] = floor[f"{pre}ratio_to_forward"]

    rows = section.get("costs", {}).get("rows", [])
    lai, ghost, exact = _row(rows, "lai"), _row(rows, "ghost"), _row(rows, "exact")
    last = _row(rows, "lai-last")
    if lai:
        add("lai time / forward(train+ref)", lai[f"{pre}ratio_to_forward"], LAI_OVER_FORWARD,
            floor=_row(rows, "lai-floor"))
        add("lai peak / ghost peak", lai["peak_ratio_to_ghost"], LAI_PEAK_OVER_GHOST, by=None)
    if last:
        add("lai-last time / forward(train+ref)", last[f"{pre}ratio_to_forward"], LAI_LAST_OVER_FORWARD,
            floor=_row(rows, "lai-last-floor"))
    if ghost:
        add("ghost time / forward+backward(train+ref)", ghost[f"{pre}ratio_to_forward_backward"],
            GHOST_OVER_FORWARD_BACKWARD)
    if ghost and exact and workload in GHOST_OVER_EXACT:
        add("exact time / ghost time", exact[f"{pre}median_s"] / ghost[f"{pre}median_s"], GHOST_OVER_EXACT[workload],
            upper=False)
    for key, bound in CURATED_OVER_STEP.items():
        r = _row(rows, key)
        if r:
            add(f"{key} step / vanilla step", r[f"{pre}ratio_to_train_step"], bound)
    for est, k in section.get("scaling", {}).get(f"{pre}exponent", {}).items():
        if est.endswith("-floor"):  # a reference for the LAI rows, not a target
            continue
        add(f"{est} scaling exponent in n_train", k, SCALING_EXPONENT)
    big = section.get("big")
    if big:
        for r in big["rows"]:
            add(f"{r['estimator']} scores n={big['n_train']} (peak MB <= machine memory)", r["peak_mb"],
                total_memory_mb(), by=None)
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def target(name: str, value: float | None, bound: float, upper: bool = True, clock: str | None = None
           ) -> dict[str, Any]:
    """One target row: {"target", "value", "bound", "upper", "met" (None: not measured), "clock"}."""
    met = None if value is None else (value <= bound if upper else value >= bound)
    return {"target": name, "value": value, "bound": bound, "upper": upper, "met": met, "clock": clock}


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    """The text of target rows (MET / MISSED / n/a), under a "targets:" line."""
    lines = ["   targets:"]
    for t in targets:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        op = "<=" if t["upper"] else ">="
        lines.append(f"   [{mark:>6}] {t['target']}: {fmt(t['value'], '.3f')} {op} {fmt(t['bound'], '.3g')}"
                     + (f"  ({t['clock']})" if t.get("clock") else "")
                     + (f"  floor {t['floor']:.3f} (plain torch ops, same scores)" if t.get("floor") else ""))
    return lines


__all__ = ["check_targets", "target", "target_lines", "total_memory_mb", "MB", "CLOCKS", "CURATED_OVER_STEP"]
