"""``lai figures`` (also ``python -m paper_figs``): every paper figure from stored results (about a minute of CPU).

    lai figures                                  # newest run folder under results/ (+ results/curate)
    lai figures --results results/quick-1a2b3c4d5e
    lai figures --run quick                      # first run the quick validation and curated training
    lai figures --only 2,3 --formats png
    lai figures --paper                          # the stored paper-scale results (paper_figs/data), ~1 min of CPU:
                                                 # every figure, and the report and the curation study's paired
                                                 # tables recomputed from the stored data

Figures go to ``<run folder>/figures/figN_<name>.png|.pdf|.csv`` (the CSV is the exact data plotted), each
written atomically. A figure whose results are missing is skipped with the command that produces them (run
as printed, it writes where this command looks); the others are still drawn. Exit status 0 when every
validation figure (1-5) was drawn, 1 otherwise (figure 6, curated training, is reported but not required),
2 on a usage error.

The newest run folder is the most recently modified ``<results>/<name>/`` holding a ``summary.json``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from validation.options import (
    add_out,
    add_output_control,
    add_seeds,
    info,
    make_parser,
    progress_enabled,
    split_list,
    threads_arg,
)

if TYPE_CHECKING:  # the figures need matplotlib (the validation extra): imported when a command runs, so that
    from .figures import Outcome, Sources  # `lai figures --help` works without it

RUN_PROFILES = ("quick", "full")  # --run: the keys of figures.CURATION_COMMANDS


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "summary.json").is_file() or (path / "units").is_dir())


def newest_run(root: Path) -> Path | None:
    """The most recently modified ``<root>/<name>/`` holding a summary.json (None if none)."""
    if not root.is_dir():
        return None
    runs = [p.parent for p in root.glob("*/summary.json") if (p.parent / "config.json").is_file()]
    return max(runs, key=lambda p: (p / "summary.json").stat().st_mtime, default=None)


def resolve(results: str | None, curate: str | None, root_default: str = "results") -> tuple[Path, "Sources"]:
    """(results root, sources) for ``--results`` (a run folder or a results root) and ``--curate``."""
    from .figures import Sources

    path = Path(results or root_default)
    if is_run_folder(path):
        run, root = path, path.parent
    else:
        run, root = newest_run(path), path
    cur = Path(curate) if curate else root / "curate"
    return root, Sources(run, cur)


def _run(cmd: list[str], quiet: bool = False) -> tuple[int, str]:
    """Run ``cmd`` (its stderr, progress and warnings, passed through); returns (status, stdout), which is also
    echoed on stdout, after the command line, when the command ends (unless ``quiet``)."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if not quiet:
        with _PRINT:
            print(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n{proc.stdout}", end="", flush=True)
    return proc.returncode, proc.stdout


_PRINT = threading.Lock()  # one command's output at a time


def _status(code: int) -> str:
    return f"status {code}" if code >= 0 else f"signal {-code} (killed; out of memory?)"


def produce(profile: str, root: Path, extra: Sequence[str] = (), curation: bool = True,
            quiet: bool = False, curate_extra: Sequence[str] = ()) -> tuple[Path | None, list[str]]:
    """Run the validation suites (``lai run --profile <profile> --out <root>``) and, at the same time in a second
    process, the curated-training commands of ``CURATION_COMMANDS[profile]`` (``--out <root>``, one after the
    other): both are single-threaded by default, so on two cores they take the time of the longer one.
    Returns (run folder, problems)."""
    from .figures import CURATION_COMMANDS

    lai = [sys.executable, "-m", "lai"]
    curation_problems: list[str] = []

    def curate() -> None:
        for args in CURATION_COMMANDS[profile]:
            code, _ = _run([*lai, "curate", *args, *curate_extra, "--out", str(root)], quiet)
            if code != 0:
                curation_problems.append(f"`lai curate {' '.join(args)}` exited with {_status(code)}")

    worker = threading.Thread(target=curate, daemon=True) if curation else None
    if worker is not None:
        worker.start()
    code, out = _run([*lai, "run", "--profile", profile, "--out", str(root), *extra], quiet)
    if worker is not None:
        worker.join()
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    run = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
    problems = [] if code == 0 and run is not None else [f"`lai run --profile {profile}` exited with {_status(code)}"]
    return run, problems + curation_problems


def report(outcomes: list["Outcome"], out_dir: Path | None) -> str:
    lines = [f"figures in {out_dir}:" if out_dir else "figures:"]
    for o in outcomes:
        head = f"  {o.status:<8}{o.spec.stem:<18}"
        if o.status == "drawn":
            files = ", ".join(p.name for p in o.paths)
            lines.append(f"{head}{o.reason}  [{o.spec.inputs}] -> {files}")
        else:
            lines.append(f"{head}{o.reason}")
            if o.command:
                lines.append(f"{'':<26}produce with: {o.command}")
        lines.extend(f"{'':<26}{n}" for n in o.notes)
    return "\n".join(lines)


def build_parser(prog: str = "lai figures") -> argparse.ArgumentParser:
    p = make_parser(prog, __doc__)
    p.add_argument("--results", default=None, metavar="DIR",
                   help="a run folder, or a results root whose newest run folder is used (default: results; a "
                        "folder given here must exist)")
    p.add_argument("--curate", default=None, metavar="DIR",
                   help="curated-training results (default: <results root>/curate)")
    add_out(p, None, "output folder (default: <run folder>/figures)")
    p.add_argument("--run", choices=RUN_PROFILES, default=None,
                   help="first produce the results: `lai run --profile X` and the curated training commands of "
                        "that profile, into the results root")
    p.add_argument("--no-curate", action="store_true", help="with --run: skip the curated-training commands")
    p.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `lai run` (repeatable), e.g. --run-arg=--threads=2")
    p.add_argument("--paper", action="store_true",
                   help="draw from the stored paper-scale results committed with the package (paper_figs/data: "
                        "the validation run and the curated-training tables); figures go to "
                        "results/paper-figures unless --out is given")
    p.add_argument("--only", default=None, metavar="LIST", help="comma-separated figure numbers, e.g. 2,3")
    p.add_argument("--formats", default="png,pdf", help="comma-separated image formats")
    p.add_argument("--dpi", type=float, default=300.0, help="PNG resolution")
    add_seeds(p, None, "with --run: the seeds of `lai run` and `lai curate`")
    p.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="with --run: torch CPU threads of `lai run` and `lai curate` (default: theirs, 1)")
    p.add_argument("--device", default=None, help="with --run: the device of `lai run`, e.g. cpu, cuda")
    add_output_control(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "lai figures") -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    passed = {"--seeds": args.seeds, "--threads": args.threads, "--device": args.device}
    for option, value in passed.items():
        if value is not None and not args.run:
            p.error(f"{option} applies only with --run (the figures themselves are drawn from stored results)")
    if args.results is not None and not args.run and not Path(args.results).is_dir():  # --run creates it
        p.error(f"--results {args.results!r}: no such folder")
    from .figures import FIGURES, Sources, render

    numbers = sorted({s.number for s in FIGURES})
    try:
        only = None if args.only is None else [int(x) for x in split_list(args.only, tuple(map(str, numbers)),
                                                                          "figure")]
    except Exception as exc:
        p.error(str(exc))
    if args.paper and args.run:
        p.error("--paper draws the stored results; it cannot be combined with --run")
    if args.paper:
        from .stored_run import STORED_CURATION, STORED_RUN

        if not STORED_RUN.is_dir():
            p.error(f"the stored paper-scale results ({STORED_RUN}) are not installed with the wheel (kept small): "
                    "run `lai figures --paper` from a clone of the repository (pip install -e .)")

        args.results, args.curate = str(STORED_RUN), args.curate or str(STORED_CURATION)
        args.out = args.out or str(Path("results") / "paper-figures")
    root, src = resolve(args.results, args.curate)
    problems: list[str] = []
    if args.run:
        shared = ([f"--seeds={','.join(map(str, args.seeds))}"] if args.seeds is not None else []) + \
            ([f"--threads={args.threads}"] if args.threads is not None else [])
        extra = list(args.run_arg) + ([] if progress_enabled(args) else ["--no-progress"]) + shared + \
            ([f"--device={args.device}"] if args.device is not None else [])
        run, problems = produce(args.run, root, extra, curation=not args.no_curate, quiet=args.quiet,
                                curate_extra=shared)
        if run is not None:
            src = Sources(run, src.curate)
            if not args.no_curate:  # the run's report.md gains its curated-training section
                from validation.report.summary import refresh_report

                try:
                    refresh_report(run, src.curate)
                except Exception as exc:  # noqa: BLE001 - reported, the figures are still drawn
                    problems.append(f"refreshing {run / 'report.md'} with the curation results: "
                                    f"{type(exc).__name__}: {exc}")
    out_dir = Path(args.out) if args.out else ((src.run or root) / "figures")
    info(args, f"validation results: {src.run or 'none found under ' + str(root)}")
    info(args, f"curated-training results: {src.curate}")
    formats = split_list(args.formats)
    specs = [s for s in FIGURES if only is None or s.number in only]
    outcomes = [render(s, src, out_dir, formats, args.dpi) for s in specs]
    print(report(outcomes, out_dir))
    tables_ok = True
    if args.paper:  # the derived tables too, so one command regenerates every table and figure of the paper
        from .stored_run import regenerate

        try:
            tables = regenerate(out_dir, src.run, src.curate)
            print("tables recomputed from the stored data: " + ", ".join(str(t.relative_to(out_dir)) for t in tables))
        except Exception as exc:  # noqa: BLE001 - reported, the figures are drawn
            tables_ok = False
            problems.append(f"recomputing the tables from the stored data: {type(exc).__name__}: {exc}")
    for problem in problems:
        print(f"problem while producing results: {problem}")
    required = [o for o in outcomes if o.spec.validation]
    run_failed = any(problem.startswith("`lai run") for problem in problems)  # curation failures: reported only
    ok = all(o.status == "drawn" for o in required) and not run_failed and tables_ok
    drawn = sum(o.status == "drawn" for o in outcomes)
    print(f"{drawn} of {len(outcomes)} figures drawn; "
          + ("all validation figures drawn" if ok else "some validation figures are missing or their runs "
             "failed (exit status 1)"))
    return 0 if ok else 1


__all__ = ["main", "build_parser", "newest_run", "resolve", "produce", "is_run_folder"]
