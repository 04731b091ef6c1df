"""Stored validation runs: the compact tables of a ``lai run`` folder, committed with the package.

``lai figures`` reads only a run folder's CSV tables and ``config.json``/``summary.json``, so a folder holding
just those (no per-unit files, no checkpoints) is a run folder it can draw from, in seconds:

    python -m paper_figs.stored_run export results/full-1a2b3c4d5e paper_figs/data/validation --note "..."
    lai figures --paper                      # the stored validation run + paper_figs/data/curation

``export`` copies ``*.csv``, ``config.json``, ``summary.json``, ``report.md`` and ``provenance.json`` (the run's
invocations, plus an ``export`` entry: source folder, time, this package's revision and the ``--note``), each
written atomically. A table over ``--gzip-mb`` is stored gzip-compressed as ``<name>.csv.gz`` (byte-reproducible:
no file name or time in the header), which ``validation.report.tables.read_table`` reads in its place; a stored file
still over ``--max-mb`` is refused (the stored data must stay small). Tables only figures plot (``ROUNDED``:
``scores.csv``) keep 8 significant digits of their value column.

``--suite fidelity`` replaces only the tables that suite's units hold (``validation.report.results.TABLES``) in an
existing stored folder and keeps its other tables (say, a bound suite computed under earlier code), its
``config.json`` and its invocations, to which the run's are appended; every export is listed under ``exports``.
``summary.json`` and ``report.md`` are then rewritten from the stored tables
(``python -m validation.report.summary <out> --stored``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from influence.atomic import atomic_path
from validation.report.results import atomic_write_json, code_revision, read_json

HERE = Path(__file__).resolve().parent
STORED_RUN = HERE / "data" / "validation"
STORED_CURATION = HERE / "data" / "curation"
KEEP = ("config.json", "summary.json", "report.md")
# tables that only figures plot, stored with this many significant digits (the run folder keeps full precision;
# the summary and report are computed from it): figures 1 and 4 plot scores, never differences of them
ROUNDED = {"scores.csv": ("score", 8)}


def _rounded(src: Path, dest: Path, column: str, digits: int) -> None:
    """Copy table ``src`` to ``dest`` with ``column`` written with ``digits`` significant digits."""
    with open(src, encoding="utf-8", newline="") as f, open(dest, "w", encoding="utf-8", newline="") as g:
        reader = csv.reader(f)
        writer = csv.writer(g, lineterminator="\n")
        header = next(reader)
        writer.writerow(header)
        k = header.index(column)
        for row in reader:
            if row[k]:
                row[k] = f"{float(row[k]):.{digits}g}"
            writer.writerow(row)


def _store(src: Path, out: Path, gzip_mb: float) -> Path:
    """Copy ``src`` into folder ``out`` atomically, as ``<name>.gz`` (gzip level 9, mtime 0) when it is a table
    over ``gzip_mb``. Returns the written path."""
    packed = src.suffix == ".csv" and src.stat().st_size > gzip_mb * 2**20
    dest = out / (src.name + ".gz" if packed else src.name)
    with atomic_path(dest) as tmp:
        if packed:
            with open(src, "rb") as f, open(tmp, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as z:
                shutil.copyfileobj(f, z)
        else:
            shutil.copyfile(src, tmp)
    return dest


def suite_tables(suites: Sequence[str]) -> list[str]:
    """The tables (file names) whose rows come from any of ``suites``' units."""
    from validation.report.results import TABLES

    unknown = sorted(set(suites) - {x for owners, _ in TABLES.values() for x in owners})
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}")
    return [f"{t}.csv" for t, (owners, _) in TABLES.items() if set(owners) & set(suites)]


