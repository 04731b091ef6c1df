"""The curated-training comparison: every (task, method, seed) unit trained, logged and summarised.

Run folder ``<results>/curate/<task>-<protocol>-<config id>/`` (the id hashes the task settings, protocol
included, the options that change results and the torch thread count, so rerunning the same command resumes
the same folder; every unit records the code revision it ran under):

    config.json, provenance.json             the settings; one provenance entry per invocation
    units/curate/<task>/seed<s>/<method>.json one finished unit (summary + per-epoch test curve); a readable
                                             one is never recomputed, a corrupt or empty one is
    steps/<method>/seed<s>.csv               per step: epoch, step, n, kept, loss, kept_loss, kept_fraction,
                                             noisy_kept, noisy_dropped, score_s, update_s, fallback
    pretrain/seed<s>.pt                      the shared pre-trained weights (fine-tuning tasks)
    table.csv, table.md                      per method: final metric mean and std over seeds (sample std,
                                             ddof=1), kept fraction, noise recall/precision of the drops,
                                             median step time (from the training runs) relative to vanilla
    timing.csv, timing.md                    interleaved per-step timing of the methods (``timing``), the
                                             trustworthy time ratio on a machine shared with other jobs

Batch order depends only on the seed, so every method sees the same batches. Rate-matched methods (random,
small-loss-fixed, large-grad, top-k, GREATS; ``Method.rate_matched``) keep the fraction the matched threshold
method (default: lai) kept over its curated steps at the same seed, unless a keep fraction is given;
small-loss follows its own ramped schedule (tau = the task's noise rate: the oracle rate), small-loss-est the
same schedule with tau estimated from the data (:func:`estimate_noise_rate` after each of epochs 2-4, or of the
last 3 epochs of a longer warm-up, medianed; nothing dropped before), loss-threshold, oracle and the
threshold methods keep what their rule keeps. Every random choice has its own stream (``seeds``).

Convergence: every unit also records the metric on the clean held-out reference pool after every epoch
(``val_curve``), the test metric at the best validation epoch (``best_val_test``, beside the final one) and
whether training had plateaued by the plateau rule (:func:`plateaued`, on the validation curve); ``lai curate``
prints the rule's verdict for vanilla (:func:`plateau_line`).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from influence.curation.methods import Method, get_method, ramped_drop_rate
from influence.curation.step import Curator

from ..report.results import (
    RunDir,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_text,
    code_revision,
    config_id,
    git_revision,
    provenance,
    read_json,
)
from .convergence import (
    ESTIMATED_RATE,
    PLATEAU_FRACTION,
    PLATEAU_MIN_EPOCHS,
    PLATEAU_TOL,
    convergence,
    estimate_noise_rate,
    training_losses,
)
from .seeds import generator, stream
from .tasks import Prepared, TaskSpec, evaluate, prepare
from .timing import TIMING_COLUMNS, format_timing, time_methods

STEP_COLUMNS = ["epoch", "step", "n", "kept", "loss", "kept_loss", "kept_fraction", "noisy_kept", "noisy_dropped",
                "score_s", "update_s", "fallback"]
TABLE_COLUMNS = ["method", "metric", "mean", "std", "n_seeds", "values", "kept_fraction", "noise_recall",
                 "drop_precision", "step_s", "time_vs_vanilla", "fallbacks", "best_val_mean", "best_val_std",
                 "plateau_held", "plateau_gain", "drop_rate_tau"]
ESTIMATE_AFTER, ESTIMATE_EPOCHS = 4, 3  # small-loss-est: plain epochs before tau exists; estimates medianed
SUITE = "curate"
_REVISION = git_revision()  # code revision recorded in every unit (a resumed run shows if units differ)
_CODE = code_revision()  # part of the run folder's id


def run_config(spec: TaskSpec, keep_fraction: float | None, match: str, on_empty: str,
               refresh_every: int | None = 1) -> dict[str, Any]:
    """Everything that changes a unit's result (hashed into the run folder's id): task settings (protocol
    included), rate matching, the empty-selection fallback, the torch thread count and the code revision
    (``validation.report.results.code_revision``), so a run resumes only under the code and threads it started with;
    other code starts a folder of its own instead of mixing units."""
    return {"profile": spec.name, "task": spec.to_dict(), "keep_fraction": keep_fraction, "match": match,
            "on_empty": on_empty, "refresh_every": refresh_every, "threads": torch.get_num_threads(), "code": _CODE}


def _batches(n: int, batch_size: int, epoch: int, seed: int, purpose: str = "batches") -> list[Tensor]:
    # A stream of its own (``seeds``): seeding with small numbers would replay the noise injection's
    # permutation (seed 0, epoch 0 gave the same randperm, so the first batches were all noisy).
    perm = torch.randperm(n, generator=generator(seed, purpose, epoch))
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def pretrained_state(run: RunDir, prep: Prepared, seed: int) -> dict[str, Tensor] | None:
    """Clean pre-training shared by all methods of a fine-tuning task (cached in the run folder)."""
    if prep.pretrain is None:
        return None
    path = run.root / "pretrain" / f"seed{seed}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    model = prep.make_model()
    opt = prep.optimizer(model)
    x, y = prep.pretrain
    for epoch in range(prep.spec.pretrain_epochs):
        for idx in _batches(len(y), prep.spec.batch_size, epoch, seed, "pretrain"):
            opt.zero_grad()
            prep.loss_fn(model(x[idx]), y[idx]).mean().backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(path, state)
    return state


def train_unit(prep: Prepared, method: Method, seed: int, on_empty: str, init: dict[str, Tensor] | None = None,
               progress: bool = True, refresh_every: int | None = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one (task, method, seed) unit. Returns (summary, per-step rows). ``refresh_every``: steps between
    recomputations of the reference statistics (``Curator``)."""
    spec = prep.spec
    model = prep.make_model()
    if init is not None:
        model.load_state_dict(init)
    opt = prep.optimizer(model)
    ref = prep.reference(stream(seed, "reference"))
    x, y = prep.train
    per_epoch = len(_batches(len(y), spec.batch_size, 0, seed))
    warmup = warmup_steps(spec, per_epoch)
    curator = Curator(prep.loss_fn, method, reference=ref, warmup_steps=warmup, on_empty=on_empty,
                      seed=stream(seed, "select"), refresh_every=refresh_every)
    rows, curve, val_curve = [], [], []
    estimated = method.ramp and method.name in ESTIMATED_RATE
    # small-loss-est: nothing dropped until the estimate exists; it is the median of the rate estimates on the
    # training losses after each of the last ESTIMATE_EPOCHS epochs of the warm-up (the Curator's warm-up, at
    # least ESTIMATE_AFTER epochs; one epoch's estimate alone swings by 0.2 on the real digits)
    estimate_after = max(ESTIMATE_AFTER, math.ceil(warmup / per_epoch)) if estimated else None
    # the oracle rate: the injected rate, or the realised share of wrong labels for real noisy labels (CIFAR-N)
    oracle_rate = prep.noise["real_labels"]["noise_rate"] if "real_labels" in prep.noise else spec.noise.rate
    tau, estimate, estimates = (None if estimated else oracle_rate), None, []
    start, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=spec.epochs * len(y), desc=f"{spec.name} {method.name} seed{seed}", leave=False,
               disable=not progress, unit="sample", unit_scale=True)  # the rate reads in samples/s
    step = 0
    for epoch in range(spec.epochs):
        if method.ramp:  # co-teaching schedule: drop min(tau * epoch / T_k, tau), tau = the task's noise rate
            # (small-loss-est: the estimated rate, 0 before the estimate)
            curator.method = method.with_fraction(
                1.0 - ramped_drop_rate(epoch, tau if tau is not None else 0.0, spec.ramp_epochs))
        for idx in _batches(len(y), spec.batch_size, epoch, seed):
            opt.zero_grad(set_to_none=True)
            info = curator.step(model, opt, (x[idx], y[idx]), is_noisy=prep.is_noisy[idx])
            rows.append({"epoch": epoch, "step": step, **info.row()})
            step += 1
            bar.update(len(idx))
        curve.append(evaluate(model, prep.test, prep.metric))
        val_curve.append(evaluate(model, prep.ref_pool, prep.metric))
        if estimated and estimate_after - ESTIMATE_EPOCHS <= epoch < estimate_after:
            estimates.append(estimate_noise_rate(training_losses(model, prep)))
            if epoch + 1 == estimate_after:
                tau = statistics.median(e["rate"] for e in estimates)
                estimate = {"rate": tau, "per_epoch": [e["rate"] for e in estimates],
                            "epochs": list(range(epoch + 1 - len(estimates), epoch + 1)), "method": "gmm2-median"}
    bar.close()
    curated = rows[warmup:] or rows
    noisy_seen = sum(r["noisy_kept"] + r["noisy_dropped"] for r in curated)
    dropped = sum(r["n"] - r["kept"] for r in curated)
    noisy_dropped = sum(r["noisy_dropped"] for r in curated)
    summary = {
        "task": spec.name, "method": method.name, "signal": method.signal, "policy": method.policy,
        "threshold": method.threshold, "keep_fraction": method.keep_fraction, "ramp": method.ramp,
        "drop_rate_tau": tau if method.ramp else None,
        "drop_rate_source": ("estimated" if estimated else "oracle") if method.ramp else None,
        "noise_rate_estimate": estimate,
        "ramp_epochs": spec.ramp_epochs if method.ramp else None,
        "protocol": spec.protocol, "warmup_steps": warmup, "reference": spec.reference, "n_ref": spec.n_ref,
        "seed": seed, "metric": prep.metric, "refresh_every": refresh_every,
        "final": curve[-1], "curve": curve, "steps": step,
        **convergence(curve, val_curve, higher_is_better=prep.metric == "accuracy"),
        "kept_fraction": sum(r["kept_fraction"] for r in curated) / len(curated),
        "noise_recall": noisy_dropped / noisy_seen if noisy_seen else None,
        "drop_precision": noisy_dropped / dropped if dropped else None,
        "noisy_dropped": noisy_dropped, "noisy_seen": noisy_seen,
        "fallbacks": sum(1 for r in rows if r["fallback"]),
        "score_s_median": statistics.median(r["score_s"] for r in curated),
        "update_s_median": statistics.median(r["update_s"] for r in curated),
        "step_s_median": statistics.median(r["score_s"] + r["update_s"] for r in curated),
        "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu0, "noise": prep.noise,
        "torch_threads": torch.get_num_threads(), "code": _REVISION,
    }
    return summary, rows


