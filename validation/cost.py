"""Wall time and peak memory of the influence estimators, side by side with a forward pass and a training step.

``measure(fn, name)`` times ``fn`` (``time.perf_counter``, median over ``repeats`` calls after ``warmup``
calls) and then measures the peak extra memory of one more call:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory allocated
  before the call;
* CPU: the allocation events of ``torch.profiler`` (``profile_memory=True``). Every event carries the running
  total of bytes the profiler has seen allocated, so the peak extra memory is the largest running total minus
  the total just before the call's first event (0 if the call only frees). The measured call is the second
  of two profiled calls (``cpu_peak_bytes``). This is measured from the allocator, not estimated, but it sees tensor storage
  only (not Python objects or the allocator's caches), and the profiler slows the call, so the memory call is
  never one of the timed ones.

``estimator_costs`` measures the estimators and the baselines in one process on the same model and batches
and reports every ratio from those rows.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from influence.batch import Batch, LossFn, call_model, concat, output_tensor

from .estimators import ESTIMATORS

MB = float(1 << 20)
BASELINES = ("forward", "forward_backward", "train_step")
DEFAULT = ("forward", "train_step", "exact", "ghost", "lai", "lai-last", "tracin-last")  # baselines + estimators


@dataclass
class Measurement:
    """Median wall time (s) over ``times_s`` and peak extra memory (bytes) of one call; ``cpu_times_s`` are the
    process CPU times of the same calls (``time.process_time``: all threads, so with several threads it also
    counts their spin-waiting; with one thread it is robust to other processes sharing the machine)."""

    name: str
    median_s: float
    times_s: list[float]
    peak_bytes: int
    cpu_median_s: float = 0.0
    cpu_times_s: list[float] = field(default_factory=list)


def _on_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _sync() -> None:
    if _on_cuda():
        torch.cuda.synchronize()


def _walk(nodes: Iterable[Any]) -> Iterable[Any]:
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def cpu_peak_bytes(fn: Callable[[], Any], settle: bool = True) -> int:
    """Peak bytes of CPU tensor storage allocated by one call of ``fn`` beyond what was allocated before it.

    The profiler reports no event for freeing a block allocated while it was off, so state that a call
    replaces (a training step's ``.grad`` tensors) would look like pure growth; with ``settle`` a first
    profiled call (not measured) puts that state under the profiler's eyes and the second call is measured.
    The running total continues across profiling sessions, so the baseline is the total just before the
    measured call's first event."""
    from torch.profiler import ProfilerActivity, profile

    if settle:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            out = fn()
            del out
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = []
    for node in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            events.append((node.start_time_ns, int(fields.alloc_size), int(fields.total_allocated)))
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    baseline = events[0][2] - events[0][1]
    return max(0, max(total for _, _, total in events) - baseline)


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of CUDA memory allocated by one call of ``fn`` beyond what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return max(0, torch.cuda.max_memory_allocated() - before)


def peak_bytes(fn: Callable[[], Any], settle: bool = True) -> int:
    """Peak extra memory of one call of ``fn`` on the device in use (see the module docstring); on the CPU
    ``settle`` adds one unmeasured call first (see ``cpu_peak_bytes``)."""
    gc.collect()
    return cuda_peak_bytes(fn) if _on_cuda() else cpu_peak_bytes(fn, settle)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync()
    t, c = time.perf_counter() - t0, time.process_time() - c0
    del out
    return t, c


def measure(fn: Callable[[], Any], name: str, repeats: int = 5, warmup: int = 1, memory: bool = True) -> Measurement:
    """Median wall time of ``fn()`` over ``repeats`` calls (after ``warmup`` untimed calls) and the peak extra
    memory of one further call (``memory=False`` skips it and reports 0)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        t, c = _timed(fn)
        times.append(t)
        cpu.append(c)
    peak = peak_bytes(fn) if memory else 0
    return Measurement(name, statistics.median(times), times, peak, statistics.median(cpu), cpu)


def measure_many(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
                 memory: bool = True, settle: bool = True) -> dict[str, Measurement]:
    """``measure`` for several callables with their timed calls interleaved (round robin), so that a slow
    spell of a shared machine hits every callable alike and ratios between them stay meaningful.
    ``settle=False`` skips the unmeasured profiled call before the memory call (for callables that keep no
    state between calls)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = _timed(fn)
            times[name].append(t)
            cpu[name].append(c)
    return {name: Measurement(name, statistics.median(times[name]), times[name],
                              peak_bytes(fn, settle) if memory else 0,
                              statistics.median(cpu[name]), cpu[name]) for name, fn in fns.items()}


def _sgd_step(model: nn.Module, loss_fn: LossFn, batch: Batch, lr: float) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(output_tensor(call_model(model, batch[0])), batch[1]).mean().backward()
        opt.step()
    return step


def estimator_fns(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
                  extra: dict[str, Callable[[], Any]] | None = None) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables for every name ``estimator_costs`` knows. The training step runs on a deep copy
    of ``model``, which keeps training from call to call (its cost does not depend on the weights); the
    original model is never updated (``forward_backward`` clears the gradients it writes)."""
    both = (concat(train[0], ref[0]), concat(train[1], ref[1]))
    stepped = copy.deepcopy(model)

    def forward() -> Any:
        with torch.no_grad():
            return output_tensor(call_model(model, both[0]))

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(output_tensor(call_model(model, both[0])), both[1]).mean().backward()
        model.zero_grad(set_to_none=True)

    fns: dict[str, Callable[[], Any]] = {
        "forward": forward,
        "forward_backward": forward_backward,
        "train_step": _sgd_step(stepped, loss_fn, train, lr),
    }
    for name, est in ESTIMATORS.items():  # every estimator of validation.estimators; TracIn at the current weights
        fns[name] = lambda est=est: est(model, loss_fn, train, ref, lr).scores
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
                    estimators: Iterable[str] = DEFAULT, repeats: int = 5, warmup: int = 1,
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
