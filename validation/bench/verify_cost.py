"""Cost of the capture's self-verification (``influence.verify``) as a fraction of a Ghost call, and its parts.

    python -m validation.bench.verify_cost                 # MLP 40-512-512-10 and CausalTransformer(), 7 repeats
    python -m validation.bench.verify_cost --tiny --repeats 3
    python -m validation.bench.verify_cost --clock cpu     # process CPU time (a machine shared with other jobs)
    python -m validation.bench.verify_cost --rounding      # the sum check's rounding against its tolerance

Per workload (``validation.bench.workloads``: MLP 256 train / 128 reference samples, transformer 32 / 16
sequences of 128 tokens), interleaved repeats (``validation.bench.measure.measure_many``) of

* ``ghost``: the normal ``influence.ghost`` call with the verdict cached (what every call after the first costs,
  its default per-call check ``verify="paths"`` included: the graph check of ``influence.paths`` on both captures);
* ``ghost every`` / ``ghost reference``: the same call with ``verify="every"`` (the numeric sum check on both
  captures) and ``verify="reference"`` (on the reference capture only);
* ``no sum check``: the same with every per-call check switched off (``influence.verify.Verification(sum_check=False)``);
* ``first call``: the verdict cache cleared first, so the call also runs the per-sample probe (once per model
  and input signature);
* ``ref capture`` / ``ref capture + grads`` (and the same for ``train``): the reference (training) batch's forward
  and truncated backward (``influence.capture.capture_backward``) without and with autograd's gradients of the
  scored parameters: their differences, summed over the two captures Ghost checks, are the weight-gradient share
  of the check (what autograd computes for it);
* ``ref check ops`` / ``train check ops``: ``influence.verify.sum_check`` alone on one such capture (the check's
  own projections and comparison), summed over the two.

It prints the median times (wall or, with ``--clock cpu``, process CPU) side by side and, as fractions of the
call without the check (each the median over the rounds of that round's ratio, robust to a load that drifts):
the per-call overhead of each mode (ghost / no sum check - 1), the numeric check's weight-gradient share and its
own ops (the two can add up to more than ``every``'s overhead: a reference side in contracted form reuses
autograd's gradient instead of forming the block's sum from the factors), and the one-off probe (first call /
ghost - 1).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

import influence
from influence import verify
from influence.capture import capture_backward, factor_blocks, plan
from influence.factors import oriented
from influence.projection import bilinear, directions, factored, pack
from validation.bench.measure import measure_many
from validation.bench.targets import CLOCKS
from validation.bench.workloads import build_workload


def measure(name: str, repeats: int, tiny: bool, clock: str = "wall") -> dict[str, float]:
    """Median seconds of each timed callable (see the module docstring) on workload ``name``."""
    w = build_workload(name, tiny=tiny)
    gen = torch.Generator().manual_seed(0)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    pl = plan(w.model)
    params = pl.scored_params(set(pl.routed))

    def call(mode: str = "paths") -> None:
        influence.ghost(w.model, w.loss_fn, train, ref, w.spec.lr, verify=mode)

    def unchecked() -> None:
        influence.ghost(w.model, w.loss_fn, train, ref, w.spec.lr, verify=verify.Verification(sum_check=False))

    def first() -> None:
        verify.clear(w.model)
        call()

    batches = {"ref": (ref, w.spec.n_ref), "train": (train, w.spec.n_score)}  # Ghost sum-checks both captures

    def capture(side: str, with_grads: bool):
        batch, n = batches[side]
        return capture_backward(w.model, w.loss_fn, batch, pl.modules, n, side, params if with_grads else (), None,
                                pl.rules)

    checked = {}
    for side in batches:
        cap = capture(side, True)
        blocks, failed = factor_blocks(cap, pl, pl.context())
        if failed or verify.sum_check(blocks, cap, pl):
            raise RuntimeError(f"{name}: the workload does not pass the sum check; nothing to time")
        checked[side] = (cap, blocks)

    def check_ops(side: str) -> None:
        cap, blocks = checked[side]
        cap.checked = {}
        verify.sum_check(blocks, cap, pl)

    timed: dict[str, Callable[[], object]] = {"ghost": call, "no sum check": unchecked, "first call": first,
                                              "ghost every": lambda: call("every"),
                                              "ghost reference": lambda: call("reference")}
    for side in batches:
        timed[f"{side} capture"] = lambda side=side: capture(side, False)
        timed[f"{side} capture + grads"] = lambda side=side: capture(side, True)
        timed[f"{side} check ops"] = lambda side=side: check_ops(side)
    got = measure_many(timed, repeats, warmup=1, memory=False)  # the warm-up computes the verdict
    times = {k: m.times_s if clock == "wall" else m.cpu_times_s for k, m in got.items()}
    out = {k: statistics.median(v) for k, v in times.items()}

    def paired(parts: Callable[[int], float]) -> float:  # median over rounds: robust to a load that drifts
        return statistics.median(parts(r) for r in range(repeats))

    base = times["no sum check"]
    out["sum check overhead"] = paired(lambda r: times["ghost"][r] / base[r] - 1)
    for mode in ("every", "reference"):
        out[f"{mode} overhead"] = paired(lambda r, mode=mode: times[f"ghost {mode}"][r] / base[r] - 1)
    out["weight gradient share"] = paired(lambda r: sum(times[f"{s} capture + grads"][r] - times[f"{s} capture"][r]
                                                        for s in batches) / base[r])
    out["check ops share"] = paired(lambda r: sum(times[f"{s} check ops"][r] for s in batches) / base[r])
    out["probe overhead"] = paired(lambda r: times["first call"][r] / times["ghost"][r] - 1)
    return out


def rounding(model: torch.nn.Module, loss_fn, batch, n: int, k: int = 8) -> float:
    """The largest rounding ratio |factored - autograd| / (sum |t_r| + |autograd|) of the sum check's projection
    (``influence.verify``) over the blocks of ``model`` on ``batch`` (n samples) and ``k`` directions each, in
    units of the parameters' eps: what the screening tolerance (``Verification.screen_eps``) must stay above."""
    pl = plan(model, "auto")
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, "ref", pl.scored_params(), None, pl.rules)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    worst, eps = 0.0, 0.0
    for block in blocks.values():
        left, right, _ = oriented(block.segments[0])
        shape = (left.groups, left.dim, right.dim)
        gs = [cap.param_grads[id(p)] for p in block.params]
        m = pack(block, gs, shape, gs[0].dtype, gs[0].device)
        eps = torch.finfo(gs[0].dtype).eps
        dirs = directions(shape, k, gs[0].dtype, gs[0].device)
        fact, mag = factored(block, dirs)
        auto = torch.stack([bilinear(d, m) for d in dirs])
        worst = max(worst, float(((fact - auto).abs() / (mag + auto.abs())).max()))
    return worst / eps if eps else 0.0


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="small models and batches (seconds)")
    ap.add_argument("--workloads", default="mlp,transformer")
    ap.add_argument("--clock", choices=CLOCKS, default="wall",
                    help="wall time, or process CPU time (robust on a shared machine with --threads 1)")
    ap.add_argument("--rounding", action="store_true",
                    help="print the projection's largest rounding ratio (in eps) per workload and dtype instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rounding:
        return {name: print_rounding(name, args.tiny) for name in args.workloads.split(",")}
    out = {}
    print(f"{args.clock} time, medians of {args.repeats} interleaved repeats, {args.threads} thread(s)")
    print(f"{'workload':<12} {'ghost (s)':>10} {'no check (s)':>13} {'first call (s)':>15} "
          f"{'paths':>7} {'every':>7} {'reference':>10} {'weight grads':>13} {'check ops':>10} {'probe (once)':>13}")
    for name in args.workloads.split(","):
        m = out[name] = measure(name, args.repeats, args.tiny, args.clock)
        print(f"{name:<12} {m['ghost']:>10.4f} {m['no sum check']:>13.4f} {m['first call']:>15.4f} "
              f"{m['sum check overhead']:>+7.1%} {m['every overhead']:>+7.1%} {m['reference overhead']:>+10.1%} "
              f"{m['weight gradient share']:>+13.1%} {m['check ops share']:>+10.1%} {m['probe overhead']:>+13.1%}")
    print("ratios are medians over the rounds of each round's ratio. paths / every / reference = the Ghost call with "
          "verify= that\nmode / the call without any per-call check - 1 (paths, the default: the graph check on "
          "both captures); weight grads =\n(capture with the parameters' gradients - without, summed over the "
          "reference and training captures) / no check: what\nverify='every' pays autograd; check ops = sum_check "
          "alone on both captures / no check; probe = first call / ghost - 1")
    return out


def print_rounding(name: str, tiny: bool) -> dict[str, float]:
    out = {}
    for dtype in (torch.float32, torch.float64):
        w = build_workload(name, tiny=tiny)
        w.model.to(dtype)
        x, y = w.make(w.spec.n_ref, torch.Generator().manual_seed(0))
        x = x.to(dtype) if x.is_floating_point() else x
        out[str(dtype)] = rounding(w.model, w.loss_fn, (x, y), w.spec.n_ref)
        print(f"{name:<12} {dtype!s:<14} largest rounding ratio {out[str(dtype)]:6.2f} eps "
              f"(screening tolerance {verify.DEFAULT.screen_eps} eps)")
    return out


if __name__ == "__main__":
    main()
