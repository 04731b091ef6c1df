"""Cost benchmark of the influence estimators: ``python -m validation bench`` (or ``python -m validation.bench``).

Per workload (model + train/reference batch sizes from the issue), every estimator's median wall time and
peak extra memory, measured in one process with the timed calls interleaved, and its ratio to one forward
pass over train+reference, to one forward+backward over train+reference and to one vanilla training step
(see ``validation.cost``). Then, optionally, the cost against the train batch size (``--sizes``; the exponent
is the slope of a least-squares line through (log n, log time)) and a 4,096-sample batch scored by every
estimator (``--big``).

Workloads (synthetic inputs from a fixed seed: the cost of these models does not depend on the values):

* ``mlp``: MLP 40-512-512-10, 256 train / 128 reference samples;
* ``transformer``: ``CausalTransformer()`` defaults, 32 train / 16 reference sequences of 128 tokens;
* ``cnn``: ``CNN2d()`` on 8x8 images, 256 train / 128 reference samples.

Output: a table per workload on stdout, and ``bench.json`` + ``bench.txt`` under ``--out`` (default
``results/bench/<timestamp>/``), rewritten atomically after every finished section so an interrupted run can
be resumed with ``--resume --out DIR``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import influence
from influence.batch import Batch, LossFn, call_model, output_tensor, take
from validation.cost import MB, estimator_costs, measure_many
from validation.models import MLP, CNN2d, CausalTransformer

ALL_ESTIMATORS = ("exact", "ghost", "lai", "lai_last", "tracin_last")
# Targets from the issue: (row, column, comparison, bound).
GHOST_OVER_EXACT = {"mlp": 20.0, "transformer": 5.0}
LAI_OVER_FORWARD = 1.5
LAI_PEAK_OVER_GHOST = 0.5
GHOST_OVER_FORWARD_BACKWARD = 1.5
CURATED_LAI_OVER_STEP = 1.2
CURATED_GHOST_OVER_STEP = 1.6
SCALING_EXPONENT = 1.15
BIG_BATCH = 4096
CLOCKS = ("wall", "cpu")


@dataclass
class Workload:
    """A model, a loss, a batch maker ``make(n, generator) -> (inputs, targets)`` and the batch sizes."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    make: Callable[[int, torch.Generator], Batch]
    n_train: int
    n_ref: int
    lr: float
    sizes: tuple[int, ...]
    big_chunk: int  # training samples per chunk for the --big run (bounded memory)
    meta: dict[str, Any] = field(default_factory=dict)


def _classification(d_in: tuple[int, ...], classes: int) -> Callable[[int, torch.Generator], Batch]:
    def make(n: int, gen: torch.Generator) -> Batch:
        return torch.randn(n, *d_in, generator=gen), torch.randint(0, classes, (n,), generator=gen)
    return make


def _language(vocab: int, length: int) -> Callable[[int, torch.Generator], Batch]:
    def make(n: int, gen: torch.Generator) -> Batch:
        ids = torch.randint(0, vocab, (n, length + 1), generator=gen)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    return make


