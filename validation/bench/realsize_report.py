"""Ratios, targets and text of ``lai bench``'s real-size rows (issue 23).

Every ratio is computed here from the numbers a row's child measured (``validation.bench.rows``), by the clock
the run chose (``wall``: ``*_s``; ``cpu``: ``*_cpu_s``, process CPU time). Targets (upper bounds):

* ``lai`` steady call <= 1.5x a forward over train+ref; ``lai-last`` <= 1.2x; ``lai-aligned`` <= 1.3x;
* ``ghost`` steady call <= 1.3x a forward+backward over train+ref;
* every estimator: first call <= its steady call + one forward+backward (the ratio printed is
  first / (steady + forward+backward), bound 1);
* every estimator: peak extra memory of a call <= 2x the forward+backward's;
* the curated LAI step with statistics kept for k steps <= 1.3x a plain training step.

A row that did not finish (refused, error, killed, timeout) misses every target it has, and the line says why.
``score_dataset`` throughput has no target; its ratio to forward+backward is printed.
"""

from __future__ import annotations

from typing import Any

from validation.bench.targets import MB, target

GIB = float(1 << 30)
OVER_FORWARD = {"lai": 1.5, "lai-last": 1.2, "lai-aligned": 1.3}
OVER_FORWARD_BACKWARD = {"ghost": 1.3}
FIRST_OVER_STEADY_PLUS_FB = 1.0
PEAK_OVER_FB_PEAK = 2.0
CURATED_OVER_PLAIN = 1.3


def _t(res: dict[str, Any], label: str, clock: str) -> float:
    return float(res[f"{label}_s" if clock == "wall" else f"{label}_cpu_s"])


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def estimator_ratios(res: dict[str, Any], clock: str) -> dict[str, float | None]:
    """Ratios of one estimator row's measured numbers: steady / forward, steady / forward+backward, first /
    (steady + forward+backward), first / steady, steady peak / forward+backward peak."""
    steady, fwd, fb, first = (_t(res, k, clock) for k in ("steady", "forward", "forward_backward", "first"))
    return {"steady_over_forward": _div(steady, fwd), "steady_over_forward_backward": _div(steady, fb),
            "first_over_steady_plus_fb": _div(first, steady + fb), "first_over_steady": _div(first, steady),
            "peak_over_fb_peak": _div(res["steady_peak_bytes"], res["forward_backward_peak_bytes"])}


def curated_ratios(res: dict[str, Any], clock: str) -> dict[str, float | None]:
    """Mean curated step / mean plain step (over the k steps after the first), and the first steps' ratio."""
    return {"curated_over_plain": _div(_t(res, "curated", clock), _t(res, "plain", clock)),
            "first_curated_over_plain": _div(_t(res, "first_curated", clock), _t(res, "plain", clock))}


def dataset_ratios(res: dict[str, Any], clock: str) -> dict[str, float | None]:
    """score_dataset time / forward+backward time over the same samples (with and without the session build),
    and the throughputs in samples per second."""
    score, fb, session = (_t(res, k, clock) for k in ("score", "forward_backward", "session"))
    n = float(res["n"])
    return {"score_over_fb": _div(score, fb), "with_session_over_fb": _div(score + session, fb),
            "score_samples_per_s": _div(n, score), "with_session_samples_per_s": _div(n, score + session),
            "fb_samples_per_s": _div(n, fb)}


def row_ratios(row: dict[str, Any], clock: str) -> dict[str, float | None]:
    """The ratios of a finished row (``{}`` for a row that did not finish)."""
    if row["status"] != "ok":
        return {}
    fn = {"estimator": estimator_ratios, "curated": curated_ratios, "dataset": dataset_ratios}[row["kind"]]
    return fn(row["result"], clock)


def _missed(name: str, bound: float, why: str) -> dict[str, Any]:
    out = target(name, None, bound)
    out.update(met=False, why=why)
    return out


