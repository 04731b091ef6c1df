"""Run a curated-training profile (``validation.settings.profiles.CURATION_PROFILES``) seed by seed.

    lai curate --profile paper --out results          # resumable; rerun to continue
    lai curate --profile quick --seeds 0-1            # other seeds than the profile's

Order: for each seed, for each task, for each protocol, every method of that protocol; so an interrupted run
holds complete seeds of every task rather than all seeds of the first task. Each (task, protocol) has its
run folder ``<results>/curate/<task>-<protocol>-<id>/`` (see ``experiment``); the finished units are never
recomputed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..settings.profiles import get_curation_profile
from .experiment import RunDir, run_comparison
from .protocols import apply_protocol
from .tasks import TaskSpec, get_task


def profile_specs(profile: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[tuple[TaskSpec, list[str]]]:
    """(task spec with its protocol applied, methods) for every task and protocol of ``profile``."""
    out = []
    for task in profile["tasks"]:
        base = get_task(task)
        if profile.get("epochs"):
            base = dataclasses.replace(base, epochs=profile["epochs"])
        if overrides:
            base = dataclasses.replace(base, **overrides)
        for protocol, methods in profile["methods"].items():
            out.append((apply_protocol(base, protocol), list(methods)))
    return out


def run_profile(name: str, results: str | Path = "results", seeds: list[int] | None = None,
                progress: bool = False, log: Callable[[str], None] = print,
                overrides: dict[str, Any] | None = None) -> list[RunDir]:
    """Run (or resume) curation profile ``name`` into ``<results>/curate``; returns the run folders."""
    profile = get_curation_profile(name)
    if profile.get("threads"):
        torch.set_num_threads(profile["threads"])
    seeds = list(profile["seeds"] if seeds is None else seeds)
    specs = profile_specs(profile, overrides)
    runs: dict[str, RunDir] = {}
    start = time.perf_counter()
    for seed in seeds:
        for spec, methods in specs:
            run, _, _ = run_comparison(spec, methods, [seed], results, progress=progress, log=log,
                                       refresh_every=profile.get("refresh_every", 1))
            runs[str(run.root)] = run
        log(f"[profile {name}] seed {seed} done for every task and protocol "
            f"({time.perf_counter() - start:.0f} s, {time.process_time():.0f} s CPU so far)")
    for spec, methods in specs:  # tables over all seeds of each folder
        run, _, _ = run_comparison(spec, methods, seeds, results, log=lambda _: None,
                                   refresh_every=profile.get("refresh_every", 1))
    return list(runs.values())