def build_workload(name: str, tiny: bool = False, seed: int = 0) -> Workload:
    """The issue's reference workloads; ``tiny`` shrinks models and batches to seconds (tests)."""
    torch.manual_seed(seed)
    ce = influence.cross_entropy
    if name == "mlp":
        hidden = (16, 16) if tiny else (512, 512)
        return Workload(name, MLP(40, hidden, 10).eval(), ce, _classification((40,), 10),
                        *((16, 8) if tiny else (256, 128)), 0.1,
                        (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024,
                        {"model": f"MLP 40-{'-'.join(map(str, hidden))}-10"})
    if name == "transformer":
        kw = dict(d_model=16, n_layers=1, n_heads=2, max_len=16) if tiny else {}
        model = CausalTransformer(**kw).eval()
        length = model.pos.num_embeddings
        return Workload(name, model, ce, _language(model.tok.num_embeddings, length),
                        *((4, 2) if tiny else (32, 16)), 0.1,
                        (2, 4, 8, 16) if tiny else (32, 64, 128, 256, 512), 256,
                        {"model": f"CausalTransformer({kw or 'defaults'})", "seq_len": length})
    if name == "cnn":
        channels = 4 if tiny else 16
        return Workload(name, CNN2d(channels=channels).eval(), ce, _classification((1, 8, 8), 10),
                        *((16, 8) if tiny else (256, 128)), 0.1,
                        (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024,
                        {"model": f"CNN2d(channels={channels})"})
    raise ValueError(f"unknown workload {name!r}; choose from mlp, transformer, cnn")


# ------------------------------------------------------------------------------------------- curated steps

def _emulated_curated_steps(w: Workload, train: Batch, ref: Batch) -> dict[str, Callable[[], Any]]:
    """Curated SGD steps keeping the samples with score >= 0, emulated from the public API: LAI scoring then
    forward/backward on the kept samples; Ghost scoring then the update from ``result.weighted_gradient``."""
    def lai_step_fn() -> Callable[[], None]:
        model = copy.deepcopy(w.model)
        opt = torch.optim.SGD(model.parameters(), lr=w.lr)

        def step() -> None:
            r = influence.lai(model, w.loss_fn, train, ref, w.lr)
            keep = (r.scores >= 0).nonzero().flatten()
            opt.zero_grad(set_to_none=True)
            if len(keep):
                sub = take(train, keep)
                w.loss_fn(output_tensor(call_model(model, sub[0])), sub[1]).mean().backward()
            opt.step()
        return step

    def ghost_step_fn() -> Callable[[], None]:
        model = copy.deepcopy(w.model)
        opt = torch.optim.SGD(model.parameters(), lr=w.lr)

        def step() -> None:
            r = influence.ghost(model, w.loss_fn, train, ref, w.lr)
            keep = (r.scores >= 0).to(r.scores.dtype)
            opt.zero_grad(set_to_none=True)
            for p, g in r.weighted_gradient(keep / keep.sum().clamp(min=1)):
                p.grad = g
            opt.step()
        return step

    return {"curated_lai": lai_step_fn(), "curated_ghost": ghost_step_fn()}


def _curation_steps(w: Workload, train: Batch, ref: Batch) -> tuple[dict[str, Callable[[], Any]], str]:
    """Curated SGD steps (keep score >= 0) from ``validation.curation.step.curation_step`` when it imports,
    else the emulation above; the second element says which."""
    try:
        from validation.curation.step import curation_step  # written by another engineer
    except Exception as err:  # not there yet, or broken: fall back to the emulation, and say so
        return _emulated_curated_steps(w, train, ref), f"emulated ({type(err).__name__}: {err})"

    def step_fn(method: str) -> Callable[[], Any]:
        model = copy.deepcopy(w.model)
        opt = torch.optim.SGD(model.parameters(), lr=w.lr)

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            return curation_step(model, w.loss_fn, opt, train, ref, method, on_empty="keep_all")
        return step

    return {"curated_lai": step_fn("lai"), "curated_ghost": step_fn("ghost")}, \
        "validation.curation.step.curation_step (threshold 0)"


# ------------------------------------------------------------------------------------------------ sections

def _estimator_fn(w: Workload, name: str, train: Batch, ref: Batch, chunk: int | None) -> Callable[[], Any]:
    m, ce, lr = w.model, w.loss_fn, w.lr
    if name == "exact":  # exact and tracin keep their own default chunk (per-sample gradients of 64 samples)
        return lambda: influence.exact(m, ce, train, ref, lr).scores
    if name == "ghost":
        return lambda: influence.ghost(m, ce, train, ref, lr, chunk_size=chunk).scores
    if name == "lai":
        return lambda: influence.lai(m, ce, train, ref, lr, chunk_size=chunk).scores
    if name == "lai_last":
        return lambda: influence.lai(m, ce, train, ref, lr, layers="last", chunk_size=chunk).scores
    if name == "tracin_last":
        return lambda: influence.tracin(m, ce, train, ref, [(m.state_dict(), lr)], last_layer=True).scores
    raise ValueError(f"unknown estimator {name!r}")


def costs_section(w: Workload, repeats: int, estimators: tuple[str, ...], curated: bool) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    train, ref = w.make(w.n_train, gen), w.make(w.n_ref, gen)
    extra, how = _curation_steps(w, train, ref) if curated else ({}, None)
    rows = estimator_costs(w.model, w.loss_fn, train, ref, w.lr, (*estimators, *extra), repeats=repeats,
                           extra=extra)
    return {"n_train": w.n_train, "n_ref": w.n_ref, "rows": rows, "curated_step": how, "loadavg_after": _loadavg()}


def scaling_section(w: Workload, sizes: tuple[int, ...], repeats: int,
                    estimators: tuple[str, ...]) -> dict[str, Any]:
    """Median time of each estimator for every train batch size (reference fixed) and the fitted exponent."""
    gen = torch.Generator().manual_seed(2)
    ref = w.make(w.n_ref, gen)
    times: dict[str, list[float]] = {e: [] for e in estimators}
    cpu: dict[str, list[float]] = {e: [] for e in estimators}
    for n in sizes:
        train = w.make(n, gen)
        got = measure_many({e: _estimator_fn(w, e, train, ref, None) for e in estimators}, repeats, 1, memory=False)
        for e in estimators:
            times[e].append(got[e].median_s)
            cpu[e].append(got[e].cpu_median_s)
    return {"sizes": list(sizes), "n_ref": w.n_ref, "median_s": times, "cpu_median_s": cpu,
            "exponent": {e: fit_exponent(sizes, t) for e, t in times.items()},
            "cpu_exponent": {e: fit_exponent(sizes, t) for e, t in cpu.items()}}


def fit_exponent(sizes: tuple[int, ...] | list[int], times: list[float]) -> float:
    """Slope of the least-squares line through (log n, log t)."""
    if len(sizes) < 2:
        raise ValueError("the scaling fit needs at least two sizes")
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(times, float)), 1)[0])


