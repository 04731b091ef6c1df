"""``lai bench``: cost of the influence estimators against a forward pass and a training step.

    lai bench                                    # the three workloads, about 5-10 min on 2 cores
    lai bench --models mlp --repeats 3 --no-curated
    lai bench --sizes default --big              # also the scaling in n_train and a 4,096-sample batch
    lai bench --resume results/bench/X           # keep the finished sections of an interrupted run
    lai bench --clock cpu --tasks none           # process CPU time (shared machine); no curation-task timing
    lai bench --models gpt2-small,pythia-160m --clock cpu   # real-size models (validation/bench/realsize.py)

Per workload (validation/bench/workloads.py), every estimator's median wall and CPU time over interleaved
repeats and its peak extra memory (validation/bench/measure.py: public profiler APIs), with its ratio to one
forward pass over train+reference, one forward+backward over train+reference and one vanilla training step
(see validation/bench/estimator_cost.py), and the targets of the cost issue marked MET / MISSED
(validation/bench/targets.py),
the LAI targets next to the floor that plain torch ops computing the same scores cost (validation/bench/floor.py);
then the per-call overhead of a scoring call on a tiny model (validation/bench/overhead.py) and a curated step
against a vanilla step on the curation tasks (validation/bench/tasks.py).
Real-size workloads (``--models gpt2-small,gpt2-small-512,pythia-160m,resnet18,vit-s``; not part of ``all``):
one guarded child process per (workload, estimator) row with each estimator's first and steady call, a forward
and a forward+backward, and peak memory side by side, plus a curated step and ``score_dataset`` throughput on
gpt2-small (validation/bench/realsize_run.py, bench_rows.py, bench_isolate.py); a row that is refused, fails,
is killed above ``--row-memory-gb`` or times out is recorded as such and the run goes on. With only real-size
workloads named, the overhead and curation-task sections are skipped.
Output: the table on stdout, ``bench.json`` + ``bench.txt`` under ``--out``, rewritten atomically after every
finished section. The exit status is 0 whether or not a target is met (targets are reported, not checks).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence.atomic import atomic_write_text
from influence.batch import Batch
from influence.estimators import estimator_names
from validation.bench.estimator_cost import estimator_costs
from validation.bench.floor import floor_calls
from validation.bench.measure import measure_many
from validation.bench.overhead import overhead_section
from validation.bench.realsize import REALSIZE
from validation.bench.realsize_run import RealSettings, default_estimators, plan_rows, run_rows
from validation.bench.report import environment, loadavg, render, save
from validation.bench.targets import CLOCKS, MB, check_targets
from validation.bench.tasks import TASKS, tasks_section
from validation.bench.workloads import WORKLOADS, Workload, build_workload, curated_steps, estimator_call
from validation.options import (
    add_common,
    add_models,
    add_not_applicable,
    add_resume,
    check_device,
    info,
    make_parser,
    split_list,
    torch_threads,
)
from validation.settings import estimators as chosen

BIG_BATCH = 4096


def _floors(w: Workload, train: Batch, ref: Batch, estimators: tuple[str, ...]) -> dict[str, Any]:
    """LAI's floor calls (``validation.bench.floor``) when LAI is measured and the workload has a floor, else {}."""
    if not any(chosen.family(e) == "lai" for e in estimators):
        return {}
    return floor_calls(w.model, w.loss_fn, train, ref, w.spec.lr)


def costs_section(w: Workload, repeats: int, estimators: tuple[str, ...], curated: bool) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    extra = curated_steps(w, train, ref) if curated else {}
    extra.update(_floors(w, train, ref, estimators))
    rows = estimator_costs(w.model, w.loss_fn, train, ref, w.spec.lr, (*estimators, *extra), repeats=repeats,
                           extra=extra)
    how = "influence.curation.curation_step (threshold 0)" if curated else None
    return {"n_train": w.spec.n_score, "n_ref": w.spec.n_ref, "rows": rows, "curated_step": how,
            "loadavg_after": loadavg()}


def fit_exponent(sizes: tuple[int, ...] | list[int], times: list[float]) -> float:
    """Slope of the least-squares line through (log n, log t)."""
    if len(sizes) < 2:
        raise ValueError("the scaling fit needs at least two sizes")
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(times, float)), 1)[0])


