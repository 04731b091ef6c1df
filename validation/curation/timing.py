"""Time per training step of each method relative to vanilla, measured interleaved.

Every method gets its own copy of the task's model (same initialisation) and optimizer; for each of
``steps`` batches of the task, every method runs one curated step, in an order rotated from batch to batch,
so load from other processes on a shared machine hits all methods alike. Reported: median over steps of
the step time (``score_s + update_s`` of ``curation_step``), and of its two parts; rate-based methods keep
``keep_fraction`` of each batch. A method written ``name@k`` (e.g. ``lai@8``) keeps its reference statistics for
k curated steps (``Curator(refresh_every=k)``) instead of ``refresh_every``, so one call can time several k side
by side.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from influence.curation.methods import get_method
from influence.curation.step import Curator

from .tasks import Prepared

TIMING_COLUMNS = ["method", "steps", "step_ms", "score_ms", "update_ms", "time_vs_vanilla"]


def time_methods(prep: Prepared, methods: list[str], seed: int = 0, steps: int = 30, warmup: int = 3,
                 keep_fraction: float = 0.5, refresh_every: int | None = 1) -> list[dict[str, Any]]:
    """Interleaved per-step timing of ``methods`` (``vanilla`` is added when missing, as the baseline)."""
    spec = prep.spec
    names = methods if "vanilla" in methods else ["vanilla", *methods]
    runs = {}
    for name in names:
        base_name, _, k = name.partition("@")
        m = get_method(base_name)
        m = m.with_fraction(keep_fraction) if m.needs_fraction and m.keep_fraction is None else m
        model = prep.make_model()
        cur = Curator(prep.loss_fn, m, reference=prep.reference(seed), on_empty="best", seed=seed,
                      refresh_every=int(k) if k else refresh_every)
        runs[name] = (model, prep.optimizer(model), cur)
    x, y = prep.train
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    n_batches = max(1, len(y) // spec.batch_size)
    for s in range(warmup + steps):
        start = (s % n_batches) * spec.batch_size
        idx = perm[start:start + spec.batch_size]
        for j in range(len(names)):
            name = names[(s + j) % len(names)]
            model, opt, cur = runs[name]
            opt.zero_grad(set_to_none=True)
            info = cur.step(model, opt, (x[idx], y[idx]), is_noisy=prep.is_noisy[idx])
            if s >= warmup:
                times[name].append((info.score_s, info.update_s))
    base = statistics.median(a + b for a, b in times["vanilla"])
    rows = []
    for name in names:
        total = statistics.median(a + b for a, b in times[name])
        rows.append({"method": name, "steps": steps, "step_ms": 1e3 * total,
                     "score_ms": 1e3 * statistics.median(a for a, _ in times[name]),
                     "update_ms": 1e3 * statistics.median(b for _, b in times[name]),
                     "time_vs_vanilla": total / base})
    return rows


def format_timing(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | step ms (median) | scoring ms | update ms | time vs vanilla |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['step_ms']:.2f} | {r['score_ms']:.2f} | {r['update_ms']:.2f} | "
                     f"{r['time_vs_vanilla']:.2f}x |")
    return "\n".join(lines) + "\n"
