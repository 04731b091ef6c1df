"""Wall time and peak memory of the influence estimators, side by side with a forward pass and a training step.

Each callable is measured by ``validation.bench.measure`` (interleaved median times, peak extra memory through
public APIs: see there).

``estimator_costs`` measures the estimators and the baselines in one process on the same model and batches
and reports every ratio from those rows.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import nn

import influence
from influence.batch import Batch, LossFn, call_model, concat, output_tensor
from influence.estimators import estimator_names
from validation.bench.measure import Measurement, measure_many
from validation.settings import estimators as chosen

MB = float(1 << 20)
BASELINES = ("forward", "forward_backward", "train_step")


def default_names() -> tuple[str, ...]:
    """The baselines ``forward`` and ``train_step`` and the timed registered estimators
    (``validation.settings.estimators.timed``)."""
    return ("forward", "train_step", *chosen.timed())


def _sgd_step(model: nn.Module, loss_fn: LossFn, batch: Batch, lr: float) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(output_tensor(call_model(model, batch[0])), batch[1]).mean().backward()
        opt.step()
    return step


def pass_calls(model: nn.Module, loss_fn: LossFn, batch: Batch) -> dict[str, Callable[[], Any]]:
    """``forward`` (no graph) and ``forward_backward`` (mean loss; gradients cleared before and after) over
    ``batch``: the baselines every cost ratio divides by."""
    def forward() -> Any:
        with torch.no_grad():
            return output_tensor(call_model(model, batch[0]))

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(output_tensor(call_model(model, batch[0])), batch[1]).mean().backward()
        model.zero_grad(set_to_none=True)

    return {"forward": forward, "forward_backward": forward_backward}


def estimator_fns(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
                  extra: dict[str, Callable[[], Any]] | None = None) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables for every name ``estimator_costs`` knows. The training step runs on a deep copy
    of ``model``, which keeps training from call to call (its cost does not depend on the weights); the
    original model is never updated (``forward_backward`` clears the gradients it writes)."""
    both = (concat(train[0], ref[0]), concat(train[1], ref[1]))
    stepped = copy.deepcopy(model)
    fns: dict[str, Callable[[], Any]] = {**pass_calls(model, loss_fn, both),
                                         "train_step": _sgd_step(stepped, loss_fn, train, lr)}
    for name in estimator_names():  # every registered estimator (influence.estimate); TracIn at the current weights
        fns[name] = lambda name=name: influence.estimate(name, model, loss_fn, train, ref, lr).scores
    fns.update(extra or {})
    return fns


def rows_from(measurements: dict[str, Measurement]) -> list[dict[str, Any]]:
    """One row per measurement with its ratios to the baselines measured alongside (None where absent)."""
    base = {b: measurements[b] for b in BASELINES if b in measurements}
    ghost_peak = measurements["ghost"].peak_bytes if "ghost" in measurements else None
    rows = []
    for name, m in measurements.items():
        row: dict[str, Any] = {"estimator": name, "median_s": m.median_s, "times_s": list(m.times_s),
                               "cpu_median_s": m.cpu_median_s, "cpu_times_s": list(m.cpu_times_s),
                               "peak_mb": m.peak_bytes / MB, "peak_bytes": m.peak_bytes}
        for b in BASELINES:
            row[f"ratio_to_{b}"] = m.median_s / base[b].median_s if b in base else None
            row[f"cpu_ratio_to_{b}"] = (m.cpu_median_s / base[b].cpu_median_s
                                        if b in base and base[b].cpu_median_s > 0 else None)
        row["ratio_time_to_train_step"] = row["ratio_to_train_step"]  # the name used in the contract
        row["peak_ratio_to_ghost"] = (m.peak_bytes / ghost_peak) if ghost_peak else None
        rows.append(row)
    return rows


def estimator_costs(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
                    estimators: Iterable[str] | None = None, repeats: int = 5, warmup: int = 1,
                    memory: bool = True, extra: dict[str, Callable[[], Any]] | None = None,
                    measurements: dict[str, Measurement] | None = None) -> list[dict[str, Any]]:
    """Time and peak memory of each estimator and baseline on one model and batch, in one process.

    Rows: ``{"estimator", "median_s", "times_s", "peak_mb", "peak_bytes", "ratio_to_forward",
    "ratio_to_forward_backward", "ratio_to_train_step", "ratio_time_to_train_step" (same as
    ratio_to_train_step), "peak_ratio_to_ghost", "cpu_median_s", "cpu_times_s", "cpu_ratio_to_<baseline>"}``
    (wall-clock ratios; the ``cpu_`` ones use process CPU time, see ``Measurement``). Baselines: ``forward`` = one forward over train+ref without
    grad; ``forward_backward`` = forward + backward of the mean loss over train+ref; ``train_step`` = forward,
    backward and an SGD step on the train batch, on a copy of ``model``. The baselines are always measured
    (the ratios need them) and listed first. Timed calls are interleaved across the rows (``measure_many``).
    ``extra`` adds named callables (e.g. curated training steps);
    ``measurements``, when given, receives the raw ``Measurement`` objects.
    """
    was_training = model.training
    model.eval()
    try:
        fns = estimator_fns(model, loss_fn, train, ref, lr, extra)
        estimators = default_names() if estimators is None else estimators
        wanted = list(BASELINES) + [e for e in estimators if e not in BASELINES]
        unknown = [e for e in wanted if e not in fns]
        if unknown:
            raise ValueError(f"unknown estimators {unknown}; choose from {sorted(fns)}")
        got = measure_many({name: fns[name] for name in wanted}, repeats, warmup, memory)
    finally:
        model.train(was_training)
    if measurements is not None:
        measurements.update(got)
    return rows_from(got)