def scaling_section(w: Workload, sizes: tuple[int, ...], repeats: int,
                    estimators: tuple[str, ...]) -> dict[str, Any]:
    """Median time of each estimator (and of LAI's floor, ``validation.bench.floor``, where the workload has one)
    for every train batch size (reference fixed) and the fitted exponent."""
    gen = torch.Generator().manual_seed(2)
    ref = w.make(w.spec.n_ref, gen)
    times: dict[str, list[float]] = {e: [] for e in estimators}
    cpu: dict[str, list[float]] = {e: [] for e in estimators}
    for n in sizes:
        train = w.make(n, gen)
        calls = {e: estimator_call(w, e, train, ref) for e in estimators}
        calls.update(_floors(w, train, ref, estimators))  # at every size: LAI's fixed per-call work is the gap
        got = measure_many(calls, repeats, 1, memory=False)
        for e in calls:
            times.setdefault(e, []).append(got[e].median_s)
            cpu.setdefault(e, []).append(got[e].cpu_median_s)
    return {"sizes": list(sizes), "n_ref": w.spec.n_ref, "median_s": times, "cpu_median_s": cpu,
            "exponent": {e: fit_exponent(sizes, t) for e, t in times.items()},
            "cpu_exponent": {e: fit_exponent(sizes, t) for e, t in cpu.items()}}


def big_section(w: Workload, n: int, estimators: tuple[str, ...]) -> dict[str, Any]:
    """Every estimator on an n-sample train batch (one timed call, then the memory call): Ghost and LAI in
    chunks of ``w.spec.big_chunk`` training samples, Exact and TracIn in their default chunks."""
    gen = torch.Generator().manual_seed(3)
    train, ref = w.make(n, gen), w.make(w.spec.n_ref, gen)
    got = measure_many({e: estimator_call(w, e, train, ref, w.spec.big_chunk) for e in estimators}, 1, 0, memory=True,
                       settle=False)
    return {"n_train": n, "n_ref": w.spec.n_ref, "chunk_size": w.spec.big_chunk,
            "rows": [{"estimator": e, "median_s": m.median_s, "cpu_median_s": m.cpu_median_s,
                      "peak_mb": m.peak_bytes / MB} for e, m in got.items()]}


def ops_section(w: Workload, estimators: tuple[str, ...], out: Path, rows: int = 15) -> dict[str, Any]:
    """One call of each estimator under ``torch.profiler``; the top ops by self CPU time go to
    ``ops_<workload>_<estimator>.txt`` and their names and shares into the report."""
    from torch.profiler import ProfilerActivity, profile

    from validation.bench.measure import filtered_stderr

    gen = torch.Generator().manual_seed(1)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    summary = {}
    for e in estimators:
        fn = estimator_call(w, e, train, ref)
        fn()
        with filtered_stderr(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        avgs = prof.key_averages(group_by_input_shape=True)
        atomic_write_text(out / f"ops_{w.name}_{e}.txt",
                          avgs.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40,
                                     max_shapes_column_width=80))
        total = sum(a.self_cpu_time_total for a in avgs) or 1.0
        top = sorted(avgs, key=lambda a: a.self_cpu_time_total, reverse=True)[:rows]
        summary[e] = [{"op": a.key, "shapes": str(a.input_shapes)[:120], "share": a.self_cpu_time_total / total}
                      for a in top]
    return summary


