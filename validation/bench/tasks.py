"""``lai bench``'s curation-task section: a curated training step against a vanilla one on the curation tasks.

The cost issue's curated-step rows are measured on the tasks ``lai curate`` trains (their model, batch size and
reference set), with ``validation.curation.timing.time_methods``: every method on its own model copy, one step
each per batch in rotated order, medians over the steps. Each influence method is timed twice side by side:
reference statistics recomputed every step (``@1``) and kept for ``KEPT`` steps (``@KEPT``, ``lai curate
--refresh-every``), so the table shows what the kept statistics buy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from influence.curation.methods import METHODS as CURATION_METHODS
from influence.estimators import estimator_names
from validation.bench.targets import CURATED_OVER_STEP, target, target_lines
from validation.curation.tasks import get_task, prepare
from validation.curation.timing import time_methods
from validation.settings import estimators as chosen

TASKS = ("mnist1d-noisy40", "digits-noisy40")
def methods() -> tuple[str, ...]:
    """The curation methods timed: every registered estimator without per-sample gradients that is a curation
    method (read from the registry when called)."""
    return tuple(n for n in estimator_names(per_sample_gradients=False, sequence_only=False) if n in CURATION_METHODS)
KEPT = 8
def bounds() -> dict[str, float]:
    """Curated step / vanilla step, by the estimator's family (``CURATED_OVER_STEP["curated-<family>"]``)."""
    return {m: CURATED_OVER_STEP[f"curated-{chosen.family(m)}"] for m in methods()
            if f"curated-{chosen.family(m)}" in CURATED_OVER_STEP}


def tasks_section(task: str, steps: int, tiny: bool = False) -> dict[str, Any]:
    """Interleaved step timing of vanilla and ``methods()`` at refresh 1 and ``KEPT`` on ``task`` (seed 0)."""
    spec = get_task(task)
    if tiny:
        spec = dataclasses.replace(spec, max_train=4 * spec.batch_size)
    labels = [f"{m}@{k}" for k in (1, KEPT) for m in methods()]
    rows = time_methods(prepare(spec, 0), labels, seed=0, steps=steps, warmup=2 if tiny else 3)
    return {"task": task, "batch_size": spec.batch_size, "n_ref": spec.n_ref, "model": spec.model, "steps": steps,
            "rows": rows}


def task_targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Target rows (``targets.target``) for every timed influence method."""
    out, limits = [], bounds()
    for r in section["rows"]:
        method, _, k = r["method"].partition("@")
        if method in limits:
            out.append(target(f"curated {method} step (statistics kept {k} step{'s' if k != '1' else ''}) / "
                              f"vanilla step, {section['task']}", r["time_vs_vanilla"], limits[method], clock="wall"))
    return out


def render_tasks(sections: dict[str, dict[str, Any]]) -> list[str]:
    """Text lines of the tasks section."""
    lines = []
    for task, sec in sections.items():
        lines += ["", f"== curation task {task}: {sec['model']}, batch {sec['batch_size']}, reference "
                      f"{sec['n_ref']} (wall ms, medians of {sec['steps']} interleaved steps)",
                  f"   {'method@refresh':<17}{'step ms':>10}{'score ms':>10}{'update ms':>11}{'x vanilla':>11}"]
        for r in sec["rows"]:
            lines.append(f"   {r['method']:<17}{r['step_ms']:>10.2f}{r['score_ms']:>10.2f}{r['update_ms']:>11.2f}"
                         f"{r['time_vs_vanilla']:>11.2f}")
        lines += target_lines(task_targets(sec))
    return lines


__all__ = ["TASKS", "methods", "bounds", "KEPT", "tasks_section", "task_targets", "render_tasks"]
