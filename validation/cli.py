"""``python -m validation run``: the validation suites into a resumable run folder.

    python -m validation run                                   # quick profile, every suite and model
    python -m validation run --suite fidelity --model transformer
    python -m validation run --profile full --seeds 0 1 2 3 4
    python -m validation run --resume results/quick-1a2b3c4d5e # finish an interrupted run
    python -m validation run --set mlp.steps=100 --set cost.repeats=1

The run folder is ``<results-dir>/<profile>-<config id>``: the same configuration finds the same folder and
skips every finished (suite, model, seed, step) unit. The folder's path is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import torch

from .profiles import MODELS, PROFILES, SUITES, field_names, get_profile
from .results import RunDir, default_run_dir, provenance


def _expand(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        for item in v.split(","):
            item = item.strip()
            if item == "all":
                out.extend(a for a in allowed if a not in out)
            elif item in allowed:
                if item not in out:
                    out.append(item)
            else:
                raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join([*allowed, 'all'])}")
    return out


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply ``KEY=VALUE`` to a profile dict. KEY: ``seeds``, ``cost.<field>``, ``<model>.<field>`` or
    ``*.<field>`` (every model); VALUE parsed as JSON when it can be (else kept as a string)."""
    if "=" not in assignment:
        raise SystemExit(f"--set expects KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.strip().split(".")
    if parts == ["seeds"]:
        config["seeds"] = value if isinstance(value, list) else [value]
        return
    if parts == ["threads"]:
        config["threads"] = value
        return
    if len(parts) != 2:
        raise SystemExit(f"--set key must be seeds, cost.<field>, <model>.<field> or *.<field>; got {key!r}")
    head, name = parts
    if head == "cost":
        config["cost"][name] = value
        return
    targets = list(config["models"]) if head == "*" else [head]
    for m in targets:
        if m not in config["models"]:
            raise SystemExit(f"--set: unknown model {m!r}")
        if name not in field_names():
            raise SystemExit(f"--set: unknown setting {name!r}; choose from {', '.join(field_names())}")
        config["models"][m][name] = value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m validation run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", default=["all"], help=f"{', '.join(SUITES)} or all (default: all)")
    p.add_argument("--model", nargs="+", default=["all"], help=f"{', '.join(MODELS)} or all (default: all)")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                   help="quick: minutes on 2 CPU cores; full: paper scale; tiny: seconds (tests)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the profile's seeds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. mlp.steps=100, *.n_score=32, cost.repeats=1")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; everything runs on the CPU)")
    p.add_argument("--results-dir", default="results", help="parent folder of run folders (default results/)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue this run folder with its own config (profile options are ignored)")
    p.add_argument("--fresh", action="store_true",
                   help="recompute the selected suites and models (delete their finished units first)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a theory check fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the profile's, 1 for quick; does not change the run folder)")
    return p


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run configuration: the profile's settings with the command line's overrides, and the device."""
    config = get_profile(args.profile)
    if args.seeds is not None:
        config["seeds"] = list(args.seeds)
    for assignment in args.overrides:
        apply_override(config, assignment)
    return {"profile": args.profile, "device": args.device, **config}


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m validation run``. Returns the exit status."""
    args = build_parser().parse_args(argv)
    suites = _expand(args.suite, SUITES, "suite")
    models = _expand(args.model, MODELS, "model")
    if args.resume:
        rd = RunDir(args.resume)
        config = rd.read_config()
    else:
        config = make_config(args)
        rd = RunDir(default_run_dir(args.results_dir, config))
    if str(config.get("device", "cpu")).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {config['device']!r} requested but CUDA is not available")
    if not args.resume:
        rd.init(config)
    threads = args.threads or config.get("threads")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(args, rd, config, suites, models)
    finally:
        torch.set_num_threads(old_threads)


def _run(args: argparse.Namespace, rd: RunDir, config: dict[str, Any], suites: list[str], models: list[str]) -> int:
    from .report import write_report
    from .suites.runner import run_suites

    if args.fresh:
        for suite in suites:
            for m in models:
                rd.remove_units(suite, m)
    rd.add_provenance({**provenance(), "suites": suites, "models": models})
    print(f"run folder: {rd.root} (suites {', '.join(suites)}; models {', '.join(models)})", file=sys.stderr)
    written = run_suites(rd, config, suites, models, progress=not args.no_progress)
    summary = write_report(rd)
    print(f"units computed now: {written}; report: {rd.root / 'report.md'}", file=sys.stderr)
    failed = [c["name"] for c in summary["checks"] if c["kind"] == "theory" and c["passed"] is False]
    if failed:
        print(f"FAILED theory checks: {failed}", file=sys.stderr)
    print(rd.root)
    return 1 if failed and args.strict else 0


__all__ = ["run_main", "build_parser", "make_config", "apply_override"]
