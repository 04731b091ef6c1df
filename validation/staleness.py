"""How stale may the reference statistics be? Ranking fidelity of scores computed against reference statistics
refreshed every k steps, against fresh statistics, along a training run.

    python -m validation.staleness                       # MNIST-1D MLP and the transformer, k = 1, 2, 4, 8, 16
    python -m validation.staleness --models mlp --ks 1,4,16 --steps 64

For each model (the quick validation profile's task) and estimator, the model is trained with SGD; at every step
t >= warmup the current batch is scored (a) against reference statistics computed at step t (fresh) and (b) for
each k against statistics computed at the last step t0 <= t with (t0 - warmup) % k == 0: curated training's
cadence (``influence.curation.KeptSession``, an ``influence.Session`` built at step warmup with ``refresh_every=k``). Printed per k: mean Spearman rho(stale, fresh) over the scored steps with a 95 % t
interval over steps, and the fraction of samples whose keep decision (score >= 0) changes. k = 1 is fresh (rho = 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

import influence
from influence.atomic import atomic_write_json
from influence.curation import KeptSession
from influence.curation.signals import keeps_session
from influence.estimators import estimator_names
from validation.options import add_common, info, make_parser, progress_enabled, split_list, torch_threads


def staleness_curve(task: Any, estimator: str, ks: Sequence[int], steps: int, warmup: int,
                    progress: bool = False) -> dict[int, dict[str, float]]:
    """{k: {"rho": mean Spearman, "lo", "hi": 95 % t interval over steps, "flips": mean fraction of keep flips}}."""
    import copy

    from validation.training.task import BatchSchedule, sgd_step
    model = copy.deepcopy(task.model)
    opts = {"estimator": estimator, "lr": task.lr, "fallback": "exact"}
    kept = {k: KeptSession(refresh_every=k) for k in ks}
    schedule = BatchSchedule(len(task.x_train), task.settings.batch_size, task.seed)
    rhos: dict[int, list[float]] = {k: [] for k in ks}
    flips: dict[int, list[float]] = {k: [] for k in ks}
    for step in range(warmup + steps):
        idx = schedule.indices(step)
        batch = (task.x_train[idx], task.y_train[idx])
        if step >= warmup:
            fresh = influence.Session(model, task.loss_fn, task.ref, **opts).score(batch).scores
            for k, s in kept.items():  # built at step warmup, refreshed by the session every k scored steps
                stale = s.get(model, task.loss_fn, task.ref, estimator, task.lr, fallback="exact").score(batch).scores
                rhos[k].append(float(stats.spearmanr(stale.double().numpy(), fresh.double().numpy()).statistic))
                flips[k].append(float(((stale >= 0) != (fresh >= 0)).float().mean()))
        sgd_step(model, task.loss_fn, batch, task.lr)
    out = {}
    for k in ks:
        r = np.array(rhos[k])
        half = stats.t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
        out[k] = {"rho": float(r.mean()), "lo": float(r.mean() - half), "hi": float(r.mean() + half),
                  "flips": float(np.mean(flips[k])), "steps": len(r)}
    return out


def build_parser(prog: str):
    p = make_parser(prog, __doc__)
    keeps = [n for n in estimator_names() if keeps_session(n)]  # estimators whose statistics a session keeps
    p.add_argument("--models", type=lambda t: split_list(t, ("mlp", "cnn1d", "cnn2d", "transformer"), "model"),
                   default="mlp,transformer", help="comma-separated validation models")
    p.add_argument("--estimators", type=lambda t: split_list(t, tuple(keeps), "estimator"), default="lai,ghost",
                   help=f"comma-separated, from {', '.join(keeps)}")
    p.add_argument("--ks", type=lambda t: [int(v) for v in split_list(t)], default="1,2,4,8,16",
                   help="refresh intervals k")
    p.add_argument("--steps", type=int, default=48, help="scored steps per run")
    p.add_argument("--warmup", type=int, default=100, help="SGD steps before scoring starts")
    add_common(p, out=(None, "write staleness.json into this folder"), seeds=("0", "seeds (one run each)"))
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m validation.staleness") -> int:
    args = build_parser(prog).parse_args(argv)
    from validation.settings.profiles import get_profile, model_settings
    from validation.training.task import build_task
    results: dict[str, Any] = {}
    with torch_threads(args.threads):
        profile = get_profile("quick")
        for name in args.models:
            for est in args.estimators:
                rows = []
                for seed in args.seeds:
                    task = build_task(name, model_settings(profile, name), seed)
                    rows.append(staleness_curve(task, est, args.ks, args.steps, args.warmup,
                                                progress_enabled(args)))
                merged = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in rows[0][k]} for k in args.ks}
                results[f"{name}/{est}"] = merged
                for k, v in merged.items():
                    info(args, f"{name:12s} {est:6s} k={k:<3d} Spearman(stale, fresh) {v['rho']:.3f} "
                               f"[{v['lo']:.3f}, {v['hi']:.3f}]  keep decisions changed {v['flips']:.1%}")
    if args.out:
        from pathlib import Path
        atomic_write_json(Path(args.out) / "staleness.json", {"ks": args.ks, "steps": args.steps,
                                                              "warmup": args.warmup, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