def warmup_steps(spec: TaskSpec, steps_per_epoch: int) -> int:
    """Steps of plain training before curation: ``warmup_steps`` + ``warmup_epochs`` whole or part epochs."""
    return spec.warmup_steps + int(round(spec.warmup_epochs * steps_per_epoch))


UNIT_KEYS = ("method", "seed", "final", "curve", "kept_fraction")


def unit_problem(path: Path) -> str | None:
    """Why the unit file at ``path`` cannot be used (unreadable, not an object, a key missing), or None."""
    try:
        unit = read_json(path)
    except (OSError, ValueError) as exc:
        return f"unreadable unit file {path} ({type(exc).__name__}: {exc})"
    if not isinstance(unit, dict):
        return f"unit file {path} holds a {type(unit).__name__}, not an object"
    missing = [k for k in UNIT_KEYS if k not in unit]
    return f"unit file {path} lacks {missing}" if missing else None


def _match_fraction(run: RunDir, task: str, seed: int, match: str) -> float:
    path = run.unit_path(SUITE, task, match, seed)
    if not path.exists():
        raise RuntimeError(f"rate-matched methods need the {match!r} unit of seed {seed} first (not found at "
                           f"{path}); list {match!r} before them in --methods or pass --keep-fraction")
    return float(read_json(path)["kept_fraction"])


