"""Loader for curated-training results (``python -m validation curate``, see validation/curation/experiment.py).

Layout read (one folder per task and configuration):

    <results>/curate/<task>-<config id>/
        config.json                               {"task": {name, dataset, model, noise, rate, epochs, ...}, ...}
        units/curate/<task>/seed<s>/<method>.json {"task", "method", "seed", "metric" (accuracy | perplexity),
                                                   "final" (test metric after training),
                                                   "curve" (test metric after each epoch), "kept_fraction",
                                                   "noise_recall", "drop_precision", "noise": {"rate", ...}, ...}
        steps/<method>/seed<s>.csv                per-step log (loss, kept_fraction, noisy_kept, noisy_dropped, ...)

When several folders hold the same task (runs with different settings), the most recently modified one is
used, and the others are listed in ``CurationResults.ignored``. A unit missing a field is skipped with a note
(``CurationResults.notes``) rather than failing the figure.

Two tables come out:

* ``final``: task, family, dataset, model, noise (kind), rate (noise level, fraction), method, seed, metric,
  final, kept_fraction, noise_recall, drop_precision, epochs, folder;
* ``curves``: task, family, rate, method, seed, metric, epoch (1 = after the first epoch), value.

``family`` groups the tasks that differ only in noise level: the task name without its ``-noisy<pct>`` part
(``mnist1d-noisy40-classdep`` -> ``mnist1d-classdep``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tables import Table

FINAL_COLUMNS = ["task", "family", "dataset", "model", "noise", "rate", "method", "seed", "metric", "final",
                 "kept_fraction", "noise_recall", "drop_precision", "epochs", "folder"]
CURVE_COLUMNS = ["task", "family", "rate", "method", "seed", "metric", "epoch", "value"]


@dataclass
class CurationResults:
    final: Table
    curves: Table
    folders: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def family_of(task: str) -> str:
    """Task name without its noise level: ``mnist1d-noisy40-classdep`` -> ``mnist1d-classdep``."""
    return re.sub(r"-noisy\d+", "", task)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _mtime(folder: Path) -> float:
    """Latest modification time of the folder's units (or of the folder)."""
    times = [p.stat().st_mtime for p in folder.rglob("*.json")]
    return max(times, default=folder.stat().st_mtime)


def curation_folders(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(folders used, folders ignored) under ``root`` (the ``curate`` folder itself or its parent): the newest
    folder per task."""
    root = Path(root)
    base = root / "curate" if (root / "curate").is_dir() else root
    if not base.is_dir():
        return [], []
    by_task: dict[str, list[Path]] = {}
    for cfg in sorted(base.glob("*/config.json")):
        try:
            task = _read_json(cfg).get("task", {}).get("name") or cfg.parent.name.rsplit("-", 1)[0]
        except (OSError, ValueError, AttributeError):
            continue
        by_task.setdefault(task, []).append(cfg.parent)
    used, ignored = [], []
    for task in sorted(by_task):
        folders = sorted(by_task[task], key=_mtime, reverse=True)
        folders = [f for f in folders if any((f / "units").rglob("*.json"))] or folders
        used.append(folders[0])
        ignored.extend(folders[1:])
    return used, ignored


def load_curation(root: str | os.PathLike) -> CurationResults:
    """The ``final`` and ``curves`` tables of every curation folder under ``root`` (see module docstring)."""
    used, ignored = curation_folders(root)
    final, curves, notes = [], [], []
    for folder in used:
        cfg = _read_json(folder / "config.json")
        spec = cfg.get("task", {}) if isinstance(cfg.get("task"), dict) else {}
        for path in sorted((folder / "units").rglob("*.json")):
            try:
                u = _read_json(path)
                task = u.get("task") or spec.get("name")
                rate = (u.get("noise") or {}).get("rate", spec.get("rate"))
                row = {"task": task, "family": family_of(task), "dataset": spec.get("dataset"),
                       "model": spec.get("model"), "noise": spec.get("noise"), "rate": float(rate),
                       "method": u["method"], "seed": int(u["seed"]), "metric": u["metric"],
                       "final": float(u["final"]), "kept_fraction": u.get("kept_fraction"),
                       "noise_recall": u.get("noise_recall"), "drop_precision": u.get("drop_precision"),
                       "epochs": len(u.get("curve") or []), "folder": str(folder)}
            except (KeyError, TypeError, ValueError) as exc:
                notes.append(f"skipped {path}: {type(exc).__name__}: {exc}")
                continue
            final.append(row)
            for epoch, value in enumerate(u.get("curve") or [], start=1):
                curves.append({"task": task, "family": row["family"], "rate": row["rate"], "method": row["method"],
                               "seed": row["seed"], "metric": row["metric"], "epoch": epoch, "value": float(value)})
    return CurationResults(Table(final, FINAL_COLUMNS, "curation units"), Table(curves, CURVE_COLUMNS, "curation units"),
                           used, ignored, notes)


__all__ = ["CurationResults", "load_curation", "curation_folders", "family_of", "FINAL_COLUMNS", "CURVE_COLUMNS"]