def build_parser(prog: str = "lai bench") -> argparse.ArgumentParser:
    p = make_parser(prog, __doc__)
    add_models(p, (*WORKLOADS, *REALSIZE), what=f"workloads (all: {', '.join(WORKLOADS)}; the real-size ones are "
               "named)", dest="workload")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per row (median reported)")
    p.add_argument("--estimators", default=None,
                   help=f"comma-separated, from {', '.join(estimator_names())} (default: "
                        f"{','.join(chosen.timed())}: all but {', '.join(chosen.UNTIMED)}; "
                        "real-size language models also the token-sequence-only ones)")
    p.add_argument("--sizes", default=None,
                   help="train batch sizes for the scaling fit, e.g. 256,512,1024 (or 'default')")
    p.add_argument("--scaling-estimators", default="ghost,lai,exact", help="estimators timed for the scaling fit")
    p.add_argument("--big", action="store_true", help=f"score a {BIG_BATCH}-sample batch with every estimator")
    p.add_argument("--big-n", type=int, default=BIG_BATCH, help=argparse.SUPPRESS)
    p.add_argument("--op-breakdown", action="store_true",
                   help="also break one ghost and one lai call per workload down by operator (torch.profiler); "
                        "tables saved next to bench.json")
    p.add_argument("--no-curated", action="store_true", help="skip the curated training steps")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="curation tasks whose curated step is timed against a vanilla step, with reference "
                        "statistics recomputed every step and kept for several (comma-separated; 'none' to skip)")
    p.add_argument("--task-steps", type=int, default=40, help="interleaved steps of the curation-task timing")
    p.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead section (tiny model)")
    p.add_argument("--tiny", action="store_true", help="tiny models and batches (seconds; for tests)")
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="time the ratios and targets use: wall or process CPU time (robust on a shared machine "
                        "with --threads 1)")
    real = p.add_argument_group("real-size workloads")
    real.add_argument("--n-layers", type=int, default=None, help="depth of the real-size models (default: theirs; "
                      "fewer for a short run)")
    real.add_argument("--seq-len", type=int, default=None, help="tokens per sequence of the real-size LMs "
                      "(default: 128; 512 for gpt2-small-512)")
    real.add_argument("--n-score", type=int, default=None, help="training samples scored by a real-size row "
                      "(default: LMs 2, images 32)")
    real.add_argument("--n-ref", type=int, default=None, help="reference samples of a real-size row "
                      "(default: LMs 2, images 32)")
    real.add_argument("--dataset-n", type=int, default=512, help="sequences score_dataset scores on gpt2-small "
                      "(0: skip)")
    real.add_argument("--row-timeout", type=float, default=3600.0, help="seconds before a real-size row's "
                      "process is killed and recorded as a timeout")
    real.add_argument("--row-memory-gb", type=float, default=8.0, help="resident GiB above which a real-size "
                      "row's process is killed and recorded as killed")
    real.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)  # tests: a tiny LM's vocabulary
    add_common(p, out=(None, "results folder (default: results/bench/<timestamp>)"))
    add_resume(p, "keep the finished sections of an interrupted benchmark's bench.json", into_out=True)
    add_not_applicable(p, {"--seeds": "timings do not depend on a seed (the workloads are built with fixed seeds)"})
    return p


def main(argv: list[str] | None = None, prog: str = "lai bench") -> int:
    """Run the benchmark (``run`` does the work and returns the report written to ``bench.json``)."""
    run(argv, prog)
    return 0


