"""Measuring one callable: median wall and CPU time over interleaved repeats, and peak extra memory.

Time: ``time.perf_counter`` (wall) and ``time.process_time`` (CPU, all threads) around each call, after
``warmup`` untimed calls; several callables are timed round robin (``measure_many``) so a slow spell of a
shared machine hits them alike and their ratios stay meaningful. Medians are reported.

Peak extra memory of one further call, through public APIs only:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory allocated
  before the call;
* CPU: ``torch.profiler.profile(profile_memory=True)`` and its documented ``export_chrome_trace``: every
  ``[memory]`` event of the trace carries the allocator's running ``Total Allocated``, so the peak extra
  memory is the largest running total minus the total just before the call's first event (0 if the call only
  frees). It counts tensor storage (not Python objects or allocator caches). The profiler slows the call, so
  the memory call is never a timed one. The profiler's own start/stop trace lines and its notice about
  blocks allocated before profiling (which ``settle`` accounts for) are kept off stderr; anything else
  written to stderr meanwhile (real warnings) is passed through.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

#: stderr lines of the CPU profiler that carry no information for a memory measurement
PROFILER_NOISE = ("USDT:", "Memory block of unknown size was allocated before the profiling started")


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


@contextlib.contextmanager
def filtered_stderr(noise: tuple[str, ...] = PROFILER_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes alike) for the block, then write back every line that
    does not contain one of ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(n in ln for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _memory_events(prof: Any) -> list[tuple[float, int, int]]:
    """(time, bytes, running total allocated) of the CPU ``[memory]`` events of a finished profile."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    out = []
    for e in events:
        args = e.get("args", {})
        if e.get("name") == "[memory]" and args.get("Device Type", 0) == 0 and "Total Allocated" in args:
            out.append((float(e["ts"]), int(args["Bytes"]), int(args["Total Allocated"])))
    return sorted(out)


def cpu_peak_bytes(fn: Callable[[], Any], settle: bool = True) -> int:
    """Peak bytes of CPU tensor storage allocated by one call of ``fn`` beyond what was allocated before it.

    The profiler reports no event for freeing a block allocated while it was off, so state that a call
    replaces (a training step's ``.grad`` tensors) would look like pure growth; with ``settle`` a first
    profiled call (not measured) puts that state under the profiler's eyes and the second call is measured."""
    from torch.profiler import ProfilerActivity, profile

    with filtered_stderr():
        if settle:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
                out = fn()
                del out
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out
    events = _memory_events(prof)
    if not events:
        return 0
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


def measure_many(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
                 memory: bool = True, settle: bool = True) -> dict[str, Measurement]:
    """Median times of several callables with their timed calls interleaved (round robin), then the peak extra
    memory of one further call of each (``memory=False``: reported as 0). ``settle=False`` skips the
    unmeasured profiled call before the memory call (for callables that keep no state between calls)."""
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


def measure(fn: Callable[[], Any], name: str, repeats: int = 5, warmup: int = 1, memory: bool = True) -> Measurement:
    """``measure_many`` for one callable."""
    return measure_many({name: fn}, repeats, warmup, memory)[name]


__all__ = ["Measurement", "measure", "measure_many", "peak_bytes", "cpu_peak_bytes", "cuda_peak_bytes",
           "filtered_stderr", "PROFILER_NOISE"]
