"""Cost suite: wall time and peak memory of each estimator next to a plain training step, over widths and batch sizes.

A thin sweep over ``validation.bench.estimator_cost.estimator_costs`` (which measures every estimator and the
baselines — forward, forward+backward, SGD training step — side by side in this process, on the same model and batches).
One unit per (model, width, batch): the model at that width (seeded initialisation, float32), the first
``batch`` training samples of the task (noisy labels included) and the task's reference batch. Adds
``peak_ratio_to_train_step`` = peak bytes / the training step's peak bytes.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from validation.settings import estimators as chosen
from validation.settings.profiles import with_width
from validation.training.models import build_model
from validation.training.task import Task


def cost_point(task: Task, width: int, batch: int, repeats: int = 3, warmup: int = 1,
               estimators: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the ``cost`` table for ``task``'s architecture at ``width`` on a train batch of ``batch``.
    ``estimators``: default ``validation.settings.estimators.timed`` (with the token-sequence-only ones on token
    ids)."""
    from validation.bench import estimator_cost as vcost  # imported when the suite runs

    s = task.settings
    if batch > len(task.x_train):
        raise ValueError(f"batch {batch} > {len(task.x_train)} training samples")
    device = task.x_train.device
    torch.manual_seed(task.seed)
    model = build_model(s.model, **with_width(s.model_kw, s.width_key, width)).eval().to(device)
    train = (task.x_train[:batch], task.y_train[:batch])
    tokens = task.x_train.dim() == 2 and not task.x_train.is_floating_point()
    names = list(estimators) if estimators is not None else chosen.timed(sequence=tokens)
    rows = vcost.estimator_costs(model, task.loss_fn, train, task.ref, task.lr, estimators=names,
                                 repeats=repeats, warmup=warmup)
    step_peak = next(r["peak_bytes"] for r in rows if r["estimator"] == "train_step")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = []
    for r in rows:
        out.append({"model": task.name, "seed": task.seed, "width": width, "batch": batch, "n_ref": len(task.ref[1]),
                    "n_params": n_params, **{k: r.get(k) for k in ("estimator", "median_s", "peak_mb",
                                                                   "ratio_to_forward", "ratio_to_forward_backward",
                                                                   "ratio_to_train_step", "times_s")},
                    "peak_ratio_to_train_step": r["peak_bytes"] / step_peak if step_peak else None})
    return out


__all__ = ["cost_point"]
