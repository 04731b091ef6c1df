"""``lai curate``: curated-training comparison on one task, printed as a table of final test accuracy per
method (mean, std over seeds, kept fraction, noise recall, time per step against vanilla training).

    lai curate --task mnist1d-noisy40 --seeds 0-2        # a few minutes on 2 cores
    lai curate --task digits-noisy20-classdep --methods vanilla,lai,ghost,greats --epochs 10
    lai curate --list
    lai curate --profile full                            # the paper's curation runs (validation.settings.profiles)

Run folders: ``<out>/curate/<task>-<protocol>-<config id>/`` (``lai figures`` reads ``<results>/curate``).
Units already finished in the run folder are skipped, so an interrupted command resumes when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from influence.curation.methods import METHODS, get_method
from influence.curation.reference import KINDS
from influence.curation.step import ON_EMPTY

from ..options import add_common, add_not_applicable, make_parser, progress_enabled, split_list, torch_threads
from ..settings.profiles import CURATION_PROFILES
from .protocols import CHOICES, apply_protocol, expand
from .tasks import TASKS, get_task

# --profile names the same scale presets as `lai run --profile`; the curation profile each one runs ("paper" is
# the old name of "full")
PROFILES = {"quick": "quick", "full": "paper", "paper": "paper"}

DEFAULT_METHODS = "vanilla,lai,ghost,small-loss,loss-threshold,random,oracle"


def check_methods(*args: Any, **kwargs: Any) -> None:
    """``validation.curation.experiment.check_methods``, imported when called (it needs the validation extra)."""
    from .experiment import check_methods as check
    check(*args, **kwargs)


def run_comparison(*args: Any, **kwargs: Any) -> Any:
    """``validation.curation.experiment.run_comparison``, imported when called (it needs the validation extra)."""
    from .experiment import run_comparison as run

    return run(*args, **kwargs)


def run_profile(*args: Any, **kwargs: Any) -> Any:
    """``validation.curation.runner.run_profile``, imported when called (it needs the validation extra)."""
    from .runner import run_profile as run

    return run(*args, **kwargs)


def build_parser(prog: str = "lai curate") -> argparse.ArgumentParser:
    ap = make_parser(prog, __doc__)
    ap.add_argument("--task", default="mnist1d-noisy40", help="task name (see --list)")
    ap.add_argument("--profile", choices=[k for k in PROFILES if PROFILES[k] in CURATION_PROFILES],
                    help="run a scale preset: quick, or full (the paper's curation runs; 'paper' is its old name): "
                         "the tasks, seeds, methods and protocols of validation.settings.profiles.CURATION_PROFILES, seed by "
                         "seed; --seeds/--epochs override it")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}; <rate method>-as-<method> (random-as-lai-last) "
                    "matches that method's kept fraction")
    ap.add_argument("--epochs", type=int, help="override the task's epochs")
    ap.add_argument("--batch-size", type=int, help="override the task's batch size")
    ap.add_argument("--lr", type=float, help="override the task's learning rate")
    ap.add_argument("--max-train", type=int, help="train on a seeded random subset of N training samples (quick runs)")
    ap.add_argument("--protocol", choices=CHOICES, default="ours",
                    help="scoring protocol: ours (from step 0, fixed reference), original (warm-up of a third of "
                         "the epochs, fresh reference subset each step), both (one run folder each)")
    ap.add_argument("--reference", choices=KINDS, help="reference policy (overrides the protocol's)")
    ap.add_argument("--ref-size", type=int, help="reference batch size (the task's n_ref)")
    ap.add_argument("--warmup", type=int, help="steps of plain training before curation starts (added to the "
                                                "protocol's warm-up epochs)")
    ap.add_argument("--keep-fraction", type=float,
                    help="keep fraction of rate-based methods (default: match the --match method's kept fraction)")
    ap.add_argument("--match", default="lai", help="threshold method whose kept fraction rate-based methods match")
    ap.add_argument("--on-empty", choices=ON_EMPTY, default="best",
                    help="when the threshold keeps no sample: error, train on the whole batch, or on the best one")
    ap.add_argument("--refresh-every", type=int, default=1, metavar="K",
                    help="LAI/Ghost: recompute the reference statistics every K curated steps (1: every step; "
                         "validation.staleness measures ranking fidelity against K)")
    ap.add_argument("--timing-steps", type=int, default=30,
                    help="steps of the interleaved per-step timing after the runs (0: skip)")
    add_common(ap, out=("results", "results root: run folders go to <out>/curate/"),
               seeds=(None, "seeds (default: 0-2, or the profile's with --profile)"), device=False)
    add_not_applicable(ap, {"--device": "curated training runs on the CPU (the curation tasks' models are small)"})
    ap.add_argument("--list", action="store_true", help="list tasks and methods, then exit")
    return ap


def main(argv: list[str] | None = None, prog: str = "lai curate") -> int:
    p = build_parser(prog)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print("tasks:", ", ".join(sorted(TASKS)))
        print("methods:", ", ".join(METHODS))
        return 0
    try:
        methods = split_list(args.methods, None, "method")
        for name in methods:  # a registered method, or <rate method>-as-<method> (methods.get_method)
            get_method(name)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        p.error(str(exc))
    if args.task not in TASKS and not args.profile:
        p.error(f"unknown task {args.task!r}; choose from {', '.join(sorted(TASKS))}")
    if args.refresh_every < 1:
        p.error(f"--refresh-every must be >= 1, got {args.refresh_every}")
    if not args.profile:
        try:
            check_methods(get_task(args.task), methods)
        except ValueError as exc:
            p.error(str(exc))
    with torch_threads(args.threads):
        return _curate(args, methods)


def _curate(args: argparse.Namespace, methods: list[str]) -> int:
    import torch

    from .experiment import format_table, plateau_line
    from .timing import format_timing

    progress = progress_enabled(args)
    log = (lambda _: None) if args.quiet else print
    if args.profile:
        run_profile(PROFILES[args.profile], args.out, seeds=args.seeds, progress=progress, log=log,
                    overrides={"epochs": args.epochs} if args.epochs else None)
        return 0
    base = get_task(args.task)
    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "reference": args.reference, "n_ref": args.ref_size,
                                   "warmup_steps": args.warmup, "max_train": args.max_train}.items() if v is not None}
    seeds = [0, 1, 2] if args.seeds is None else args.seeds
    # the protocol sets reference, n_ref and warm-up from the task's (overridden) settings; explicit
    # --reference/--ref-size/--warmup then override the protocol's
    late = ("reference", "n_ref", "warmup_steps")
    timing: list = []
    for k, protocol in enumerate(expand(args.protocol)):
        spec = dataclasses.replace(base, **{k: v for k, v in overrides.items() if k not in late})
        spec = dataclasses.replace(apply_protocol(spec, protocol), **{k: v for k, v in overrides.items() if k in late})
        run, table, t = run_comparison(spec, methods, seeds, args.out, args.keep_fraction, args.match,
                                       args.on_empty, progress=progress, log=log,
                                       timing_steps=args.timing_steps if k == 0 else 0,
                                       refresh_every=args.refresh_every)
        timing = timing or t
        print(f"\n{spec.name} ({protocol} protocol): {len(seeds)} seeds, {spec.epochs} epochs, run folder {run.root}")
        print(format_table(table))
        if any(r["method"] == "vanilla" for r in table):  # has vanilla plateaued (the convergence rule, on the
            # clean validation curve)?
            print(plateau_line(run, spec.name, seeds))
    if timing:
        print(f"time per training step, interleaved over {args.timing_steps} steps (torch threads "
              f"{torch.get_num_threads()}):")
        print(format_timing(timing))
    return 0


parser = build_parser  # the name used before

if __name__ == "__main__":
    sys.exit(main(prog="python -m validation.curation.cli"))
