"""``python -m paper_figs``: every paper figure from stored results.

    python -m paper_figs                         # newest run folder under results/ (+ results/curate)
    python -m paper_figs --results results/quick-1a2b3c4d5e
    python -m paper_figs --run quick             # first run the quick validation and curated training
    python -m paper_figs --only 2 3 --formats png

Figures go to ``<run folder>/figures/figN_<name>.png|.pdf|.csv`` (the CSV is the exact data plotted), each
written atomically. A figure whose results are missing is skipped with the command that produces them; the
others are still drawn. Exit status 0 when every validation figure (1-5) was drawn, 1 otherwise (figure 6,
curated training, is reported but not required).

The newest run folder is the most recently modified ``<results>/<name>/`` holding a ``summary.json``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .figures import CURATION_COMMANDS, FIGURES, Outcome, Sources, render


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "summary.json").is_file() or (path / "units").is_dir())


def newest_run(root: Path) -> Path | None:
    """The most recently modified ``<root>/<name>/`` holding a summary.json (None if none)."""
    if not root.is_dir():
        return None
    runs = [p.parent for p in root.glob("*/summary.json") if (p.parent / "config.json").is_file()]
    return max(runs, key=lambda p: (p / "summary.json").stat().st_mtime, default=None)


def resolve(results: str | None, curate: str | None, root_default: str = "results") -> tuple[Path, Sources]:
    """(results root, sources) for ``--results`` (a run folder or a results root) and ``--curate``."""
    path = Path(results or root_default)
    if is_run_folder(path):
        run, root = path, path.parent
    else:
        run, root = newest_run(path), path
    cur = Path(curate) if curate else root / "curate"
    return root, Sources(run, cur)


def _run(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stderr passed through; returns (status, stdout)."""
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.stdout:
        sys.stderr.write(proc.stdout)
    return proc.returncode, proc.stdout


def _status(code: int) -> str:
    return f"status {code}" if code >= 0 else f"signal {-code} (killed; out of memory?)"


def produce(profile: str, root: Path, extra: Sequence[str] = (), curation: bool = True) -> tuple[Path | None, list[str]]:
    """Run the validation suites (``python -m validation run --profile <profile>``) and the curated-training
    commands of ``CURATION_COMMANDS[profile]`` into ``root``. Returns (run folder, problems)."""
    problems = []
    code, out = _run([sys.executable, "-m", "validation", "run", "--profile", profile, "--results-dir", str(root),
                      *extra])
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    run = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
    if code != 0 or run is None:
        problems.append(f"`python -m validation run --profile {profile}` exited with {_status(code)}")
    if curation:
        for args in CURATION_COMMANDS[profile]:
            code, _ = _run([sys.executable, "-m", "validation", "curate", *args, "--results", str(root)])
            if code != 0:
                problems.append(f"`python -m validation curate {' '.join(args)}` exited with {_status(code)}")
    return run, problems


def report(outcomes: list[Outcome], out_dir: Path | None) -> str:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paper_figs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=None, metavar="DIR",
                   help="a run folder, or a results root whose newest run folder is used (default: results/)")
    p.add_argument("--curate", default=None, metavar="DIR",
                   help="curated-training results (default: <results root>/curate)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: <run folder>/figures)")
    p.add_argument("--run", choices=sorted(CURATION_COMMANDS), default=None,
                   help="first produce the results: `python -m validation run --profile X` and the curated "
                        "training commands of that profile")
    p.add_argument("--no-curate", action="store_true", help="with --run: skip the curated-training commands")
    p.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m validation run` (repeatable), e.g. --run-arg=--no-progress")
    p.add_argument("--only", nargs="+", type=int, default=None, metavar="N", help="figure numbers to draw")
    p.add_argument("--formats", default="png,pdf", help="image formats (default png,pdf)")
    p.add_argument("--dpi", type=float, default=None, help="PNG resolution (default 300)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root, src = resolve(args.results, args.curate)
    problems: list[str] = []
    if args.run:
        run, problems = produce(args.run, root, args.run_arg, curation=not args.no_curate)
        if run is not None:
            src = Sources(run, src.curate)
    out_dir = Path(args.out) if args.out else ((src.run or root) / "figures")
    print(f"validation results: {src.run or 'none found under ' + str(root)}", file=sys.stderr)
    print(f"curated-training results: {src.curate}", file=sys.stderr)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    specs = [s for s in FIGURES if args.only is None or s.number in args.only]
    outcomes = [render(s, src, out_dir, formats, args.dpi) for s in specs]
    print(report(outcomes, out_dir))
    for p in problems:
        print(f"problem while producing results: {p}")
    required = [o for o in outcomes if o.spec.validation]
    ok = all(o.status == "drawn" for o in required)
    drawn = sum(o.status == "drawn" for o in outcomes)
    print(f"{drawn} of {len(outcomes)} figures drawn; "
          + ("all validation figures drawn" if ok else "some validation figures are missing (exit status 1)"))
    return 0 if ok else 1


__all__ = ["main", "newest_run", "resolve", "produce", "is_run_folder"]