def run(argv: list[str] | None = None, prog: str = "lai bench") -> dict[str, Any]:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.resume and args.out is None:
        p.error("--resume needs --out")
    check_device(p, args.device)
    try:
        registered = tuple(estimator_names())
        scaling_estimators = tuple(split_list(args.scaling_estimators, registered, "estimator"))
        names = workload_names(args.workload)
        real = [n for n in names if n in REALSIZE]
        given = None if args.estimators is None else tuple(split_list(args.estimators, registered, "estimator"))
        estimators = given or tuple(chosen.timed())  # every registered estimator but chosen.UNTIMED
        real_estimators = given or default_estimators(real)
        sizes = None if args.sizes in (None, "default") else tuple(int(s) for s in split_list(args.sizes))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        p.error(str(exc))
    for opt in ("n_layers", "seq_len", "n_score", "n_ref"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.dataset_n < 0 or args.row_timeout <= 0 or args.row_memory_gb <= 0:
        p.error("--dataset-n must be >= 0, --row-timeout and --row-memory-gb > 0")
    with torch_threads(args.threads):
        return _bench(args, estimators, scaling_estimators, names, sizes, real_estimators)


def workload_names(text: str) -> list[str]:
    """The workloads of ``--models``: ``all`` is the three toy workloads; real-size names only by name."""
    out: list[str] = []
    for item in split_list(text):
        if item != "all" and item not in (*WORKLOADS, *REALSIZE):
            raise argparse.ArgumentTypeError(f"unknown workload {item!r}; choose from "
                                             f"{', '.join([*WORKLOADS, 'all', *REALSIZE])}")
        out += [w for w in (WORKLOADS if item == "all" else (item,)) if w not in out]
    return out


def realsize_settings(args: argparse.Namespace) -> RealSettings:
    """``RealSettings`` from the parsed options."""
    return RealSettings(repeats=args.repeats, threads=args.threads, device=args.device, tiny=args.tiny,
                        vocab=args.vocab, overrides={"n_layers": args.n_layers, "seq_len": args.seq_len,
                                                     "n_score": args.n_score, "n_ref": args.n_ref},
                        curated=not args.no_curated, dataset_n=args.dataset_n, timeout_s=args.row_timeout,
                        rss_limit_gb=args.row_memory_gb)


def _bench(args: argparse.Namespace, estimators: tuple[str, ...], scaling_estimators: tuple[str, ...],
           names: list[str], sizes: tuple[int, ...] | None,
           real_estimators: tuple[str, ...] = ()) -> dict[str, Any]:
    started = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "bench" / started
    report: dict[str, Any] = {"started": started, "args": vars(args), "environment": environment(args.device),
                              "workloads": {}}
    if args.resume and (out / "bench.json").exists():
        old = json.loads((out / "bench.json").read_text())
        report["workloads"], report["tasks"] = old.get("workloads", {}), old.get("tasks", {})
        if "overhead" in old:
            report["overhead"] = old["overhead"]
        if "realsize" in old:
            report["realsize"] = old["realsize"]
    real = [n for n in names if n in REALSIZE]
    names = [n for n in names if n not in REALSIZE]
    if real:
        rs = realsize_settings(args)
        section = report.setdefault("realsize", {})
        section["settings"] = rs.to_dict()
        run_rows(plan_rows(real, real_estimators, rs), section, rs, args.clock, lambda: save(report, out),
                 progress=not args.no_progress and not args.quiet)
        save(report, out)
    for name in names:
        w = build_workload(name, tiny=args.tiny, device=args.device)
        sec = report["workloads"].setdefault(name, {})
        sec["meta"] = w.meta
        todo = [("costs", lambda: costs_section(w, args.repeats, estimators, not args.no_curated))]
        if args.sizes:
            s = w.spec.sizes if sizes is None else sizes
            todo.append(("scaling", lambda s=s: scaling_section(w, s, max(3, args.repeats // 2), scaling_estimators)))
        if args.op_breakdown:
            todo.append(("ops", lambda: ops_section(w, ("ghost", "lai"), out)))
        if args.big:
            n_big = min(args.big_n, 64) if args.tiny else args.big_n
            todo.append(("big", lambda n=n_big: big_section(w, n, estimators)))
        for key, section in todo:
            if key in sec:
                continue
            if not args.no_progress and not args.quiet:
                print(f"[bench] {name}: {key} ...", file=sys.stderr, flush=True)
            sec[key] = section()
            sec["targets"] = check_targets(name, sec, args.clock)
            save(report, out)
        sec["targets"] = check_targets(name, sec, args.clock)
        save(report, out)
    if not names:  # only real-size workloads: no toy sections
        print(render(report), end="")
        info(args, f"written: {out / 'bench.json'}, {out / 'bench.txt'}")
        return report
    if not args.no_overhead and "overhead" not in report:
        report["overhead"] = overhead_section(rounds=3 if args.tiny else 15, calls=5 if args.tiny else 40)
        save(report, out)
    tasks = [] if args.tasks in ("", "none") else split_list(args.tasks)
    for task in tasks:
        done = report.setdefault("tasks", {})
        if task in done:
            continue
        if not args.no_progress and not args.quiet:
            print(f"[bench] curation task {task} ...", file=sys.stderr, flush=True)
        done[task] = tasks_section(task, min(args.task_steps, 3) if args.tiny else args.task_steps, args.tiny)
        save(report, out)
    print(render(report), end="")
    info(args, f"written: {out / 'bench.json'}, {out / 'bench.txt'}")
    return report


__all__ = ["main", "run", "build_parser", "costs_section", "scaling_section", "big_section", "ops_section",
           "fit_exponent", "check_targets"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m validation.bench.command"))
