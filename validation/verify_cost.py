"""Cost of the capture's self-verification (``influence.verify``) as a fraction of a Ghost call.

    python -m validation.verify_cost                 # MLP 40-512-512-10 and CausalTransformer(), 7 repeats
    python -m validation.verify_cost --tiny --repeats 3
    python -m validation.verify_cost --clock cpu     # process CPU time (a machine shared with other jobs)

Per workload (``validation.bench_workloads``: MLP 256 train / 128 reference samples, transformer 32 / 16
sequences of 128 tokens), interleaved repeats of three ``influence.ghost`` calls on the same batches:

* ``ghost``: the normal call with the verdict cached (what every call after the first costs, sum check included);
* ``no sum check``: the same with the per-call sum check switched off (``influence.verify.SUM_CHECK``);
* ``first call``: the verdict cache cleared first, so the call also runs the per-sample probe (once per model
  and input signature).

It prints the median times (wall or, with ``--clock cpu``, process CPU; ``validation.measure.measure_many``) side
by side and the ratios: the per-call overhead (ghost / no sum check - 1) and the one-off probe (first call /
ghost - 1).
"""

from __future__ import annotations

import argparse

import torch

import influence
from influence import verify

from .bench_report import CLOCKS
from .bench_workloads import build_workload
from .measure import measure_many


def measure(name: str, repeats: int, tiny: bool, clock: str = "wall") -> dict[str, float]:
    w = build_workload(name, tiny=tiny)
    gen = torch.Generator().manual_seed(0)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)

    def call() -> None:
        influence.ghost(w.model, w.loss_fn, train, ref, w.spec.lr)

    def unchecked() -> None:
        verify.SUM_CHECK = False
        try:
            call()
        finally:
            verify.SUM_CHECK = True

    def first() -> None:
        verify.clear(w.model)
        call()

    got = measure_many({"ghost": call, "no sum check": unchecked, "first call": first}, repeats, warmup=1,
                       memory=False)  # the warm-up also computes the verdict
    return {k: m.median_s if clock == "wall" else m.cpu_median_s for k, m in got.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="small models and batches (seconds)")
    ap.add_argument("--workloads", default="mlp,transformer")
    ap.add_argument("--clock", choices=CLOCKS, default="wall",
                    help="wall time, or process CPU time (robust on a shared machine with --threads 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    print(f"{args.clock} time, medians of {args.repeats} interleaved repeats, {args.threads} thread(s)")
    print(f"{'workload':<12} {'ghost (s)':>10} {'no sum check (s)':>17} {'first call (s)':>15} "
          f"{'sum check':>10} {'probe (once)':>13}")
    for name in args.workloads.split(","):
        m = measure(name, args.repeats, args.tiny, args.clock)
        m["sum check overhead"] = m["ghost"] / m["no sum check"] - 1
        m["probe overhead"] = m["first call"] / m["ghost"] - 1
        out[name] = m
        print(f"{name:<12} {m['ghost']:>10.4f} {m['no sum check']:>17.4f} {m['first call']:>15.4f} "
              f"{m['sum check overhead']:>+10.1%} {m['probe overhead']:>+13.1%}")
    return out


if __name__ == "__main__":
    main()