def export(run: str | Path, out: str | Path = STORED_RUN, note: str = "", max_mb: float = 5.0,
           gzip_mb: float = 1.0, suites: Sequence[str] | None = None) -> list[Path]:
    """Copy the compact tables of run folder ``run`` into ``out`` (see module docstring); returns the written
    paths. ``suites``: replace only those suites' tables in the stored folder ``out`` and keep the rest. Raises
    ``FileNotFoundError`` when ``run`` is not a run folder (or, with ``suites``, ``out`` is not a stored one),
    ``ValueError`` for a file still over ``max_mb`` once stored (then nothing is written)."""
    run, out = Path(run), Path(out)
    if not (run / "config.json").is_file() or not (run / "summary.json").is_file():
        raise FileNotFoundError(f"{run} is not a finished run folder (config.json and summary.json expected)")
    if suites is None:
        files = sorted(run.glob("*.csv")) + [run / k for k in KEEP if (run / k).is_file()]
    else:
        if not (out / "config.json").is_file():
            raise FileNotFoundError(f"{out} is not a stored run folder (config.json expected) to replace tables in")
        names = suite_tables(suites)
        files = [run / n for n in names if (run / n).is_file()]
        if not files:
            raise FileNotFoundError(f"{run} has none of the tables of suite(s) {', '.join(suites)}: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:  # every file sized before any is replaced
        plain = Path(staging) / "plain"
        plain.mkdir()
        for i, f in enumerate(files):
            if f.name in ROUNDED:
                files[i] = plain / f.name
                _rounded(f, files[i], *ROUNDED[f.name])
        staged = [_store(f, Path(staging), gzip_mb) for f in files]
        for f in staged:
            if f.stat().st_size > max_mb * 2**20:
                raise ValueError(f"{f.name} is {f.stat().st_size / 2**20:.1f} MB stored, over the {max_mb} MB "
                                 "limit for stored data")
        written = [_store(f, out, float("inf")) for f in staged]
    for f in written:  # the other form of a table an earlier export stored (plain <-> compressed) goes
        if f.name.endswith(".csv.gz"):
            f.with_name(f.name[:-3]).unlink(missing_ok=True)
        elif f.name.endswith(".csv"):
            f.with_name(f.name + ".gz").unlink(missing_ok=True)
    prov_path = run / "provenance.json"
    prov = read_json(prov_path) if prov_path.is_file() else {"invocations": []}
    entry = {"source": str(run), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "exported_by": code_revision(), "note": note}
    if suites is None:
        prov["export"] = entry
    else:  # the stored folder's history stays; this run's invocations and export are added to it
        old = read_json(out / "provenance.json") if (out / "provenance.json").is_file() else {"invocations": []}
        exports = old.pop("exports", None) or ([old.pop("export")] if "export" in old else [])
        old["invocations"] = [*old.get("invocations", []), *prov.get("invocations", [])]
        old["exports"] = [*exports, {**entry, "suites": list(suites), "tables": [f.name for f in written]}]
        prov = old
    atomic_write_json(out / "provenance.json", prov)
    written.append(out / "provenance.json")
    return written


def regenerate(out: str | Path, run: str | Path | None = None, curate: str | Path | None = None) -> list[Path]:
    """Recompute every derived table from the stored data into ``out`` (``lai figures --paper`` calls it): the
    validation report and summary (``report.md``, ``summary.json``) from the stored run's CSV tables and the stored
    curation units, and the curation study's paired tables (``curation/paired.csv``, ``curation/paired.md``) from its
    ``units.csv``. Byte-identical to the committed ones when those are current. Returns the written paths."""
    from validation.report.curation import _write_csv, format_paired, load_curation, paired
    from validation.report.results import atomic_write_text
    from validation.report.summary import write_stored_report

    run, curate, out = Path(run or STORED_RUN), Path(curate or STORED_CURATION), Path(out)
    write_stored_report(run, curate, out)
    written = [out / "summary.json", out / "report.md"]
    if (curate / "units.csv").is_file():
        (out / "curation").mkdir(parents=True, exist_ok=True)
        pt = paired(load_curation(curate).final)
        _write_csv(out / "curation" / "paired.csv", pt)
        atomic_write_text(out / "curation" / "paired.md", format_paired(pt))
        written += [out / "curation" / "paired.csv", out / "curation" / "paired.md"]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper_figs.stored_run", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    exp = sub.add_parser("export", help="store a run folder's compact tables")
    exp.add_argument("run", help="a finished run folder (lai run)")
    exp.add_argument("out", nargs="?", default=str(STORED_RUN), help="stored folder (default: %(default)s)")
    exp.add_argument("--note", default="", help="what the run is (written to provenance.json)")
    exp.add_argument("--max-mb", type=float, default=5.0, help="largest stored file allowed (default: %(default)s)")
    exp.add_argument("--gzip-mb", type=float, default=1.0,
                     help="tables larger than this are stored gzip-compressed (default: %(default)s)")
    exp.add_argument("--suite", default=None,
                     help="comma-separated: replace only these suites' tables in the stored folder, keep the rest")
    args = ap.parse_args(argv)
    suites = [x for x in args.suite.split(",") if x] if args.suite else None
    for path in export(args.run, args.out, args.note, args.max_mb, args.gzip_mb, suites):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
