"""The measurements of one real-size row, run inside a guarded child process (``validation.bench.isolate``).

Each function takes the job dict the parent wrote and returns a JSON-able dict of measured numbers (seconds,
bytes); the ratios and targets are computed by the parent (``validation.bench.realsize_report``) from these.

* ``estimator_row``: one estimator on one workload. The process is warmed first: one call of the estimator on
  the workload's tiny version (a throwaway model: the once-per-process costs, such as torch's lazy imports of
  ``torch._dynamo`` on the first ``torch.func`` call, about 4 s, which are not the model's; its time is kept as
  ``process_warmup_s``), and one forward pass and forward+backward over train+ref. Then
  ``influence.verify.clear(model)`` and the estimator's FIRST call on the real model (its first influence call:
  verification included, on a fresh verdict cache), then ``repeats`` interleaved rounds of forward,
  forward+backward and the estimator (the STEADY call is the median), then the peak extra memory of one call of
  each (``validation.bench.measure.peak_bytes``: tensor storage via the profiler on the CPU).
* ``curated_row``: a curated LAI step (``Curator``: reference statistics kept for ``k`` steps, keep score >= 0)
  against a plain SGD step on the same batches, interleaved; the first curated step (session build and
  verification) is reported apart; the means over ``k`` further steps include exactly one refresh.
* ``dataset_row``: ``influence.score_dataset`` over ``n`` sequences (plus the ``Session`` build, the reference
  side) against forward+backward over the same batches.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from typing import Any, Callable

import torch

import influence
from influence.batch import Batch, call_model, concat, output_tensor, take
from influence.estimators import get_estimator
from validation.bench.estimator_cost import pass_calls
from validation.bench.measure import measure_many, peak_bytes
from validation.bench.realsize import RealWorkload, build_real, real_spec
from validation.options import torch_threads


def _workload(job: dict[str, Any]) -> RealWorkload:
    spec = real_spec(job["workload"], tiny=bool(job.get("tiny")), vocab=job.get("vocab"))
    spec = spec.with_overrides(**job.get("overrides", {}))
    return build_real(spec, seed=int(job.get("seed", 0)), device=job.get("device", "cpu"))


def _clock(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, after waiting for queued CUDA work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    t, c = time.perf_counter() - t0, time.process_time() - c0
    del out
    return t, c


def baselines(w: RealWorkload, batch: Batch) -> dict[str, Callable[[], Any]]:
    """``forward`` and ``forward_backward`` over ``batch`` (``estimator_cost.pass_calls``)."""
    return pass_calls(w.model, w.loss_fn, batch)


def _throwaway_call(job: dict[str, Any], name: str) -> None:
    """One call of estimator ``name`` on the tiny version of the job's workload (then dropped): the process's one-time
    costs, before the measured first call."""
    w = build_real(real_spec(job["workload"], tiny=True), seed=1, device=job.get("device", "cpu"))
    gen = torch.Generator().manual_seed(0)
    influence.estimate(name, w.model, w.loss_fn, w.make(2, gen), w.make(2, gen), w.spec.lr)


def estimator_row(job: dict[str, Any]) -> dict[str, Any]:
    """First call, steady call (median of ``repeats``), forward and forward+backward over train+ref (medians of the
    same interleaved rounds), and peak extra memory of each, for ``job["estimator"]`` on ``job["workload"]``."""
    with torch_threads(int(job.get("threads", 1))):
        w = _workload(job)
        gen = torch.Generator().manual_seed(1)
        train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
        both = (concat(train[0], ref[0]), concat(train[1], ref[1]))
        fns = baselines(w, both)
        name = get_estimator(job["estimator"]).name
        fns[name] = lambda: influence.estimate(name, w.model, w.loss_fn, train, ref, w.spec.lr).scores
        warm_s, warm_cpu_s = _clock(lambda: _throwaway_call(job, name))
        fns["forward"]()
        fns["forward_backward"]()
        influence.verify.clear(w.model)
        gc.collect()
        first_s, first_cpu_s = _clock(fns[name])
        got = measure_many(fns, int(job.get("repeats", 3)), warmup=0, memory=False)
        peaks = {k: peak_bytes(fn, settle=False) for k, fn in fns.items()}
    row: dict[str, Any] = {"meta": w.meta, "n_train": w.spec.n_score, "n_ref": w.spec.n_ref,
                           "first_s": first_s, "first_cpu_s": first_cpu_s, "process_warmup_s": warm_s,
                           "process_warmup_cpu_s": warm_cpu_s}
    for key, label in (("forward", "forward"), ("forward_backward", "forward_backward"), (name, "steady")):
        m = got[key]
        row.update({f"{label}_s": m.median_s, f"{label}_cpu_s": m.cpu_median_s, f"{label}_times_s": m.times_s,
                    f"{label}_cpu_times_s": m.cpu_times_s, f"{label}_peak_bytes": peaks[key]})
    return row


def _plain_step(model: torch.nn.Module, loss_fn: Any, opt: torch.optim.Optimizer) -> Callable[[Batch], None]:
    def step(batch: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(output_tensor(call_model(model, batch[0])), batch[1]).mean().backward()
        opt.step()
    return step


def curated_row(job: dict[str, Any]) -> dict[str, Any]:
    """A curated step (method ``job["method"]``, default ``lai``: keep score >= 0, statistics kept ``job["k"]``
    steps) against a plain SGD step, each on its own copy of the model, on the same ``k + 1`` batches in
    alternating order. Times in seconds (wall and process CPU)."""
    from influence.curation import Curator, ReferencePolicy

    k, method = int(job.get("k", 8)), job.get("method", "lai")
    with torch_threads(int(job.get("threads", 1))):
        w = _workload(job)
        gen = torch.Generator().manual_seed(1)
        ref = w.make(w.spec.n_ref, gen)
        batches = [w.make(w.spec.n_score, gen) for _ in range(k + 1)]
        plain_model, cur_model = w.model, copy.deepcopy(w.model)
        plain = _plain_step(plain_model, w.loss_fn, torch.optim.SGD(plain_model.parameters(), lr=w.spec.lr))
        opt = torch.optim.SGD(cur_model.parameters(), lr=w.spec.lr)
        cur = Curator(w.loss_fn, method, reference=ReferencePolicy("fixed", ref), lr=w.spec.lr,
                      on_empty="keep_all", refresh_every=k)
        kept: list[float] = []

        def curated(batch: Batch) -> None:
            opt.zero_grad(set_to_none=True)
            kept.append(cur.step(cur_model, opt, batch).kept_fraction)

        plain_t: list[tuple[float, float]] = []
        cur_t: list[tuple[float, float]] = []
        for s, batch in enumerate(batches):  # alternate which goes first, so drifting load hits both alike
            order = [(plain_t, plain), (cur_t, curated)]
            for times, fn in (order if s % 2 == 0 else order[::-1]):
                times.append(_clock(lambda fn=fn: fn(batch)))
    steady_p, steady_c = plain_t[1:], cur_t[1:]
    return {"meta": w.meta, "n_train": w.spec.n_score, "n_ref": w.spec.n_ref, "k": k, "method": method,
            "steps": len(steady_c),
            "first_curated_s": cur_t[0][0], "first_curated_cpu_s": cur_t[0][1],
            "first_plain_s": plain_t[0][0], "first_plain_cpu_s": plain_t[0][1],
            "curated_s": statistics.fmean(t for t, _ in steady_c),
            "curated_cpu_s": statistics.fmean(c for _, c in steady_c),
            "plain_s": statistics.fmean(t for t, _ in steady_p),
            "plain_cpu_s": statistics.fmean(c for _, c in steady_p),
            "curated_median_s": statistics.median(t for t, _ in steady_c),
            "plain_median_s": statistics.median(t for t, _ in steady_p),
            "curated_times_s": [t for t, _ in cur_t], "plain_times_s": [t for t, _ in plain_t],
            "kept_fraction": statistics.fmean(kept[1:]) if len(kept) > 1 else kept[0]}


def dataset_row(job: dict[str, Any]) -> dict[str, Any]:
    """``influence.score_dataset`` over ``job["n"]`` sequences in batches of the workload's ``n_score`` with
    ``job["estimator"]`` (a ``Session`` on ``n_ref`` reference samples) against forward+backward over the same
    batches. Seconds (wall and process CPU) and samples per second."""
    n = int(job["n"])
    with torch_threads(int(job.get("threads", 1))):
        w = _workload(job)
        gen = torch.Generator().manual_seed(1)
        ref, data = w.make(w.spec.n_ref, gen), w.make(n, gen)
        bs = w.spec.n_score

        def fb_all() -> None:
            for start in range(0, n, bs):
                baselines(w, take(data, slice(start, start + bs)))["forward_backward"]()
        fb_s, fb_cpu_s = _clock(fb_all)
        opts = get_estimator(job["estimator"]).session_options()
        holder: dict[str, Any] = {}

        def build() -> None:
            holder["session"] = influence.Session(w.model, w.loss_fn, ref, lr=w.spec.lr, **opts)
        session_s, session_cpu_s = _clock(build)
        got: dict[str, Any] = {}

        def score() -> None:
            got["scores"] = influence.score_dataset(holder["session"], data, batch_size=bs, progress=False)
        score_s, score_cpu_s = _clock(score)
    if got["scores"].scores.shape[0] != n:
        raise RuntimeError(f"score_dataset returned {got['scores'].scores.shape[0]} scores for {n} samples")
    return {"meta": w.meta, "n": n, "batch_size": bs, "n_ref": w.spec.n_ref, "estimator": job["estimator"],
            "forward_backward_s": fb_s, "forward_backward_cpu_s": fb_cpu_s, "session_s": session_s,
            "session_cpu_s": session_cpu_s, "score_s": score_s, "score_cpu_s": score_cpu_s}


__all__ = ["estimator_row", "curated_row", "dataset_row", "baselines"]