def check_methods(spec: TaskSpec, methods: list[str]) -> None:
    """ValueError for a method whose estimator is meaningful only on token sequences (``sequence_only``) on a task
    that has none (classification)."""
    wrong = [m for m in methods if spec.kind == "classification" and get_method(m).sequence_only]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: token-sequence estimators; task {spec.name!r} classifies vectors")


def run_comparison(spec: TaskSpec, methods: list[str], seeds: list[int], results: str | Path = "results",
                   keep_fraction: float | None = None, match: str = "lai", on_empty: str = "best",
                   progress: bool = True, log=print, timing_steps: int = 0, refresh_every: int | None = 1
                   ) -> tuple[RunDir, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run (or resume) every unit, then (``timing_steps`` > 0) the interleaved timing. Returns the run folder,
    the table rows and the timing rows (both also written there)."""
    check_methods(spec, methods)
    config = run_config(spec, keep_fraction, match, on_empty, refresh_every)
    run = RunDir(Path(results) / SUITE / f"{spec.name}-{spec.protocol}-{config_id(config)}")
    run.init(config)
    run.add_provenance(provenance())
    rate_methods = [m for m in map(get_method, methods) if m.rate_matched]
    if keep_fraction is None:  # every matched method runs first (default match, and <name>-as-<match> targets)
        targets = dict.fromkeys(m.match or match for m in rate_methods)
        methods = [*(t for t in targets if t not in methods), *methods]
    order = sorted(methods, key=lambda m: get_method(m).rate_matched)  # matched method first
    for seed in seeds:
        prep = None
        for name in order:
            if run.has_unit(SUITE, spec.name, name, seed):
                problem = unit_problem(run.unit_path(SUITE, spec.name, name, seed))
                if problem is None:
                    log(f"skip {spec.name} {name} seed{seed} (done)")
                    continue
                log(f"recompute {spec.name} {name} seed{seed}: {problem}")
            prep = prep or prepare(spec, seed)
            m = get_method(name)
            if m.rate_matched:
                m = m.with_fraction(keep_fraction if keep_fraction is not None
                                    else _match_fraction(run, spec.name, seed, m.match or match))
            summary, rows = train_unit(prep, m, seed, on_empty, pretrained_state(run, prep, seed), progress,
                                       refresh_every)
            atomic_write_csv(run.root / "steps" / name / f"seed{seed}.csv", rows, STEP_COLUMNS)
            run.write_unit(SUITE, spec.name, name, summary, seed)
            log(f"{spec.name} {name} seed{seed}: {summary['metric']} {summary['final']:.4f} "
                f"kept {summary['kept_fraction']:.3f} ({summary['wall_s']:.1f} s)")
    table = summarize(run, spec.name, methods, seeds)
    atomic_write_csv(run.root / "table.csv", table, TABLE_COLUMNS)
    atomic_write_text(run.root / "table.md", format_table(table))
    timing: list[dict[str, Any]] = []
    if timing_steps > 0:
        matched = [r["kept_fraction"] for r in table if r["method"] == match]
        timing = time_methods(prepare(spec, seeds[0]), methods, seeds[0], timing_steps,
                              keep_fraction=keep_fraction or (matched[0] if matched else 0.5),
                              refresh_every=refresh_every)
        atomic_write_csv(run.root / "timing.csv", timing, TIMING_COLUMNS)
        atomic_write_text(run.root / "timing.md", format_timing(timing))
    return run, table, timing


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, std


def summarize(run: RunDir, task: str, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per method over the given seeds (from the units on disk)."""
    units = {(m, s): read_json(run.unit_path(SUITE, task, m, s)) for m in methods for s in seeds
             if run.has_unit(SUITE, task, m, s) and unit_problem(run.unit_path(SUITE, task, m, s)) is None}
    vanilla = {s: units[("vanilla", s)]["step_s_median"] for s in seeds if ("vanilla", s) in units}
    table = []
    for m in methods:
        us = [units[(m, s)] for s in seeds if (m, s) in units]
        if not us:
            continue
        mean, std = _mean_std([u["final"] for u in us])
        def avg(key: str) -> float | None:
            vals = [u[key] for u in us if u[key] is not None]
            return sum(vals) / len(vals) if vals else None
        rel = [u["step_s_median"] / vanilla[u["seed"]] for u in us if u["seed"] in vanilla]
        best = [u["best_val_test"] for u in us if u.get("best_val_test") is not None]  # older units lack it
        best_mean, best_std = _mean_std(best) if best else (None, None)
        held = [u["plateau_held"] for u in us if "plateau_held" in u]
        gains = [u["plateau_gain"] for u in us if u.get("plateau_gain") is not None]
        taus = [u["drop_rate_tau"] for u in us if u.get("drop_rate_tau") is not None]
        table.append({"method": m, "metric": us[0]["metric"], "mean": mean, "std": std, "n_seeds": len(us),
                      "values": [u["final"] for u in us], "kept_fraction": avg("kept_fraction"),
                      "noise_recall": avg("noise_recall"), "drop_precision": avg("drop_precision"),
                      "step_s": avg("step_s_median"), "time_vs_vanilla": sum(rel) / len(rel) if rel else None,
                      "fallbacks": sum(u["fallbacks"] for u in us), "best_val_mean": best_mean,
                      "best_val_std": best_std, "plateau_held": f"{sum(held)}/{len(held)}" if held else None,
                      "plateau_gain": max(gains) if gains else None,
                      "drop_rate_tau": sum(taus) / len(taus) if taus else None})
    return table


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_table(table: list[dict[str, Any]]) -> str:
    """Markdown table of the comparison."""
    if not table:
        return "(no finished units)\n"
    metric = table[0]["metric"]
    pct = metric == "accuracy"
    head = (f"| method | test {metric} (mean ± std) | seeds | kept | noise dropped (recall) | drops that were noisy "
            f"| step ms (runs) | vs vanilla (runs) | test {metric} at best-val epoch | plateau held |")
    lines = [head, "|" + "---|" * 10]
    scale = 100 if pct else 1
    for r in table:
        val = f"{r['mean'] * scale:.2f} ± {_fmt(r['std'] * scale if not math.isnan(r['std']) else None, 2)}"
        best = r.get("best_val_mean")
        best_val = "-" if best is None else (f"{best * scale:.2f} ± "
                                             f"{_fmt(r['best_val_std'] * scale if not math.isnan(r['best_val_std']) else None, 2)}"
                                             f"{' %' if pct else ''}")
        lines.append(f"| {r['method']} | {val}{' %' if pct else ''} | {r['n_seeds']} | {_fmt(r['kept_fraction'])} | "
                     f"{_fmt(r['noise_recall'])} | {_fmt(r['drop_precision'])} | {_fmt(r['step_s'] * 1e3, 2)} | "
                     f"{_fmt(r['time_vs_vanilla'], 2)}x | {best_val} | {_fmt(r.get('plateau_held'))} |")
    return "\n".join(lines) + "\n"


def plateau_line(run: RunDir, task: str, seeds: list[int], method: str = "vanilla") -> str:
    """One line saying whether ``method`` (vanilla) had plateaued by the rule of :func:`plateaued` on the clean
    validation curve, per seed: e.g. ``vanilla plateau (rule: best clean-val accuracy of the last 20 % of the
    epochs, >= 3, gains < 1 pp over the best before): seed 0 gain +0.40 pp over the last 6 of 30 epochs; rule
    held for 1/1 seeds``."""
    units = [read_json(run.unit_path(SUITE, task, method, s)) for s in seeds if run.has_unit(SUITE, task, method, s)]
    units = [u for u in units if "plateau_held" in u]
    if not units:
        return f"{method} plateau: no unit records it"
    acc = units[0]["metric"] == "accuracy"
    parts = []
    for u in units:
        g = u["plateau_gain"]
        n = len(u["val_curve"])
        if g is None:
            parts.append(f"seed {u['seed']} n/a (too few epochs: {n}, the rule needs more than {u['plateau_window']})")
            continue
        gain = f"{g * 100:+.2f} pp" if acc else f"{g:+.3f}"
        parts.append(f"seed {u['seed']} gain {gain} over the last {u['plateau_window']} of {n} epochs")
    held = sum(bool(u["plateau_held"]) for u in units)
    tol = f"{PLATEAU_TOL * 100:g} pp" if acc else f"{PLATEAU_TOL:g}"
    verdict = "rule held" if held == len(units) else "rule NOT met"
    return (f"{method} plateau (rule: the best clean-validation {units[0]['metric']} of the last "
            f"{PLATEAU_FRACTION:.0%} of the epochs, at least {PLATEAU_MIN_EPOCHS}, beats the best before them by "
            f"< {tol}): " + "; ".join(parts) + f" — {verdict} ({held}/{len(units)} seeds)")
