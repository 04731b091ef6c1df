"""How ``lai bench``'s results are printed and saved (``bench.json``, ``bench.txt``); the targets are in
``validation.bench.targets``."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence._version import __version__
from influence.atomic import atomic_write_text
from validation.bench.overhead import render_overhead
from validation.bench.realsize_report import render_realsize
from validation.bench.targets import fmt, target_lines, total_memory_mb
from validation.bench.tasks import render_tasks


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
                             f"{fmt(r[pre + 'ratio_to_forward']):>11}{fmt(r[pre + 'ratio_to_forward_backward']):>11}"
                             f"{fmt(r[pre + 'ratio_to_train_step']):>14}{fmt(r['peak_ratio_to_ghost']):>12}")
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
        lines += render_realsize(report["realsize"], clock)
    if report.get("overhead"):
        lines += render_overhead(report["overhead"])
    if report.get("tasks"):
        lines += render_tasks(report["tasks"])
    return "\n".join(lines) + "\n"


def save(report: dict[str, Any], out: Path) -> None:
    """``bench.json`` and ``bench.txt`` under ``out``, each written atomically."""
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1, default=float))
    atomic_write_text(out / "bench.txt", render(report))


__all__ = ["render", "save", "environment", "loadavg"]
