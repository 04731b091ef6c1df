"""Runs the suites into a run folder, unit by unit, skipping every unit already written (resume).

For each (model, seed) the bound and fidelity suites share one training run (training.py): at each scored
step the float32 weights are checkpointed, a float64 copy is scored, and one unit per suite is written. A
resumed run restarts training from the latest checkpoint at or before the first unfinished step (the batch
schedule is a function of (seed, step), so the continuation is the same run). The cost suite writes one unit
per (model, width, batch).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from validation.report.results import RunDir
from validation.settings.profiles import ModelSettings, model_settings
from validation.training.task import Task, build_task, cast_batch, scoring_copy, train

from .bound import bound_step
from .context import StepContext
from .cost import cost_point
from .fidelity import fidelity_step

TRAINING_SUITES = ("bound", "fidelity")


def _training_row(task: Task, step: int, model: torch.nn.Module) -> dict[str, Any]:
    """Reference loss and accuracy (classification: argmax; LM: next-token) of the model at ``step``."""
    with torch.no_grad():
        f = model(task.ref[0])
        loss = float(task.loss_fn(f, task.ref[1]).mean())
        acc = float((f.argmax(-1) == task.ref[1]).double().mean())
        probe_x, probe_y = task.scored_batch()
        probe_loss = task.loss_fn(model(probe_x), probe_y)
    noisy = task.is_noisy[task.probe]
    mean = lambda t: float(t.mean()) if t.numel() else None  # noqa: E731
    return {"model": task.name, "seed": task.seed, "step": step, "ref_loss": loss, "ref_accuracy": acc,
            "scored_loss_clean": mean(probe_loss[~noisy]), "scored_loss_noisy": mean(probe_loss[noisy])}


def bound_context(ctx: StepContext, settings: ModelSettings) -> StepContext:
    """``ctx`` itself, or (when the settings ask for it) a context on the first ``bound_n_score`` scored samples,
    the first ``bound_n_ref`` reference samples and the first ``bound_seq_len`` tokens of every sequence."""
    k, r, t = settings.bound_n_score, settings.bound_n_ref, settings.bound_seq_len
    if k is None and r is None and t is None:
        return ctx

    def cut(batch, n):
        x, y = batch[0][:n], batch[1][:n]
        if t is not None and x.dim() == 2 and not x.is_floating_point():
            x, y = x[:, :t], y[:, :t]
        return x, y

    k = ctx.n if k is None else min(k, ctx.n)
    return StepContext(ctx.model_name, ctx.seed, ctx.step, ctx.model, ctx.loss_fn, cut(ctx.train, k),
                       cut(ctx.ref, r if r is not None else len(ctx.ref[1])), ctx.lr, ctx.ids[:k],
                       ctx.is_noisy[:k], ctx.checkpoints)


def run_training_suites(rd: RunDir, name: str, settings: ModelSettings, seed: int, suites: Iterable[str],
                        device: str = "cpu", progress: bool = True, theory: Any = None,
                        task: Task | None = None, estimators: Sequence[str] | None = None) -> dict[str, int]:
    """Bound and/or fidelity units of one (model, seed). Returns {suite: units written now}. ``estimators``: what
    the fidelity suite scores against Exact (default: ``context.fidelity_estimators``'s)."""
    suites = [s for s in TRAINING_SUITES if s in set(suites)]
    steps = settings.score_steps()
    todo = {s: [u for u in suites if not rd.has_unit(u, name, f"step{s}", seed)] for s in steps}
    written = {u: 0 for u in suites}
    needed = [s for s in steps if todo[s]]
    if not needed:
        return written
    start = 0  # resume from the last checkpoint before the first unfinished step with all earlier ones present
    for s in steps:
        if s > needed[0] or not rd.checkpoint_path(name, seed, s).exists():
            break
        start = s
    task = task if task is not None else build_task(name, settings, seed, device)
    state = rd.load_checkpoint(name, seed, start) if start else None

    def hook(step: int, model: torch.nn.Module) -> None:
        if not rd.checkpoint_path(name, seed, step).exists():
            rd.save_checkpoint(name, seed, step, model.state_dict())
        if not todo.get(step):
            return
        m64 = scoring_copy(model, torch.float64)
        ckpts = [(rd.load_checkpoint(name, seed, s), settings.lr) for s in steps if s <= step]
        ctx = StepContext(name, seed, step, m64, task.loss_fn, cast_batch(task.scored_batch(), torch.float64),
                          cast_batch(task.ref, torch.float64), settings.lr, task.probe, task.is_noisy[task.probe],
                          ckpts, selected=estimators)
        if settings.fit_probe > 0 and settings.fit_ref_chunks > 0:
            ctx.fit_probe = cast_batch(fit_probe_batch(task, step, settings.fit_probe), torch.float64)
            ctx.fit_ref_chunks = settings.fit_ref_chunks
        training_row = _training_row(task, step, model)
        for suite in todo[step]:
            if suite == "bound":
                tables = bound_step(bound_context(ctx, settings), theory, data_bound=settings.bound_data_bound)
            else:
                tables = fidelity_step(ctx, settings.topk_fraction)
            tables["training"] = [training_row]
            rd.write_unit(suite, name, f"step{step}", {"suite": suite, "model": name, "seed": seed, "step": step,
                                                       "noise": _noise_summary(task), "tables": tables}, seed)
            written[suite] += 1

    stops = [s for s in steps if start <= s <= needed[-1]]
    train(task, hook, stops, start_step=start, state=state, progress=progress,
          desc=f"{name} seed {seed} ({'+'.join(suites)})")
    return written


def fit_probe_batch(task: Task, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training samples outside the scored batch, drawn afresh for every (seed, step) from their own
    seeded stream (the probe on which ``lai-fit`` fits its layer weights; noisy labels included)."""
    outside = torch.ones(len(task.x_train), dtype=torch.bool)
    outside[task.probe.cpu()] = False
    pool = outside.nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(7_919 * (task.seed + 1) + step)
    idx = pool[torch.randperm(len(pool), generator=gen)[:size]].to(task.x_train.device)
    return task.x_train[idx], task.y_train[idx]


def _noise_summary(task: Task) -> dict[str, Any]:
    keep = ("kind", "mode", "rate", "seed", "noise_rate", "sequence_noise_rate", "transition")
    return {k: v for k, v in task.noise.items() if k in keep}


def run_cost(rd: RunDir, name: str, settings: ModelSettings, seed: int, cost_cfg: dict[str, Any],
             device: str = "cpu", progress: bool = True) -> int:
    """Cost units of one model over its widths x the profile's batch sizes. Returns units written now."""
    points = [(w, b) for w in settings.cost_widths for b in cost_cfg["batch_sizes"]
              if not rd.has_unit("cost", name, f"w{w}_b{b}")]
    if not points:
        return 0
    task = build_task(name, settings, seed, device)
    for w, b in tqdm(points, desc=f"cost {name}", disable=not progress, leave=False):
        rows = cost_point(task, w, b, repeats=int(cost_cfg.get("repeats", 3)), warmup=int(cost_cfg.get("warmup", 1)))
        rd.write_unit("cost", name, f"w{w}_b{b}", {"suite": "cost", "model": name, "seed": seed, "width": w,
                                                  "batch": b, "tables": {"cost": rows}})
    return len(points)


def run_suites(rd: RunDir, config: dict[str, Any], suites: Iterable[str], models: Iterable[str],
               progress: bool = True, theory: Any = None) -> dict[str, int]:
    """Every requested suite for every requested model of ``config`` (a profile dict plus ``device``, and
    ``estimators``: the fidelity suite's selection, when ``lai run --estimators`` gave one)."""
    suites, models = list(suites), list(models)
    device = config.get("device", "cpu")
    seeds = list(config["seeds"])
    written: dict[str, int] = {}
    for name in models:
        settings = model_settings(config, name)
        for seed in seeds:
            if any(s in TRAINING_SUITES for s in suites):
                for suite, k in run_training_suites(rd, name, settings, seed, suites, device, progress,
                                                    theory, estimators=config.get("estimators")).items():
                    written[suite] = written.get(suite, 0) + k
        if "cost" in suites:
            written["cost"] = written.get("cost", 0) + run_cost(rd, name, settings, seeds[0], config["cost"],
                                                                device, progress)
    return written


__all__ = ["run_suites", "run_training_suites", "run_cost", "TRAINING_SUITES"]