def big_section(w: Workload, n: int, estimators: tuple[str, ...]) -> dict[str, Any]:
    """Every estimator on an n-sample train batch (one timed call, then the memory calls): Ghost and LAI in
    chunks of ``w.big_chunk`` training samples, Exact and TracIn in their default chunks of 64."""
    gen = torch.Generator().manual_seed(3)
    train, ref = w.make(n, gen), w.make(w.n_ref, gen)
    got = measure_many({e: _estimator_fn(w, e, train, ref, w.big_chunk) for e in estimators}, 1, 0, memory=True,
                       settle=False)
    return {"n_train": n, "n_ref": w.n_ref, "chunk_size": w.big_chunk,
            "rows": [{"estimator": e, "median_s": m.median_s, "cpu_median_s": m.cpu_median_s,
                      "peak_mb": m.peak_bytes / MB} for e, m in got.items()]}


def profile_section(w: Workload, estimators: tuple[str, ...], out: Path, rows: int = 15) -> dict[str, Any]:
    """One call of each estimator under ``torch.profiler``; the top ops by self CPU time go to
    ``profile_<workload>_<estimator>.txt`` and their names and shares into the report."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(1)
    train, ref = w.make(w.n_train, gen), w.make(w.n_ref, gen)
    summary = {}
    for e in estimators:
        fn = _estimator_fn(w, e, train, ref, None)
        fn()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        avgs = prof.key_averages(group_by_input_shape=True)
        atomic_write(out / f"profile_{w.name}_{e}.txt",
                     avgs.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40,
                                max_shapes_column_width=80))
        total = sum(a.self_cpu_time_total for a in avgs) or 1.0
        top = sorted(avgs, key=lambda a: a.self_cpu_time_total, reverse=True)[:rows]
        summary[e] = [{"op": a.key, "shapes": str(a.input_shapes)[:120], "share": a.self_cpu_time_total / total}
                      for a in top]
    return summary


# -------------------------------------------------------------------------------------------------- targets

def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["estimator"] == name), None)


def check_targets(workload: str, section: dict[str, Any], clock: str = "wall") -> list[dict[str, Any]]:
    """The issue's targets for one workload: [{"target", "value", "bound", "met", "clock"}] (value None = not
    measured). ``clock``: ``"wall"`` (wall-clock medians) or ``"cpu"`` (process CPU time medians)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    pre = "" if clock == "wall" else "cpu_"
    out = []

    def add(target: str, value: float | None, bound: float, upper: bool = True, by: str | None = clock) -> None:
        met = None if value is None else (value <= bound if upper else value >= bound)
        out.append({"target": target, "value": value, "bound": bound, "upper": upper, "met": met, "clock": by})

    rows = section.get("costs", {}).get("rows", [])
    lai, ghost, exact = _row(rows, "lai"), _row(rows, "ghost"), _row(rows, "exact")
    if lai:
        add("lai time / forward(train+ref)", lai[f"{pre}ratio_to_forward"], LAI_OVER_FORWARD)
        add("lai peak / ghost peak", lai["peak_ratio_to_ghost"], LAI_PEAK_OVER_GHOST, by=None)
    if ghost:
        add("ghost time / forward+backward(train+ref)", ghost[f"{pre}ratio_to_forward_backward"],
            GHOST_OVER_FORWARD_BACKWARD)
    if ghost and exact and workload in GHOST_OVER_EXACT:
        add("exact time / ghost time", exact[f"{pre}median_s"] / ghost[f"{pre}median_s"], GHOST_OVER_EXACT[workload],
            upper=False)
    for key, bound in (("curated_lai", CURATED_LAI_OVER_STEP), ("curated_ghost", CURATED_GHOST_OVER_STEP)):
        r = _row(rows, key)
        if r:
            add(f"{key} step / vanilla step", r[f"{pre}ratio_to_train_step"], bound)
    for est, k in section.get("scaling", {}).get(f"{pre}exponent", {}).items():
        add(f"{est} scaling exponent in n_train", k, SCALING_EXPONENT)
    big = section.get("big")
    if big:
        for r in big["rows"]:
            add(f"{r['estimator']} scores n={big['n_train']} (peak MB <= machine memory)", r["peak_mb"],
                _total_memory_mb(), by=None)
    return out