def row_targets(row: dict[str, Any], clock: str) -> list[dict[str, Any]]:
    """The target rows (``targets.target``) of one real-size row; a row that did not finish misses each,
    with ``why`` = its outcome."""
    wanted: list[tuple[str, str, float, str | None]] = []  # (name, ratio key, bound, clock or None)
    if row["kind"] == "estimator":
        e = row["name"]
        if e in OVER_FORWARD:
            wanted.append((f"{e} steady / forward", "steady_over_forward", OVER_FORWARD[e], clock))
        if e in OVER_FORWARD_BACKWARD:
            wanted.append((f"{e} steady / forward+backward", "steady_over_forward_backward",
                           OVER_FORWARD_BACKWARD[e], clock))
        wanted.append((f"{e} first / (steady + forward+backward)", "first_over_steady_plus_fb",
                       FIRST_OVER_STEADY_PLUS_FB, clock))
        wanted.append((f"{e} peak / forward+backward peak", "peak_over_fb_peak", PEAK_OVER_FB_PEAK, None))
    elif row["kind"] == "curated":
        wanted.append((f"{row['name']} step / plain step", "curated_over_plain", CURATED_OVER_PLAIN, clock))
    ratios = row_ratios(row, clock)
    out = []
    for name, key, bound, by in wanted:
        if row["status"] != "ok":
            out.append(_missed(name, bound, row["text"]))
        else:
            out.append(target(name, ratios[key], bound, clock=by))
    return out


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render_realsize(section: dict[str, Any], clock: str) -> list[str]:
    """Text lines of the real-size section: per workload a table of its estimator rows, the curated step and
    the dataset throughput, then the targets (MET / MISSED with the ratio)."""
    rows = section.get("rows", {})
    lines: list[str] = []
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for row in rows.values():
        by_workload.setdefault(row["workload"], []).append(row)
    pre = "" if clock == "wall" else "cpu "
    for wl, wrows in by_workload.items():
        meta = next((r["result"]["meta"] for r in wrows if r["status"] == "ok"), None)
        head = f"{meta['model']}, {meta['params_m']} M parameters" if meta else "(no row finished)"
        lines += ["", f"== {wl} (real size): {head}"]
        est = [r for r in wrows if r["kind"] == "estimator"]
        if est:
            n = next((r["result"] for r in est if r["status"] == "ok"), None)
            if n:
                lines.append(f"   train {n['n_train']} / ref {n['n_ref']}; {clock} time; each row in its own "
                             "process: first call, steady call (median), forward and forward+backward over train+ref "
                             "(medians of the same interleaved rounds), peak extra tensor memory of one call, the "
                             "process's peak resident set")
            lines.append(f"   {'estimator':<14}{'first s':>9}{'steady s':>10}{'fwd s':>8}{'f+b s':>8}{'x fwd':>8}"
                         f"{'x f+b':>8}{'1st/(st+fb)':>12}{'peak MB':>9}{'f+b MB':>8}{'x f+b pk':>9}{'RSS GB':>8}")
            for r in est:
                if r["status"] != "ok":
                    lines.append(f"   {r['name']:<14}{r['text']}")
                    continue
                res, q = r["result"], row_ratios(r, clock)
                lines.append(f"   {r['name']:<14}{_t(res, 'first', clock):>9.3f}{_t(res, 'steady', clock):>10.3f}"
                             f"{_t(res, 'forward', clock):>8.3f}{_t(res, 'forward_backward', clock):>8.3f}"
                             f"{_f(q['steady_over_forward']):>8}{_f(q['steady_over_forward_backward']):>8}"
                             f"{_f(q['first_over_steady_plus_fb']):>12}{res['steady_peak_bytes'] / MB:>9.1f}"
                             f"{res['forward_backward_peak_bytes'] / MB:>8.1f}{_f(q['peak_over_fb_peak']):>9}"
                             f"{r['rss_peak_bytes'] / GIB:>8.2f}")
        for r in wrows:
            if r["kind"] not in ("curated", "dataset"):
                continue
            if r["status"] != "ok":
                lines.append(f"   {r['name']}: {r['text']}")
                continue
            res, q = r["result"], row_ratios(r, clock)
            if r["kind"] == "curated":
                lines.append(f"   {r['name']} (batch {res['n_train']}, reference {res['n_ref']}, statistics kept "
                             f"{res['k']} steps, kept {res['kept_fraction']:.2f}): mean {pre}step "
                             f"{_t(res, 'curated', clock):.3f} s vs plain {_t(res, 'plain', clock):.3f} s = "
                             f"{_f(q['curated_over_plain'])}x over {res['steps']} steps; first curated step "
                             f"{_t(res, 'first_curated', clock):.3f} s ({_f(q['first_curated_over_plain'])}x a "
                             "plain step)")
            else:
                lines.append(f"   {r['name']} ({res['n']} samples, batches of {res['batch_size']}, reference "
                             f"{res['n_ref']}): {_f(q['score_samples_per_s'])} samples/s "
                             f"({_f(q['with_session_samples_per_s'])} with the session build) vs forward+backward "
                             f"{_f(q['fb_samples_per_s'])} samples/s: {_f(q['score_over_fb'])}x its time "
                             f"({_f(q['with_session_over_fb'])}x with the session)")
        lines.append("   targets:")
        for r in wrows:
            for t in row_targets(r, clock):
                mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
                value = f"{t['value']:.3f}" if t["value"] is not None else "no measurement"
                lines.append(f"   [{mark:>6}] {t['target']}: {value} <= {t['bound']:.3g}"
                             + (f"  ({t['clock']})" if t.get("clock") else "")
                             + (f"  -- {t['why']}" if t.get("why") else ""))
    return lines


__all__ = ["estimator_ratios", "curated_ratios", "dataset_ratios", "row_ratios", "row_targets", "render_realsize",
           "OVER_FORWARD", "OVER_FORWARD_BACKWARD", "PEAK_OVER_FB_PEAK", "CURATED_OVER_PLAIN",
           "FIRST_OVER_STEADY_PLUS_FB"]
