"""Run folders, atomic writes, resumable units, provenance, and the formats of every results file.

Layout of a run folder ``<results>/<profile>-<config id>/`` (the id is a hash of the configuration, so the
same command finds the same folder and resumes it):

    config.json        the exact configuration: profile name and settings, seeds, device, torch threads and
                       the code revision (``code``, see code_revision()); all of it is hashed into the id, so
                       other code or another thread count gets another folder, and ``--resume`` of a folder
                       under other code or threads is refused (ResumeMismatchError)
    provenance.json    package versions, python, platform, this package's revision (git commit of its own
                       source tree and whether it was dirty, or the installed version, and a hash of its
                       source files), command line, start time; one entry per invocation on the folder
    units/<suite>/<model>/seed<seed>/step<step>.json   (bound, fidelity)
    units/cost/<model>/w<width>_b<batch>.json          (cost)
                       one finished unit of work each, written atomically and stamped with the code revision
                       and threads; a unit present is never recomputed; a corrupt or empty one is moved
                       aside (``.corrupt``) with a warning and computed again
    checkpoints/<model>/seed<seed>/step<step>.pt      float32 weights at each scored step (resume, TracIn)
    bound.csv, bound_layers.csv, bound_steps.csv, fidelity.csv, auroc.csv, scores.csv, cost.csv
                       tables assembled from the units (rewritten atomically after every invocation)
    summary.json, report.md   headline numbers and checks (see report.py)

Every file is written by ``influence.atomic`` (temporary file in the same folder, fsync, mode 0666 minus the
umask, ``os.replace``), so an interrupted run leaves either the old or the new file, never half of one.

CSV columns (one header row; floats written with full precision; empty = not available, e.g. an a-priori
bound the theory does not provide for the architecture):

* ``bound.csv`` — one row per sample of the scored batch per scored step (float64 scores):
  model, seed, step, sample (training-set index), is_noisy, ghost, lai, exact, error (= ghost - lai),
  abs_error, decomposition_sum (sum over layers of theory.decomposition), data_bound, apriori_bound,
  tightness_data (= abs_error / data_bound), tightness_apriori, violation_data, violation_apriori (0/1).
* ``bound_layers.csv`` — per sample, per layer: model, seed, step, sample, layer, error (that layer's term
  of theory.decomposition), share (= |error_l| / sum_l |error_l|; 0 when the sample's error vanishes).
* ``bound_steps.csv`` — per scored step: model, seed, step, n, violations_data, violations_apriori,
  data_available, apriori_available, tolerance, median_tightness_data, median_tightness_apriori,
  ghost_vs_exact_rel_err, decomposition_rel_err, kendall_lai_ghost, kendall_lower_bound, kendall_bound_holds,
  filter_guaranteed (theory's guaranteed share of samples where keep = score >= 0 agrees between LAI and
  Ghost), filter_agreement (the measured share), filter_bound_holds.
* ``fidelity.csv`` — per step, estimator and target: model, seed, step, estimator, target
  (exact | counterfactual | counterfactual_small_lr), n, k, spearman, kendall, topk_overlap, bottomk_overlap,
  sign_agreement.
* ``auroc.csv`` — per step and estimator: model, seed, step, estimator, auroc, n, n_noisy.
* ``scores.csv`` — per step, sample and estimator: model, seed, step, sample, is_noisy, estimator, score.
  The samples are the same fixed scored batch at every step (trajectories of tracked samples).
* ``training.csv`` — per scored step: model, seed, step, ref_loss, ref_accuracy (argmax accuracy on the
  reference batch; next-token accuracy for the LM), scored_loss_clean, scored_loss_noisy (mean loss of the
  clean / noisy samples of the scored batch).
* ``cost.csv`` — per model, width, batch and estimator: model, seed, width, batch, n_ref, n_params,
  estimator, median_s, peak_mb, ratio_to_forward, ratio_to_forward_backward, ratio_to_train_step,
  peak_ratio_to_train_step, times_s (JSON list).

Estimator names: the registry's (``influence.estimators.estimator_names()``: exact, ghost, lai, lai-last, ...; TracIn
entries sum over the checkpoints of the scored steps up to the current one), the research-only variants of
``validation.settings.estimators.RESEARCH`` (lai-fit), and the baselines loss (score = -loss_i), counterfactual
(the actual one-step effect at the training lr, see suites/counterfactual.py) and counterfactual_small_lr (the
same at lr / 10, rescaled by 10; tends to exact as the step shrinks). Sign
convention everywhere: positive = the sample helps (lowers the reference loss).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from influence._version import __version__
from influence.atomic import (
    atomic_path,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    jsonable,
)
from influence.dataset import ResumeMismatchError  # one error for "results computed under other settings"

TABLES: dict[str, tuple[tuple[str, ...], list[str]]] = {
    # table name -> (suites whose units hold its rows, columns)
    "bound": (("bound",), ["model", "seed", "step", "sample", "is_noisy", "ghost", "lai", "exact", "error",
                        "abs_error", "decomposition_sum", "data_bound", "apriori_bound", "tightness_data",
                        "tightness_apriori", "violation_data", "violation_apriori"]),
    "bound_layers": (("bound",), ["model", "seed", "step", "sample", "layer", "error", "share"]),
    "bound_steps": (("bound",), ["model", "seed", "step", "n", "violations_data", "violations_apriori",
                                  "data_available", "apriori_available", "tolerance", "median_tightness_data",
                              "median_tightness_apriori", "ghost_vs_exact_rel_err", "decomposition_rel_err",
                              "kendall_lai_ghost", "kendall_lower_bound", "kendall_bound_holds",
                              "filter_guaranteed", "filter_agreement", "filter_bound_holds"]),
    "fidelity": (("fidelity",), ["model", "seed", "step", "estimator", "target", "n", "k", "spearman", "kendall",
                              "topk_overlap", "bottomk_overlap", "sign_agreement"]),
    "auroc": (("fidelity",), ["model", "seed", "step", "estimator", "auroc", "n", "n_noisy"]),
    "scores": (("fidelity",), ["model", "seed", "step", "sample", "is_noisy", "estimator", "score"]),
    "cost": (("cost",), ["model", "seed", "width", "batch", "n_ref", "n_params", "estimator", "median_s", "peak_mb",
                      "ratio_to_forward", "ratio_to_forward_backward", "ratio_to_train_step",
                      "peak_ratio_to_train_step", "times_s"]),
    "layer_terms": (("fidelity",), ["model", "seed", "step", "layer", "layer_index", "n_layers", "has_lai_term",
                                    "is_last", "term_spearman", "scale_ratio", "error_share", "ghost_share",
                                    "rho_alone", "rho_fixed", "fit_weight"]),
    "training": (("bound", "fidelity"), ["model", "seed", "step", "ref_loss", "ref_accuracy", "scored_loss_clean",
                                         "scored_loss_noisy"]),
}
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "mnist1d", "tqdm", "sympy", "matplotlib", "lai")


# ------------------------------------------------------------------------------------------ atomic I/O
# (one helper for the whole package: influence/atomic.py; re-exported here for the results code)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`atomic_write_csv` (all values as strings)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------- provenance

def config_id(config: dict[str, Any]) -> str:
    """First 10 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    canon = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:10]


PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding influence/, theory/, validation/
SOURCE_PACKAGES = ("influence", "theory", "validation", "paper_figs", "lai")


@functools.lru_cache(maxsize=None)
def source_hash(root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 (first 12 hex digits) of every ``.py`` file of the four packages under ``root`` (paths and
    contents): identifies the code that ran, whether or not it is a git checkout."""
    h = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def git_revision(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of this package's own source tree: only when the folder
    holding the packages is the top level of a git checkout (an installed copy inside some other repository,
    e.g. a virtual environment in a project folder, is not that repository's code)."""
    root = Path(root) if root is not None else PACKAGE_ROOT
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return {"commit": None, "dirty": None}
        sha = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--", *SOURCE_PACKAGES)
        return {"commit": sha, "dirty": bool(status)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@functools.lru_cache(maxsize=None)
def code_revision() -> str:
    """The code revision results are keyed by: ``git:<commit>`` for a clean checkout,
    ``git:<commit>+<source hash>`` for one with local changes, ``<version>+<source hash>`` for an installed
    copy. Part of every run folder's configuration (so of its id)."""
    git = git_revision()
    if git["commit"]:
        return f"git:{git['commit'][:12]}" + (f"+{source_hash()}" if git["dirty"] else "")
    return f"{__version__}+{source_hash()}"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions, platform, this package's revision, command line and time of this invocation."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(sys.argv if argv is None else argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "lai": {"version": __version__, "revision": code_revision(), "source_hash": source_hash(),
                "root": str(PACKAGE_ROOT)},
        "git": git_revision(),
    }


