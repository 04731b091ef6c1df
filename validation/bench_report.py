"""The targets ``lai bench`` checks and how its results are printed and saved (``bench.json``, ``bench.txt``)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence._version import __version__
from influence.atomic import atomic_write_text


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


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine, other processes slow every row (ratios stay fairer
    because the timed calls are interleaved)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(device: str = "cpu") -> dict[str, Any]:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
           "lai": __version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "platform": platform.platform(), "processor": platform.processor() or None,
           "memory_gb": round(total_memory_mb() / 1024, 1), "device": device, "loadavg": loadavg()}
    if torch.device(device).type == "cuda":
        env["device"] = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return env


def _fmt(x: float | None, spec: str = ".2f") -> str:
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
        lines.append(f"   [{mark:>6}] {t['target']}: {_fmt(t['value'], '.3f')} {op} {_fmt(t['bound'], '.3g')}"
                     + (f"  ({t['clock']})" if t.get("clock") else "")
                     + (f"  floor {t['floor']:.3f} (plain torch ops, same scores)" if t.get("floor") else ""))
    return lines


def render(report: dict[str, Any]) -> str:
    """The text report: per workload the cost table, the scaling fit, the op breakdown, the big batch and the
    targets (MET / MISSED / n/a)."""
    env = report["environment"]
    clock = report["args"].get("clock", "wall")
    pre = "" if clock == "wall" else "cpu_"
    lines = [f"lai bench  {report['started']}  lai {env.get('lai')}  torch {env['torch']}  numpy {env['numpy']}  "
             f"python {env['python']}",
             f"machine: {env['platform']} ({env['machine']}), {env['cpu_count']} CPUs, {env['memory_gb']} GB, "
             f"threads {env['threads']}, device {env['device']}, repeats {report['args']['repeats']}, "
             f"load average at start {env.get('loadavg')}"]
    for name, sec in report["workloads"].items():
        costs = sec.get("costs")
        lines += ["", f"== {name}: {sec['meta'].get('model', '')}"]
        if costs:
            lines.append(f"   train {costs['n_train']} / ref {costs['n_ref']}"
                         + (f"; curated steps: {costs['curated_step']}" if costs.get("curated_step") else "")
                         + f"; load average after {costs.get('loadavg_after')}")
            lines.append(f"   ratios by {clock} time (medians of interleaved repeats)")
            lines.append(f"   {'estimator':<17}{'wall ms':>10}{'cpu ms':>10}{'peak MB':>10}{'x forward':>11}"
                         f"{'x fwd+bwd':>11}{'x train step':>14}{'peak/ghost':>12}")
            for r in costs["rows"]:
                lines.append(f"   {r['estimator']:<17}{r['median_s'] * 1e3:>10.2f}"
                             f"{r.get('cpu_median_s', 0) * 1e3:>10.2f}{r['peak_mb']:>10.1f}"
                             f"{_fmt(r[pre + 'ratio_to_forward']):>11}{_fmt(r[pre + 'ratio_to_forward_backward']):>11}"
                             f"{_fmt(r[pre + 'ratio_to_train_step']):>14}{_fmt(r['peak_ratio_to_ghost']):>12}")
        sc = sec.get("scaling")
        if sc:
            lines.append(f"   scaling in n_train (ref {sc['n_ref']}): sizes {sc['sizes']}")
            for e, ts in sc[pre + "median_s"].items():
                lines.append(f"   {e:<17} exponent {sc[pre + 'exponent'][e]:.3f}   {clock} ms: "
                             + " ".join(f"{t * 1e3:.1f}" for t in ts))
        for e, top in sec.get("ops", {}).items():
            lines.append(f"   ops of {e} (share of self CPU time): "
                         + ", ".join(f"{t['op']} {t['share']:.0%}" for t in top[:6]))
        big = sec.get("big")
        if big:
            lines.append(f"   n_train {big['n_train']} (chunks of {big['chunk_size']}), ref {big['n_ref']}:")
            for r in big["rows"]:
                lines.append(f"   {r['estimator']:<17}{r['median_s']:>9.2f} s wall"
                             f"{r.get('cpu_median_s', 0):>9.2f} s cpu{r['peak_mb']:>10.1f} MB")
        lines += target_lines(sec.get("targets", []))
    if report.get("realsize"):
        from .bench_realsize_report import render_realsize
        lines += render_realsize(report["realsize"], clock)
    if report.get("overhead"):
        from .bench_overhead import render_overhead
        lines += render_overhead(report["overhead"])
    if report.get("tasks"):
        from .bench_tasks import render_tasks
        lines += render_tasks(report["tasks"])
    return "\n".join(lines) + "\n"


def save(report: dict[str, Any], out: Path) -> None:
    """``bench.json`` and ``bench.txt`` under ``out``, each written atomically."""
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1, default=float))
    atomic_write_text(out / "bench.txt", render(report))


__all__ = ["check_targets", "target", "target_lines", "render", "save", "environment", "loadavg", "total_memory_mb", "MB", "CLOCKS"]
