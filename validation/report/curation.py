"""Curated-training results: loading, paired statistics against vanilla, and the stored compact tables.

Two sources, read the same way by :func:`load_curation`:

1. run folders of ``python -m lai curate`` (see validation/curation/experiment.py), one per task and
   protocol::

       <root>/curate/<task>-<protocol>-<id>/config.json      {"task": {name, dataset, model, noise: {kind,
                                                              rate, ...}, epochs, protocol, ...}, ...} (older
                                                              folders: noise kind and rate side by side;
                                                              validation.settings.config.upgrade reads both)
       <root>/curate/<task>-<protocol>-<id>/units/curate/<task>/seed<s>/<method>.json
                                                             {"method", "seed", "metric", "final", "curve",
                                                              "kept_fraction", "noise_recall", ...}

   When several folders hold the same (task, protocol), the one with most units (then the newest) is used and
   the others are listed in ``CurationResults.ignored``. A unit missing a field is skipped with a note.

2. a stored folder (``STORED``, written by :func:`export`, committed with the package) holding::

       units.csv        one row per (task, protocol, method, seed): FINAL_COLUMNS
       curves.csv       one row per (task, protocol, method, seed, epoch): CURVE_COLUMNS
       paired.csv       one row per (task, protocol, method != vanilla): PAIRED_COLUMNS
       paired.md        the same as a readable table
       provenance.json  code revisions, torch threads, seeds per (task, protocol), task settings, CPU and wall
                        seconds, the command that (re)produces or finishes the runs, and a note

Tables (the format the report and figure 6 read):

* ``final`` (FINAL_COLUMNS): task, family, dataset, model, noise (kind), rate (noise level, fraction),
  protocol (``ours`` | ``original``, see validation/curation/protocols.py), method, seed, metric (accuracy |
  perplexity), final (test metric after training; accuracy as a fraction), kept_fraction, noise_recall,
  drop_precision, epochs, wall_s, cpu_s, code (commit the unit ran under, "" if unknown), folder;
* ``curves`` (CURVE_COLUMNS): task, family, rate, protocol, method, seed, metric, epoch (1 = after the first
  epoch), value;
* ``paired`` (PAIRED_COLUMNS, from :func:`paired`): per (task, protocol, method) the paired difference
  method - vanilla over the seeds both finished (vanilla never scores, so its run is the same under every
  protocol: a protocol without vanilla units uses the task's vanilla units of another protocol)
  (``validation.report.stats.paired_difference``): ``diff`` mean,
  ``sd``, ``se``, 95 % t interval [low, high], two-sided paired t-test ``p``, wins/ties/losses (seeds where the
  method was above/equal/below vanilla), n (paired seeds); accuracy differences in percentage points,
  perplexity in its own units (lower is better there, so a negative diff is a gain). ``vanilla_mean`` and
  ``method_mean`` (same units), mean kept_fraction / noise_recall / drop_precision, and ``rate_matched_to``
  (the method whose kept fraction a rate-matched method used, "" otherwise).

``family`` groups the tasks that differ only in noise level: the task name without its ``-noisy<pct>`` part
(``mnist1d-noisy40-classdep`` -> ``mnist1d-classdep``).

Write the stored folder from a results root::

    python -m validation.report.curation export results/h5-paper paper_figs/data/curation --note "..."
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from validation.report.curation_pairs import PAIR_COLUMNS, add_pairs, matched_to, method_label, split_rate
from validation.report.tables import Table, read_table

FINAL_COLUMNS = ["task", "family", "dataset", "model", "noise", "rate", "protocol", "method", "seed", "metric",
                 "final", "kept_fraction", "noise_recall", "drop_precision", "epochs", "wall_s", "cpu_s", "code",
                 "folder", "best_val_test", "best_val_epoch", "plateau_held", "plateau_gain", "matched_to"]
#: FINAL_COLUMNS a stored folder written before they existed may lack (read as empty)
LATER_COLUMNS = ("best_val_test", "best_val_epoch", "plateau_held", "plateau_gain", "matched_to")
CURVE_COLUMNS = ["task", "family", "rate", "protocol", "method", "seed", "metric", "epoch", "value"]
PAIRED_COLUMNS = ["task", "family", "dataset", "model", "noise", "rate", "protocol", "method", "metric", "n",
                  "vanilla_mean", "method_mean", "diff", "sd", "se", "low", "high", "p", "wins", "ties", "losses",
                  "kept_fraction", "noise_recall", "drop_precision", "rate_matched_to", "seeds", *PAIR_COLUMNS]
STORED = Path(__file__).resolve().parents[2] / "paper_figs" / "data" / "curation"  # the stored results the figures draw
CONTROL = "vanilla"
#: display order of methods (tables and figure 6)
METHOD_ORDER = ("lai", "lai-last", "exact-top2", "ghost", "exact", "tracin", "lai-topk", "ghost-topk", "lai-greats",
                "greats", "loss+lai", "loss+lai-last", "loss-threshold", "small-loss", "small-loss-est",
                "small-loss-fixed", "large-grad", "random", "oracle", "vanilla")


@dataclass
class CurationResults:
    final: Table
    curves: Table
    folders: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored: bool = False  # read from a stored folder (units.csv), not from run folders


def family_of(task: str) -> str:
    """Task name without its noise level: ``mnist1d-noisy40-classdep`` -> ``mnist1d-classdep``."""
    return re.sub(r"-noisy\d+", "", task)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _mtime(folder: Path) -> float:
    times = [p.stat().st_mtime for p in folder.rglob("*.json")]
    return max(times, default=folder.stat().st_mtime)


def _base(root: Path) -> Path:
    return root / "curate" if (root / "curate").is_dir() else root


def is_stored(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a stored folder (holds units.csv)."""
    return (Path(root) / "units.csv").is_file()


