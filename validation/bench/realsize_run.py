"""Planning and running ``lai bench``'s real-size rows, one guarded child process per row.

Rows of a run (keys ``<workload>/<name>``):

* every (real-size workload, estimator) pair (``validation.bench.rows.estimator_row``); token-sequence-only
  estimators (``lai-aligned``) on the language models only;
* on ``gpt2-small`` (``CURATED_WORKLOADS``): ``curated-lai@8`` and ``curated-lai-last@8``, a curated step against
  a plain step (batch 8, reference 32 sequences, statistics kept for 8 steps; ``curated_row``), and
  ``dataset-<estimator>`` for LAI,
  last-layer LAI and Ghost: ``score_dataset`` throughput on ``dataset_n`` sequences (``dataset_row``).

Each row runs in its own process (``validation.bench.isolate.run_isolated``) under a wall timeout and a
resident-memory limit; its outcome (ok, refused, error, killed, timeout) and measured numbers are stored under
``report["realsize"]["rows"][key]`` and the report is saved (atomically) after every row. A row whose stored job
equals the new one is skipped on ``--resume``, whatever its outcome.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from influence.estimators import estimator_names
from validation.bench.isolate import GIB, run_isolated
from validation.bench.realsize import LM_WORKLOADS, estimators_for, real_spec
from validation.bench.realsize_report import row_ratios, row_targets
from validation.settings import estimators as chosen


def real_estimators() -> tuple[str, ...]:
    """Every registered estimator but ``chosen.UNTIMED`` (read from the registry when called)."""
    return tuple(chosen.timed(sequence=True))
CURATED_WORKLOADS = ("gpt2-small",)
#: the data-set scoring rows: the registered estimators without per-sample gradients
def dataset_estimators() -> tuple[str, ...]:
    """The estimators whose ``score_dataset`` throughput is measured (no per-sample gradients, not sequence-only)."""
    return tuple(estimator_names(per_sample_gradients=False, sequence_only=False))
KEPT = 8  # steps the curated row keeps its reference statistics (issue 23: k = 8)
def curated_methods() -> tuple[str, ...]:
    """The curation methods timed against a plain step (influence estimators without a backward)."""
    return tuple(chosen.forward_only())
CURATED_BATCH, CURATED_REF = 8, 32  # sequences (issue 23)
TINY_CURATED = (4, 4)
ROWS = "validation.bench.rows"


@dataclass(frozen=True)
class RealSettings:
    """The settings of a real-size run. ``overrides``: ``RealSpec`` fields replaced on every workload
    (``n_layers``, ``seq_len``, ``n_score``, ``n_ref``; None keeps the workload's); ``dataset_n``: sequences of
    the ``score_dataset`` rows (0: no such rows); ``timeout_s`` and ``rss_limit_gb``: each row's guard."""

    repeats: int = 3
    threads: int = 1
    device: str = "cpu"
    tiny: bool = False
    vocab: int | None = None
    overrides: dict[str, int | None] = field(default_factory=dict)
    curated: bool = True
    dataset_n: int = 512
    timeout_s: float = 3600.0
    rss_limit_gb: float = 8.0
    seed: int = 0

    def base_job(self, workload: str) -> dict[str, Any]:
        return {"workload": workload, "tiny": self.tiny, "vocab": self.vocab, "threads": self.threads,
                "device": self.device, "seed": self.seed,
                "overrides": {k: v for k, v in self.overrides.items() if v is not None}}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlannedRow:
    """One row to run: its ``key``, ``workload``, ``kind`` (estimator, curated, dataset), ``name``, the child's
    ``target`` (``module:function``) and ``job``."""

    key: str
    workload: str
    kind: str
    name: str
    target: str
    job: dict[str, Any]


def plan_rows(workloads: list[str], estimators: tuple[str, ...] | list[str], s: RealSettings) -> list[PlannedRow]:
    """The rows of a run over ``workloads`` (real-size names) and ``estimators`` (see the module docstring)."""
    rows = []
    for wl in workloads:
        spec = real_spec(wl, tiny=s.tiny, vocab=s.vocab)
        for e in estimators_for(spec, estimators):
            job = {**s.base_job(wl), "estimator": e, "repeats": s.repeats}
            rows.append(PlannedRow(f"{wl}/{e}", wl, "estimator", e, f"{ROWS}:estimator_row", job))
        if wl not in CURATED_WORKLOADS:
            continue
        sizes = TINY_CURATED if s.tiny else (CURATED_BATCH, CURATED_REF)
        job = s.base_job(wl)
        job["overrides"].update(n_score=sizes[0], n_ref=sizes[1])
        if s.curated:
            for method in curated_methods():
                name = f"curated-{method}@{KEPT}"
                rows.append(PlannedRow(f"{wl}/{name}", wl, "curated", name, f"{ROWS}:curated_row",
                                       {**job, "method": method, "k": KEPT}))
        if s.dataset_n > 0:
            for e in (e for e in dataset_estimators() if e in estimators):
                rows.append(PlannedRow(f"{wl}/dataset-{e}", wl, "dataset", f"dataset-{e}", f"{ROWS}:dataset_row",
                                       {**job, "estimator": e, "n": s.dataset_n}))
    return rows


def run_rows(plan: list[PlannedRow], section: dict[str, Any], s: RealSettings, clock: str,
             save: Callable[[], None], progress: bool = True,
             runner: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Run every planned row not already in ``section["rows"]`` with the same job, each in a guarded child
    (``runner``, default ``run_isolated``), storing its outcome and calling ``save()`` after each. Returns
    ``section``."""
    rows = section.setdefault("rows", {})
    runner = runner or run_isolated
    for p in plan:
        old = rows.get(p.key)
        if old is not None and old.get("job") == p.job:
            continue
        if progress:
            print(f"[bench] {p.key} ...", file=sys.stderr, flush=True)
        out = runner(p.target, p.job, timeout_s=s.timeout_s, rss_limit_bytes=int(s.rss_limit_gb * GIB))
        row = {"key": p.key, "workload": p.workload, "kind": p.kind, "name": p.name, "status": out.status,
               "text": out.text, "wall_s": out.wall_s, "rss_peak_bytes": out.rss_peak_bytes, "result": out.result,
               "log_tail": out.log_tail, "job": p.job}
        row["ratios"] = row_ratios(row, clock)
        row["targets"] = row_targets(row, clock)
        rows[p.key] = row
        if progress:
            print(f"[bench] {p.key}: {out.text} ({out.wall_s:.1f} s, peak RSS {out.rss_peak_bytes / GIB:.2f} GiB)",
                  file=sys.stderr, flush=True)
        save()
    return section


def default_estimators(workloads: list[str]) -> tuple[str, ...]:
    """``real_estimators()`` (the token-sequence-only ones only when a language model is among ``workloads``)."""
    if any(w in LM_WORKLOADS for w in workloads):
        return real_estimators()
    return tuple(e for e in real_estimators() if not chosen.is_sequence_only(e))


__all__ = ["RealSettings", "PlannedRow", "plan_rows", "run_rows", "default_estimators", "real_estimators",
           "CURATED_WORKLOADS", "dataset_estimators", "curated_methods", "KEPT"]
