"""Run folders, atomic writes, resumable units, provenance, and the formats of every results file.

Layout of a run folder ``<results>/<profile>-<config id>/`` (the id is a hash of the configuration, so the
same command finds the same folder and resumes it):

    config.json        the exact configuration: profile name and settings, seeds, device (see profiles.py)
    provenance.json    package versions, python, platform, git revision (and whether the tree was dirty),
                       command line, start time; one entry per invocation that worked on the folder
    units/<suite>/<model>/seed<seed>/step<step>.json   (bound, fidelity)
    units/cost/<model>/w<width>_b<batch>.json          (cost)
                       one finished unit of work each, written atomically; a unit present is never recomputed
    checkpoints/<model>/seed<seed>/step<step>.pt      float32 weights at each scored step (resume, TracIn)
    bound.csv, bound_layers.csv, bound_steps.csv, fidelity.csv, auroc.csv, scores.csv, cost.csv
                       tables assembled from the units (rewritten atomically after every invocation)
    summary.json, report.md   headline numbers and checks (see report.py)

Every file is written to a temporary file in the same folder and moved into place with ``os.replace``, so an
interrupted run leaves either the old or the new file, never half of one.

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

Estimator names: exact, ghost, lai (all layers), lai_last (last layer only), lai_aligned / lai_last_aligned
(transformer, ``token_pairing="aligned"``), tracin (sum over the checkpoints of the scored steps up to the
current one), tracin_last (the same, output layer only), loss (the loss-only baseline: score = -loss_i),
counterfactual (the actual one-step effect at the training lr, see suites/counterfactual.py),
counterfactual_small_lr (the same at lr / 10, rescaled by 10; tends to exact as the step shrinks). Sign
convention everywhere: positive = the sample helps (lowers the reference loss).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

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
    "training": (("bound", "fidelity"), ["model", "seed", "step", "ref_loss", "ref_accuracy", "scored_loss_clean",
                                         "scored_loss_noisy"]),
}
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "mnist1d", "tqdm", "sympy", "matplotlib", "lai")


# ------------------------------------------------------------------------------------------ atomic I/O

def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonable(obj: Any) -> Any:
    """Tensors, tuples and numpy scalars as plain JSON values; NaN and infinities as None (strict JSON)."""
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (NaN -> null) atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write ``rows`` (dicts; missing keys empty, extra keys ignored) under a header ``columns``, atomically.
    Returns the number of rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    n = 0
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
        n += 1
    atomic_write_text(path, buf.getvalue())
    return n


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`atomic_write_csv` (all values as strings)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------------------- provenance

def config_id(config: dict[str, Any]) -> str:
    """First 10 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    canon = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:10]


def git_revision(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this package."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions, platform, git revision, command line and time of this invocation."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(sys.argv if argv is None else argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "git": git_revision(),
    }


# ---------------------------------------------------------------------------------------------- folders

class RunDir:
    """A run folder: config, units of finished work, checkpoints and the assembled tables."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

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
                raise ValueError(f"{self.root} holds a different configuration (config id {config_id(old)} "
                                 f"!= {config_id(config)}); pass another results folder or --resume it")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config)

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

    def has_unit(self, suite: str, model: str, key: str, seed: int | None = None) -> bool:
        return self.unit_path(suite, model, key, seed).exists()

    def write_unit(self, suite: str, model: str, key: str, data: dict[str, Any], seed: int | None = None) -> None:
        atomic_write_json(self.unit_path(suite, model, key, seed), data)

    def iter_units(self, suite: str) -> Iterator[dict[str, Any]]:
        """Every finished unit of ``suite``, in a stable (sorted path) order."""
        base = self.root / "units" / suite
        if base.exists():
            for p in sorted(base.rglob("*.json")):
                yield read_json(p)

    def remove_units(self, suite: str, model: str) -> int:
        """Delete the units of (suite, model) (``--fresh``); returns how many."""
        base = self.root / "units" / suite / model
        paths = sorted(base.rglob("*.json")) if base.exists() else []
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


__all__ = ["TABLES", "RunDir", "atomic_write_json", "atomic_write_csv", "atomic_write_text", "atomic_torch_save",
           "read_json", "read_csv", "config_id", "provenance", "git_revision", "package_versions",
           "default_run_dir", "jsonable"]
