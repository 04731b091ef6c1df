"""``python -m validation curate``: curated-training comparison on one task, printed as a table.

    python -m validation curate --task mnist1d-noisy40 --seeds 3
    python -m validation curate --task digits-noisy20-classdep --methods vanilla,lai,ghost,greats --epochs 10
    python -m validation curate --list
    python -m validation curate --profile paper          # the paper's curation runs (validation.profiles)

Units already finished in the run folder are skipped, so an interrupted command resumes when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from .experiment import format_table, run_comparison
from .timing import format_timing
from .methods import METHODS
from ..profiles import CURATION_PROFILES
from .protocols import CHOICES, apply_protocol, expand
from .runner import run_profile
from .reference import KINDS
from .step import ON_EMPTY
from .tasks import TASKS, get_task

DEFAULT_METHODS = "vanilla,lai,ghost,small-loss,loss-threshold,random,oracle"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m validation curate", description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist1d-noisy40", help="task name (see --list)")
    ap.add_argument("--profile", choices=sorted(CURATION_PROFILES),
                    help="run a curation profile (tasks, seeds, methods and protocols of "
                         "validation.profiles.CURATION_PROFILES) seed by seed; --seeds/--epochs override it")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1; default 3)")
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--epochs", type=int, help="override the task's epochs")
    ap.add_argument("--batch-size", type=int, help="override the task's batch size")
    ap.add_argument("--lr", type=float, help="override the task's learning rate")
    ap.add_argument("--max-train", type=int, help="train on a seeded random subset of N training samples (quick runs)")
    ap.add_argument("--protocol", choices=CHOICES, default="ours",
                    help="scoring protocol: ours (from step 0, fixed reference), original (warm-up of a third of "
                         "the epochs, fresh reference subset each step), both (one run folder each)")
    ap.add_argument("--reference", choices=KINDS, help="reference policy (overrides the protocol's)")
    ap.add_argument("--ref-size", type=int, help="reference batch size")
    ap.add_argument("--warmup", type=int, help="steps of plain training before curation starts (added to the "
                                                "protocol's warm-up epochs)")
    ap.add_argument("--keep-fraction", type=float,
                    help="keep fraction of rate-based methods (default: match the --match method's kept fraction)")
    ap.add_argument("--match", default="lai", help="threshold method whose kept fraction rate-based methods match")
    ap.add_argument("--on-empty", choices=ON_EMPTY, default="best",
                    help="when the threshold keeps no sample: error, train on the whole batch, or on the best one")
    ap.add_argument("--results", default="results", help="results root (the run folder is <results>/curate/...)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these small models gain nothing from intra-op threads, and "
                         "step times stay comparable on a shared machine)")
    ap.add_argument("--timing-steps", type=int, default=30,
                    help="steps of the interleaved per-step timing after the runs (0: skip)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--list", action="store_true", help="list tasks and methods, then exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print("tasks:", ", ".join(sorted(TASKS)))
        print("methods:", ", ".join(METHODS))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        run_profile(args.profile, args.results, seeds=args.seeds, seed_start=args.seed_start,
                    progress=not args.no_progress, overrides={"epochs": args.epochs} if args.epochs else None)
        return 0
    base = get_task(args.task)
    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "reference": args.reference, "ref_size": args.ref_size,
                                   "warmup_steps": args.warmup, "max_train": args.max_train}.items() if v is not None}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown methods {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    seeds = list(range(args.seed_start, args.seed_start + (3 if args.seeds is None else args.seeds)))
    # the protocol sets reference, ref_size and warm-up from the task's (overridden) settings; explicit
    # --reference/--ref-size/--warmup then override the protocol's
    late = ("reference", "ref_size", "warmup_steps")
    timing: list = []
    for k, protocol in enumerate(expand(args.protocol)):
        spec = dataclasses.replace(base, **{k: v for k, v in overrides.items() if k not in late})
        spec = dataclasses.replace(apply_protocol(spec, protocol), **{k: v for k, v in overrides.items() if k in late})
        run, table, t = run_comparison(spec, methods, seeds, args.results, args.keep_fraction, args.match,
                                       args.on_empty, progress=not args.no_progress,
                                       timing_steps=args.timing_steps if k == 0 else 0)
        timing = timing or t
        print(f"\n{spec.name} ({protocol} protocol): {len(seeds)} seeds, {spec.epochs} epochs, run folder {run.root}")
        print(format_table(table))
    if timing:
        print(f"time per training step, interleaved over {args.timing_steps} steps (torch threads "
              f"{torch.get_num_threads()}):")
        print(format_timing(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