# -------------------------------------------------------------------------------------------------- output

def _total_memory_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError, AttributeError):
        return math.inf


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine, other processes slow every row (ratios stay fairer
    because the timed calls are interleaved)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment() -> dict[str, Any]:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "platform": platform.platform(), "processor": platform.processor() or None,
           "memory_gb": round(_total_memory_mb() / 1024, 1), "device": "cpu", "loadavg": _loadavg()}
    try:
        from importlib.metadata import version
        env["lai"] = version("lai")
    except Exception:
        env["lai"] = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        env["device"] = torch.cuda.get_device_name()
    return env


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render(report: dict[str, Any]) -> str:
    env = report["environment"]
    clock = report["args"].get("clock", "wall")
    pre = "" if clock == "wall" else "cpu_"
    lines = [f"lai bench  {report['started']}  torch {env['torch']}  numpy {env['numpy']}  python {env['python']}",
             f"machine: {env['platform']} ({env['machine']}), {env['cpu_count']} CPUs, {env['memory_gb']} GB, "
             f"threads {env['threads']}, device {env['device']}, repeats {report['args']['repeats']}, "
             f"load average at start {env.get('loadavg')}"]
    for name, sec in report["workloads"].items():
        costs = sec.get("costs")
        lines.append("")
        lines.append(f"== {name}: {sec['meta'].get('model', '')}")
        if costs:
            lines.append(f"   train {costs['n_train']} / ref {costs['n_ref']}"
                         + (f"; curated steps: {costs['curated_step']}" if costs.get("curated_step") else "")
                         + f"; load average after {costs.get('loadavg_after')}")
            lines.append(f"   ratios by {clock} time")
            lines.append(f"   {'estimator':<17}{'wall ms':>10}{'cpu ms':>10}{'peak MB':>10}{'x forward':>11}"
                         f"{'x fwd+bwd':>11}{'x train step':>14}{'peak/ghost':>12}")
            for r in costs["rows"]:
                lines.append(f"   {r['estimator']:<17}{r['median_s'] * 1e3:>10.2f}{r.get('cpu_median_s', 0) * 1e3:>10.2f}"
                             f"{r['peak_mb']:>10.1f}{_fmt(r[pre + 'ratio_to_forward']):>11}"
                             f"{_fmt(r[pre + 'ratio_to_forward_backward']):>11}"
                             f"{_fmt(r[pre + 'ratio_to_train_step']):>14}{_fmt(r['peak_ratio_to_ghost']):>12}")
        sc = sec.get("scaling")
        if sc:
            lines.append(f"   scaling in n_train (ref {sc['n_ref']}): sizes {sc['sizes']}")
            for e, ts in sc[pre + "median_s"].items():
                lines.append(f"   {e:<17} exponent {sc[pre + 'exponent'][e]:.3f}   {clock} ms: "
                             + " ".join(f"{t * 1e3:.1f}" for t in ts))
        for e, top in sec.get("profile", {}).items():
            lines.append(f"   profile {e} (share of self CPU time): "
                         + ", ".join(f"{t['op']} {t['share']:.0%}" for t in top[:6]))
        big = sec.get("big")
        if big:
            lines.append(f"   n_train {big['n_train']} (chunks of {big['chunk_size']}), ref {big['n_ref']}:")
            for r in big["rows"]:
                lines.append(f"   {r['estimator']:<17}{r['median_s']:>9.2f} s wall{r.get('cpu_median_s', 0):>9.2f} s cpu"
                             f"{r['peak_mb']:>10.1f} MB")
        lines.append("   targets:")
        for t in sec.get("targets", []):
            mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
            op = "<=" if t["upper"] else ">="
            lines.append(f"   [{mark:>6}] {t['target']}: {_fmt(t['value'], '.3f')} {op} {_fmt(t['bound'], '.3g')}"
                         + (f"  ({t['clock']})" if t.get("clock") else ""))
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(report: dict[str, Any], out: Path) -> None:
    atomic_write(out / "bench.json", json.dumps(report, indent=1, default=float))
    atomic_write(out / "bench.txt", render(report))


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m validation bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="all", choices=("mlp", "transformer", "cnn", "all"))
    p.add_argument("--repeats", type=int, default=7, help="timed calls per row (median reported)")
    p.add_argument("--estimators", default=",".join(ALL_ESTIMATORS),
                   help=f"comma-separated subset of {','.join(ALL_ESTIMATORS)}")
    p.add_argument("--sizes", default=None,
                   help="train batch sizes for the scaling fit, e.g. 256,512,1024,2048,4096 (or 'default')")
    p.add_argument("--scaling-estimators", default="ghost,lai,exact", help="estimators timed for the scaling fit")
    p.add_argument("--big", action="store_true", help=f"score a {BIG_BATCH}-sample batch with every estimator")
    p.add_argument("--big-n", type=int, default=BIG_BATCH, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true",
                   help="also profile ghost and lai once per workload (tables saved next to bench.json)")
    p.add_argument("--no-curated", action="store_true", help="skip the curated training steps")
    p.add_argument("--tiny", action="store_true", help="tiny models and batches (seconds; for tests)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice; use 1 on a machine shared with other jobs)")
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="time the ratios and targets use: wall (default) or process CPU time (robust on a shared "
                        "machine with --threads 1)")
    p.add_argument("--out", default=None, help="results folder (default results/bench/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="keep finished sections of an existing --out/bench.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.resume and args.out is None:
        p.error("--resume needs --out")
    return args


def _split(text: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise SystemExit(f"unknown estimators {bad}; choose from {allowed}")
    return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report written to ``bench.json``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    estimators = _split(args.estimators, ALL_ESTIMATORS)
    scaling_estimators = _split(args.scaling_estimators, ALL_ESTIMATORS)
    started = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "bench" / started
    names = ("mlp", "transformer", "cnn") if args.workload == "all" else (args.workload,)
    report: dict[str, Any] = {"started": started, "args": vars(args), "environment": environment(), "workloads": {}}
    if args.resume and (out / "bench.json").exists():
        old = json.loads((out / "bench.json").read_text())
        report["workloads"] = old.get("workloads", {})
    for name in names:
        w = build_workload(name, tiny=args.tiny, seed=args.seed)
        sec = report["workloads"].setdefault(name, {})
        sec["meta"] = w.meta
        todo = [("costs", lambda: costs_section(w, args.repeats, estimators, not args.no_curated))]
        if args.sizes:
            sizes = w.sizes if args.sizes == "default" else tuple(int(s) for s in _split(args.sizes))
            todo.append(("scaling", lambda s=sizes: scaling_section(w, s, max(3, args.repeats // 2),
                                                                     scaling_estimators)))
        if args.profile:
            todo.append(("profile", lambda: profile_section(w, ("ghost", "lai"), out)))
        if args.big:
            n_big = min(args.big_n, 64) if args.tiny else args.big_n
            todo.append(("big", lambda n=n_big: big_section(w, n, estimators)))
        for key, run in todo:
            if key in sec:
                continue
            print(f"[bench] {name}: {key} ...", file=sys.stderr, flush=True)
            sec[key] = run()
            sec["targets"] = check_targets(name, sec, args.clock)
            save(report, out)
        sec["targets"] = check_targets(name, sec, args.clock)
        save(report, out)
    text = render(report)
    print(text, end="")
    print(f"written: {out / 'bench.json'}, {out / 'bench.txt'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
