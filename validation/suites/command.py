"""``lai run``: the validation suites (bound, fidelity, cost) into a resumable run folder, with a report.

    lai run                                      # quick profile, every suite and model (~3-5 min on 2 cores)
    lai run --suite fidelity --models transformer,mlp
    lai run --profile full --seeds 0-4
    lai run --resume results/quick-1a2b3c4d5e    # finish an interrupted run
    lai run --set mlp.steps=100 --set cost.repeats=1
    lai run --estimators ghost,lai-last          # the fidelity suite scores these (and Exact, its target)

The run folder is ``<out>/<profile>-<config id>``; the id hashes the whole configuration, including the code
revision and the torch thread count, so the same command on the same code finds the same folder and skips
every finished (suite, model, seed, step) unit, while other code or threads never mix into it. The folder's
path is the last line printed; ``report.md`` in it is the report. Exit status 1 when a theory check fails
(a bound violated, Ghost != Exact), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from validation.options import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    add_common,
    add_models,
    add_resume,
    check_device,
    fail,
    info,
    make_parser,
    progress_enabled,
    split_list,
    torch_threads,
)
from validation.report.results import ResumeMismatchError, RunDir, code_revision, default_run_dir, provenance
from validation.settings import estimators as chosen
from validation.settings.profiles import MODELS, PROFILES, SUITES, field_names, get_profile


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply ``KEY=VALUE`` to a profile dict. KEY: ``seeds``, ``cost.<field>``, ``<model>.<field>`` or
    ``*.<field>`` (every model); VALUE parsed as JSON when it can be (else kept as a string)."""
    if "=" not in assignment:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.strip().split(".")
    if parts == ["seeds"]:
        config["seeds"] = value if isinstance(value, list) else [value]
        return
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--set key must be seeds, cost.<field>, <model>.<field> or *.<field>; got {key!r}")
    head, name = parts
    if head == "cost":
        config["cost"][name] = value
        return
    targets = list(config["models"]) if head == "*" else [head]
    for m in targets:
        if m not in config["models"]:
            raise argparse.ArgumentTypeError(f"--set: unknown model {m!r}")
        if name not in field_names():
            raise argparse.ArgumentTypeError(f"--set: unknown setting {name!r}; choose from {', '.join(field_names())}")
        config["models"][m][name] = value


def build_parser(prog: str = "lai run") -> argparse.ArgumentParser:
    p = make_parser(prog, __doc__)
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                   help="quick: minutes on 2 CPU cores; full: paper scale (hours); tiny: seconds (tests)")
    p.add_argument("--suite", default="all", help=f"comma-separated, from {', '.join(SUITES)}, or all")
    add_models(p, MODELS)
    add_common(p, out=("results", "parent folder of the run folders"),
               seeds=(None, "seeds to run (default: the profile's: 0 for quick, 0-4 for full)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. mlp.steps=100, *.n_score=32, cost.repeats=1")
    p.add_argument("--estimators", default=None, metavar="LIST",
                   help=f"comma-separated, from {', '.join(chosen.scored())}, or all: what the fidelity suite scores "
                        "against Exact (default: all; the token-sequence-only ones on token-sequence models)")
    add_resume(p, "continue this run folder with its own config (refused under other code or threads)")
    p.add_argument("--fresh", action="store_true",
                   help="recompute the selected suites and models (delete their finished units first)")
    return p


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run configuration: the profile's settings with the command line's overrides, the device, the torch
    thread count and the code revision (all hashed into the run folder's id)."""
    config = get_profile(args.profile)
    if args.seeds is not None:
        config["seeds"] = list(args.seeds)
    for assignment in args.overrides:
        apply_override(config, assignment)
    if args.estimators is not None:
        config["estimators"] = split_list(args.estimators, tuple(chosen.scored()), "estimator")
    return {"profile": args.profile, "device": args.device, **config, "threads": args.threads,
            "code": code_revision()}


def main(argv: Sequence[str] | None = None, prog: str = "lai run") -> int:
    """Entry point of ``lai run``. Returns the exit status."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    try:
        suites = split_list(args.suite, SUITES, "suite")
        models = split_list(args.models, MODELS, "model")
        if args.resume and args.estimators is not None:
            raise argparse.ArgumentTypeError("--estimators sets up a new run; a resumed run keeps its own")
        config = None if args.resume else make_config(args)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    try:
        if args.resume:
            rd = RunDir(args.resume)
            config = rd.read_config()
            rd.check_resumable(code_revision(), args.threads)
        else:
            rd = RunDir(default_run_dir(args.out, config))
            rd.init(config)
    except (FileNotFoundError, ResumeMismatchError) as exc:
        return fail(str(exc))
    check_device(p, str(config.get("device", "cpu")))
    with torch_threads(int(config["threads"])):
        return _run(args, rd, config, suites, models)


def _run(args: argparse.Namespace, rd: RunDir, config: dict[str, Any], suites: list[str], models: list[str]) -> int:
    from validation.report import summary as report
    from validation.suites.runner import run_suites

    if args.fresh:
        for suite in suites:
            for m in models:
                rd.remove_units(suite, m)
    reused = sum(1 for suite in suites for m in models if (rd.root / "units" / suite / m).is_dir()
                 for _ in (rd.root / "units" / suite / m).rglob("*.json"))
    rd.add_provenance({**provenance(), "suites": suites, "models": models})
    if reused:
        info(args, f"resuming {rd.root}: {reused} finished units of these suites and models are reused, not "
                   "recomputed")
    info(args, f"run folder: {rd.root} (suites {', '.join(suites)}; models {', '.join(models)}; "
               f"threads {config['threads']}; code {config['code']})")
    written = run_suites(rd, config, suites, models, progress=progress_enabled(args))
    summary = report.write_report(rd)
    failed = report.failed_theory_checks(summary)
    info(args, f"units computed now: {written}, reused: {reused}; report: {rd.root / 'report.md'}")
    if failed:
        print(f"FAILED theory checks: {', '.join(failed)} (see {rd.root / 'report.md'})")
    print(rd.root)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


run_main = main  # the name used before the ``lai`` command

__all__ = ["main", "run_main", "build_parser", "make_config", "apply_override"]