# ---------------------------------------------------------------------------------------------- folders

class RunDir:
    """A run folder: config, units of finished work, checkpoints and the assembled tables.

    When the configuration holds ``code`` (see :func:`code_revision`) and ``threads``, every unit written is
    stamped with them (``"_run"``) and a unit stamped otherwise is refused (:class:`ResumeMismatchError`)
    instead of being mixed with this run's. A unit file that is not valid JSON, not an object or empty is moved
    aside to ``<name>.corrupt`` with a warning and counts as not finished, so it is computed again."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._stamp: dict[str, Any] | None = None

    # config / provenance
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run folder (no config.json)")
        return read_json(self.config_path)

    def init(self, config: dict[str, Any]) -> None:
        """Create the folder with ``config``, or check an existing one holds the same configuration."""
        if self.config_path.exists():
            old = self.read_config()
            if config_id(old) != config_id(config):
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ResumeMismatchError(
                    f"{self.root} holds a different configuration (config id {config_id(old)} != "
                    f"{config_id(config)}; differing keys {diff}); pass another results folder or --resume it")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config)

    def check_resumable(self, code: str, threads: int) -> None:
        """Refuse to continue this folder under another code revision or torch thread count."""
        config = self.read_config()
        for key, now, hint in (("code", code, "commit or revert the changes, or start a new run folder"),
                               ("threads", threads, f"pass --threads {config.get('threads')}")):
            if config.get(key) != now:
                raise ResumeMismatchError(f"{self.root} was computed with {key} {config.get(key)!r}, this "
                                          f"invocation has {now!r}: units of both would be mixed ({hint})")

    def stamp(self) -> dict[str, Any] | None:
        """{"code", "threads"} of this run (from its config), or None when the config records neither."""
        if self._stamp is None and self.config_path.exists():
            config = self.read_config()
            self._stamp = {k: config[k] for k in ("code", "threads") if k in config}
        return self._stamp or None

    def add_provenance(self, entry: dict[str, Any]) -> None:
        """Append one invocation's provenance to provenance.json (the first entry is the run's start)."""
        path = self.root / "provenance.json"
        runs = read_json(path)["invocations"] if path.exists() else []
        atomic_write_json(path, {"invocations": [*runs, entry]})

    # units
    def unit_path(self, suite: str, model: str, key: str, seed: int | None = None) -> Path:
        """units/<suite>/<model>/[seed<seed>/]<key>.json"""
        base = self.root / "units" / suite / model
        return (base / f"seed{seed}" if seed is not None else base) / f"{key}.json"

    def _load_unit(self, path: Path) -> dict[str, Any] | None:
        """The unit at ``path``; None when absent, or corrupt/empty (then moved aside with a warning);
        ResumeMismatchError when it was computed under another code revision or thread count."""
        if not path.exists():
            return None
        try:
            unit = read_json(path)
            problem = None if isinstance(unit, dict) and unit else "empty" if unit == {} else "not an object"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            unit, problem = None, f"unreadable ({type(exc).__name__}: {exc})"
        if problem is not None:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            warnings.warn(f"unit file {path} is {problem}; moved to {aside.name}, it will be computed again",
                          RuntimeWarning, stacklevel=3)
            return None
        stamp, own = unit.get("_run"), self.stamp()
        if own and stamp is not None and stamp != own:
            raise ResumeMismatchError(f"{path} was computed under {stamp}, this run folder is {own}; "
                                      "refusing to mix them (delete the file or use another run folder)")
        return unit

    def read_unit(self, suite: str, model: str, key: str, seed: int | None = None) -> dict[str, Any] | None:
        """The finished unit, or None (absent, or corrupt and moved aside)."""
        return self._load_unit(self.unit_path(suite, model, key, seed))

    def has_unit(self, suite: str, model: str, key: str, seed: int | None = None) -> bool:
        """Whether the unit is finished (a corrupt or empty file is not: it is moved aside and recomputed)."""
        return self.read_unit(suite, model, key, seed) is not None

    def write_unit(self, suite: str, model: str, key: str, data: dict[str, Any], seed: int | None = None) -> None:
        """Write a finished unit atomically, stamped with this run's code revision and threads (if recorded)."""
        if not data:
            raise ValueError(f"refusing to write an empty unit {suite}/{model}/{key}")
        stamp = self.stamp()
        atomic_write_json(self.unit_path(suite, model, key, seed), {**data, "_run": stamp} if stamp else data)

    def iter_units(self, suite: str) -> Iterator[dict[str, Any]]:
        """Every finished unit of ``suite``, in a stable (sorted path) order; corrupt files are moved aside
        with a warning (rerun the command to compute them again), temporary files are skipped."""
        base = self.root / "units" / suite
        if base.exists():
            for p in sorted(base.rglob("*.json")):
                if not p.name.startswith("."):
                    unit = self._load_unit(p)
                    if unit is not None:
                        yield unit

    def remove_units(self, suite: str, model: str) -> int:
        """Delete the units of (suite, model) (``--fresh``); returns how many."""
        base = self.root / "units" / suite / model
        paths = sorted(base.rglob("*.json*")) if base.exists() else []
        for p in paths:
            p.unlink()
        return len(paths)

    # checkpoints
    def checkpoint_path(self, model: str, seed: int, step: int) -> Path:
        return self.root / "checkpoints" / model / f"seed{seed}" / f"step{step}.pt"

    def save_checkpoint(self, model: str, seed: int, step: int, state: dict[str, torch.Tensor]) -> None:
        atomic_torch_save(self.checkpoint_path(model, seed, step),
                          {k: v.detach().cpu().clone() for k, v in state.items()})

    def load_checkpoint(self, model: str, seed: int, step: int) -> dict[str, torch.Tensor] | None:
        path = self.checkpoint_path(model, seed, step)
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    # tables
    def table_rows(self, table: str) -> list[dict[str, Any]]:
        """Rows of ``table`` from every unit holding it (a row found in several suites' units counted once)."""
        suites, _ = TABLES[table]
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for suite in suites:
            for unit in self.iter_units(suite):
                for row in unit.get("tables", {}).get(table, []):
                    if len(suites) > 1:
                        key = json.dumps(row, sort_keys=True)
                        if key in seen:
                            continue
                        seen.add(key)
                    rows.append(row)
        return rows

    def write_tables(self) -> dict[str, int]:
        """Assemble every CSV table from the units (tables without rows are not written). Returns row counts."""
        counts = {}
        for table, (_, columns) in TABLES.items():
            rows = self.table_rows(table)
            if rows:
                counts[table] = atomic_write_csv(self.root / f"{table}.csv", rows, columns)
        return counts


def default_run_dir(results: str | os.PathLike, config: dict[str, Any]) -> Path:
    """``<results>/<profile>-<config id>``."""
    return Path(results) / f"{config.get('profile', 'custom')}-{config_id(config)}"


__all__ = ["TABLES", "RunDir", "ResumeMismatchError", "code_revision", "source_hash", "atomic_path", "atomic_write_json", "atomic_write_csv", "atomic_write_text", "atomic_torch_save",
           "read_json", "read_csv", "config_id", "provenance", "git_revision", "package_versions",
           "default_run_dir", "jsonable"]