def has_results(root: str | os.PathLike | None) -> bool:
    """Whether ``root`` holds curation results (a stored folder, or run folders with at least one unit)."""
    if root is None:
        return False
    root = Path(root)
    if is_stored(root):
        return True
    base = _base(root)
    return base.is_dir() and any(base.glob("*/units/**/*.json"))


def curation_folders(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(folders used, folders ignored) under ``root`` (the ``curate`` folder itself or its parent): per (task,
    protocol) the folder with most units, the newest among equals."""
    base = _base(Path(root))
    if not base.is_dir():
        return [], []
    by_key: dict[tuple[str, str], list[Path]] = {}
    for cfg in sorted(base.glob("*/config.json")):
        try:
            task = _read_json(cfg).get("task", {})
            key = (task.get("name") or cfg.parent.name.rsplit("-", 1)[0], task.get("protocol") or "ours")
        except (OSError, ValueError, AttributeError):
            continue
        by_key.setdefault(key, []).append(cfg.parent)
    used, ignored = [], []
    for key in sorted(by_key):
        folders = sorted(by_key[key], key=lambda f: (len(list((f / "units").rglob("*.json"))), _mtime(f)),
                         reverse=True)
        used.append(folders[0])
        ignored.extend(folders[1:])
    return used, ignored


def _load_stored(root: Path) -> CurationResults:
    final = read_table(root / "units.csv")
    curves = read_table(root / "curves.csv")
    if final is None:
        raise FileNotFoundError(f"{root / 'units.csv'} is missing or empty")
    for t in (final, curves):
        if t is not None:
            for r in t.rows:
                r["seed"] = int(r["seed"])
                r["task"], r["method"], r["protocol"] = str(r["task"]), str(r["method"]), str(r["protocol"])
                r["code"] = "" if r.get("code") is None else str(r["code"])
                for c in LATER_COLUMNS:
                    r.setdefault(c, None)
    final.require(*[c for c in FINAL_COLUMNS if c != "folder" and c not in LATER_COLUMNS])
    return CurationResults(final, curves or Table([], CURVE_COLUMNS, str(root / "curves.csv")), [root], [], [],
                           stored=True)


def load_curation(root: str | os.PathLike) -> CurationResults:
    """The ``final`` and ``curves`` tables of a stored folder or of every run folder under ``root``."""
    root = Path(root)
    if is_stored(root):
        return _load_stored(root)
    from validation.settings.config import upgrade

    used, ignored = curation_folders(root)
    final, curves, notes = [], [], []
    for folder in used:
        cfg = _read_json(folder / "config.json")
        spec = upgrade(cfg["task"]) if isinstance(cfg.get("task"), dict) else {}
        noise = spec.get("noise") if isinstance(spec.get("noise"), dict) else {}
        for path in sorted((folder / "units").rglob("*.json")):
            try:
                u = _read_json(path)
                task = u.get("task") or spec.get("name")
                rate = (u.get("noise") or {}).get("rate", noise.get("rate"))
                code = (u.get("code") or {}).get("commit") if isinstance(u.get("code"), dict) else u.get("code")
                row = {"task": task, "family": family_of(task), "dataset": spec.get("dataset"),
                       "model": spec.get("model"), "noise": noise.get("kind"), "rate": float(rate),
                       "protocol": u.get("protocol") or spec.get("protocol") or "ours",
                       "method": u["method"], "seed": int(u["seed"]), "metric": u["metric"],
                       "final": float(u["final"]), "kept_fraction": u.get("kept_fraction"),
                       "noise_recall": u.get("noise_recall"), "drop_precision": u.get("drop_precision"),
                       "epochs": len(u.get("curve") or []), "wall_s": u.get("wall_s"), "cpu_s": u.get("cpu_s"),
                       "code": code or "", "folder": str(folder), "best_val_test": u.get("best_val_test"),
                       "best_val_epoch": u.get("best_val_epoch"), "plateau_held": u.get("plateau_held"),
                       "plateau_gain": u.get("plateau_gain"),
                       "matched_to": "" if cfg.get("keep_fraction") is not None
                       else matched_to(u["method"], cfg.get("match") or "lai")}
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                notes.append(f"skipped {path}: {type(exc).__name__}: {exc}")
                continue
            final.append(row)
            for epoch, value in enumerate(u.get("curve") or [], start=1):
                curves.append({"task": task, "family": row["family"], "rate": row["rate"],
                               "protocol": row["protocol"], "method": row["method"], "seed": row["seed"],
                               "metric": row["metric"], "epoch": epoch, "value": float(value)})
    return CurationResults(Table(final, FINAL_COLUMNS, "curation units"),
                           Table(curves, CURVE_COLUMNS, "curation units"), used, ignored, notes)


def task_order(tasks: Sequence[str]) -> list[str]:
    """``tasks`` in the paper profile's order (MNIST-1D MLP, digits CNN, MNIST-1D CNN), others after, as given."""
    from validation.settings.profiles import CURATION_PROFILES

    known = [t for t in CURATION_PROFILES["paper"]["tasks"] if t in tasks]
    return known + [t for t in tasks if t not in known]


def _mean(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def _recorded_match(units: Table) -> str | None:
    """The method whose kept fraction these units (one method) matched, as their run folder's config recorded it
    (``matched_to``: "" for none); None when the units predate the column."""
    seen = {str(v) for v in units.values("matched_to") if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return ", ".join(sorted(seen)) if seen else None


def paired(final: Table, control: str = CONTROL, match: str = "lai") -> Table:
    """Paired differences to ``control`` per (task, protocol, method) (see module docstring, PAIRED_COLUMNS).
    ``rate_matched_to`` is the units' recorded ``matched_to``; for units without it, ``match`` is taken as the run's
    matched method."""
    from validation.report.stats import paired_table

    rows = []
    for (task, protocol), t in final.group("task", "protocol").items():
        metric = t.rows[0]["metric"]
        scale = 100.0 if metric == "accuracy" else 1.0
        values = {m: {r["seed"]: scale * float(r["final"]) for r in t.where(method=m)} for m in t.unique("method")}
        if control not in values:  # vanilla never scores, so it is one run under every protocol: borrow it
            shared = final.where(task=task, method=control)
            if not len(shared):
                continue
            values[control] = {r["seed"]: scale * float(r["final"]) for r in shared}
        for method, pd in paired_table(values, control).items():
            seeds = sorted(set(values[method]) & set(values[control]))
            mt = t.where(method=method, seed=seeds)
            first = t.rows[0]
            recorded = _recorded_match(mt)
            rows.append({
                "task": task, "family": first["family"], "dataset": first["dataset"], "model": first["model"],
                "noise": first["noise"], "rate": first["rate"], "protocol": protocol, "method": method,
                "metric": metric, "n": pd.n, "vanilla_mean": _mean([values[control][s] for s in seeds]),
                "method_mean": _mean([values[method][s] for s in seeds]), "diff": pd.mean, "sd": pd.sd,
                "se": pd.se, "low": pd.low, "high": pd.high, "p": pd.p, "wins": pd.wins, "ties": pd.ties,
                "losses": pd.losses, "kept_fraction": _mean(mt.values("kept_fraction")),
                "noise_recall": _mean(mt.values("noise_recall")), "drop_precision": _mean(mt.values("drop_precision")),
                "rate_matched_to": recorded if recorded is not None else matched_to(method, match),
                "seeds": " ".join(str(s) for s in seeds)})
    rank = {m: k for k, m in enumerate(METHOD_ORDER)}
    tasks = {t: k for k, t in enumerate(task_order(final.unique("task")))}
    rows.sort(key=lambda r: (tasks[r["task"]], r["protocol"] != "ours", r["protocol"],
                             rank.get((split_rate(r["method"]) or (r["method"],))[0], len(rank)), r["method"]))
    if control == CONTROL:
        add_pairs(rows, final, control)
    return Table(rows, PAIRED_COLUMNS, "paired differences")


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _ci(r: dict[str, Any], prefix: str) -> str:
    d = r.get(f"{prefix}_diff")
    if d is None:
        return "-"
    return f"{_num(d, '+.2f')} [{_num(r.get(f'{prefix}_low'), '+.2f')}, {_num(r.get(f'{prefix}_high'), '+.2f')}]"


def format_paired(table: Table) -> str:
    """Markdown: one row per (task, protocol, method): diff [95 % CI], p, wins/seeds, kept fraction, then the
    further pairs (curation_pairs): − the best layer-aware member, both at the test metric of the best-validation
    epoch, − the method's rate-matched random, and the vanilla plateau (held/seeds, epochs)."""
    lines = ["| task | protocol | method | vanilla | method − vanilla [95 % CI] | p | wins/seeds | kept | "
             "noise recall | rate matched to | best layer-aware | method − best layer-aware [95 % CI] | "
             "best-val epoch: method − vanilla | best-val epoch: method − best layer-aware | "
             "method − rate-matched random [95 % CI] | vanilla plateau held (epochs) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        unit = " pp" if r["metric"] == "accuracy" else ""
        rc = r.get("random_control")
        lines.append(
            f"| {r['task']} | {r['protocol']} | {r['method']} | {_num(r['vanilla_mean'], '.1f')} | "
            f"{_num(r['diff'], '+.2f')} [{_num(r['low'], '+.2f')}, {_num(r['high'], '+.2f')}]{unit} | "
            f"{_num(r['p'], '.2g')} | {r['wins']}/{r['n']} | {_num(r['kept_fraction'], '.2f')} | "
            f"{_num(r['noise_recall'], '.2f')} | {r['rate_matched_to'] or '-'} | {r.get('best_layer_aware') or '-'} | "
            f"{_ci(r, 'vs_best')} | {_ci(r, 'bv')} | {_ci(r, 'bv_best')} | "
            f"{(_ci(r, 'vs_random') + ' vs ' + method_label(rc)) if rc else '-'} | "
            f"{r.get('vanilla_plateau') or '-'} ({r.get('epochs') or '-'}) |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, table: Table) -> None:
    from validation.report.results import atomic_write_csv

    atomic_write_csv(path, [{c: r.get(c) for c in table.columns} for r in table], table.columns)


def export(root: str | os.PathLike, out: str | os.PathLike = STORED, note: str = "",
           command: str = "", complete_only: bool = True) -> Path:
    """Write the stored compact folder ``out`` from the run folders under ``root`` (see module docstring).
    ``complete_only``: per task, store only the seeds finished for every (protocol, method) of the task (so
    every row of a task's table is over the same seeds); the units left out are listed in the provenance."""
    from validation.report.results import atomic_write_json, atomic_write_text

    res = load_curation(root)
    if not len(res.final):
        raise FileNotFoundError(f"no curation units under {root}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = Table([{**r, "folder": Path(r["folder"]).name} for r in res.final], FINAL_COLUMNS)
    left_out: list[str] = []
    if complete_only:  # per task, only seeds with a unit for every (protocol, method) the task has
        keep = []
        for (task,), t in final.group("task").items():
            cells = {(r["protocol"], r["method"]) for r in t}
            have: dict[int, set] = {}
            for r in t:
                have.setdefault(r["seed"], set()).add((r["protocol"], r["method"]))
            done = {s for s, c in have.items() if c == cells}
            keep += [r for r in t if r["seed"] in done]
            left_out += [f"{task} {r['protocol']} {r['method']} seed{r['seed']}" for r in t if r["seed"] not in done]
        final = Table(keep, FINAL_COLUMNS)
        kept_keys = {(r["task"], r["protocol"], r["method"], r["seed"]) for r in keep}
        res.curves = Table([r for r in res.curves
                            if (r["task"], r["protocol"], r["method"], r["seed"]) in kept_keys], CURVE_COLUMNS)
    pt = paired(final)
    _write_csv(out / "units.csv", final)
    _write_csv(out / "curves.csv", res.curves)
    _write_csv(out / "paired.csv", pt)
    atomic_write_text(out / "paired.md", format_paired(pt))
    folders = {}
    for folder in res.folders:
        cfg = _read_json(folder / "config.json")
        prov = _read_json(folder / "provenance.json") if (folder / "provenance.json").is_file() else []
        if isinstance(prov, dict):  # {"invocations": [...]} (validation.report.results.RunDir.add_provenance)
            prov = prov.get("invocations", [prov])
        sub = final.where(folder=folder.name)
        folders[folder.name] = {
            "task": cfg.get("task"), "threads": cfg.get("threads"), "match": cfg.get("match"),
            "on_empty": cfg.get("on_empty"), "keep_fraction": cfg.get("keep_fraction"), "code_key": cfg.get("code"),
            "seeds": sorted(set(sub.values("seed"))), "methods": sub.unique("method"),
            "units": len(sub), "cpu_s": sum(float(v) for v in sub.values("cpu_s") if v is not None),
            "wall_s": sum(float(v) for v in sub.values("wall_s") if v is not None),
            "code": sorted(set(sub.values("code"))),
            "invocations": [{k: p.get(k) for k in ("time_utc", "argv", "platform", "cpu_count", "torch_threads",
                                                   "git", "packages")} for p in prov if isinstance(p, dict)]}
    seeds = {task: sorted(set(t.values("seed"))) for (task,), t in final.group("task").items()}
    atomic_write_json(out / "provenance.json", {
        "note": note, "command": command, "source": str(root), "seeds": seeds, "left_out": left_out,
        "folders": folders,
        "units": len(final), "code": sorted(set(final.values("code"))),
        "cpu_s": sum(f["cpu_s"] for f in folders.values()), "wall_s": sum(f["wall_s"] for f in folders.values())})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.report.curation",
                                 description="paired curation table of a results root; or export it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print the paired table of a stored folder or results root")
    show.add_argument("root", nargs="?", default=str(STORED))
    exp = sub.add_parser("export", help="write the stored compact folder")
    exp.add_argument("root")
    exp.add_argument("out", nargs="?", default=str(STORED))
    exp.add_argument("--note", default="")
    exp.add_argument("--command", default="")
    exp.add_argument("--all-seeds", action="store_true", help="also store seeds not finished for every method")
    args = ap.parse_args(argv)
    if args.cmd == "show":
        print(format_paired(paired(load_curation(args.root).final)), end="")
        return 0
    print(export(args.root, args.out, args.note, args.command, complete_only=not args.all_seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CurationResults", "load_curation", "METHOD_ORDER", "curation_folders", "family_of", "paired",
           "format_paired", "export", "has_results", "is_stored", "FINAL_COLUMNS", "CURVE_COLUMNS",
           "PAIRED_COLUMNS", "STORED"]
