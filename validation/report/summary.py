"""Headline numbers, checks and verdict of a run folder: ``summary.json`` and ``report.md``.

``summary.json`` keys (medians are over all scored steps and seeds of the folder's units):

* ``verdict``: the report's plain-words conclusions (list of markdown lines, see report_render.py);
* ``checks``: [{"name", "kind" (theory | expectation | claim), "status" (pass | fail | not run | no guarantee |
  inconclusive), "passed" (true / false / null = not decided), "detail"}]. Theory checks are software checks
  (regression tests of the implementation: identities and proven bounds), not evidence for the paper's claim;
  they must pass; a check whose guarantee is vacuous at every step is "no guarantee", never pass.
  Expectations are paired comparisons (``comparisons``): LAI passes one only when the 95 % interval of the
  difference shows LAI better, fails when it shows the other better, and is inconclusive ("no difference shown")
  when it covers 0; "ranks like Exact" passes only when the mean Spearman and the interval's lower end are at
  least ``RANK_BAR`` (0.9), fails when the mean is below it. Claims (the README's cost ranges) pass only inside
  the stated range;
* ``comparisons``: [{"question" (fidelity | detection | detection-combined | curation), "where" (model, or task/protocol), "a", "b",
  "value" (a - b), "low", "high", "n", "method", "finding" (a | b | none: which is better by the interval; none =
  the interval covers 0), "metric"}] (see :func:`comparisons`);
* ``first_order``: {model: {"counterfactual" | "counterfactual_small_lr": interval}}: Spearman of Exact vs the
  actual one-step effect at the training lr and at lr / 10 (``report_evidence.first_order_evidence``);
* ``bound_violations`` (int): samples whose |Ghost - LAI| exceeds a bound, over the steps where a bound was
  computed; null when no step had one; ``bound``: per model, see ``report_evidence.bound_evidence``;
* ``spearman_vs_exact`` / ``spearman_vs_counterfactual`` / ``spearman_vs_counterfactual_small_lr``,
  ``kendall_vs_exact``, ``topk_overlap_vs_exact``, ``sign_agreement_vs_exact``: {model: {estimator: median}};
* ``noisy_auroc``, ``noisy_auroc_final`` (last scored step): {model: {estimator: median AUROC}};
* ``evidence``: {"spearman": {model: {estimator: interval}}, "spearman_diff": {model: {"a-vs-b": interval}},
  "auroc": {model: {score: interval with n_positive}}, "positives": {model: [noisy samples per seed]},
  "auroc_combined": {model: AUROC(loss+lai-last) - AUROC(loss), the combined rank against the loss alone}}, every
  interval a ``validation.report.stats`` dict (value, low, high, n, confidence, method);
* ``layers``: {model: per-layer comparison of LAI's and Ghost's terms} (``report_evidence.layer_evidence``);
* ``cost_ratio_to_train_step``, ``cost_peak_ratio_to_train_step``: {model: {estimator: ratio}} at
  ``cost_headline`` ({model: {"width", "batch", "forward_ms"}}: the largest width and batch, and the wall time
  of one forward pass there);
* ``training``: {model: {"step", "final_ref_loss", "final_ref_accuracy"}};
* ``curation``: rows of the curated-training paired table (method - vanilla per task and protocol, with the
  further pairs of ``validation.report.curation_pairs``: - the best layer-aware member, both at the best-validation
  epoch, - the method's rate-matched random, vanilla's plateau), or null;
  ``curation_vs_lai``: the same with LAI as the control (method - LAI), or null;
* ``units``: {suite: finished units}; ``config_id``, ``profile``.

:func:`failed_theory_checks` names the theory checks that failed (``lai run`` exits non-zero on them).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from validation.report.checks import (  # noqa: F401  (re-exported: the checks of a summary)
    EXACT_TOL,
    LAYER_PAIRS,
    NOT_COMPARED,
    RANK_BAR,
    bar_status,
    best_cheap,
    cheap_rivals,
    checks,
    comparisons,
    cost_claims,
    failed_theory_checks,
    theory_checks,
    top_layers,
)
from validation.report.evidence import (
    auroc_difference,
    auroc_evidence,
    bound_evidence,
    canon,
    combined_auroc_difference,
    first_order_evidence,
    layer_evidence,
    rank_evidence,
)
from validation.report.render import render
from validation.report.results import RunDir, atomic_write_json, atomic_write_text, config_id
from validation.report.verdict import verdict


def _median(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None

def _group_median(rows: list[dict[str, Any]], value: str, **where: Any) -> dict[str, dict[str, float | None]]:
    groups: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            groups[r["model"]][canon(r["estimator"])].append(r.get(value))
    return {m: {e: _median(v) for e, v in est.items()} for m, est in groups.items()}

def _last_step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        k = (r["model"], r["seed"])
        last[k] = max(last.get(k, r["step"]), r["step"])
    return [r for r in rows if r["step"] == last[(r["model"], r["seed"])]]

def _cost_summary(rows: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    time_r: dict[str, dict[str, Any]] = {}
    peak_r: dict[str, dict[str, Any]] = {}
    head: dict[str, dict[str, int]] = {}
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        w = max(r["width"] for r in rs)
        b = max(r["batch"] for r in rs if r["width"] == w)
        pick = [r for r in rs if r["width"] == w and r["batch"] == b]
        head[model] = {"width": w, "batch": b}
        fwd = next((r for r in pick if canon(r["estimator"]) == "forward"), None)
        if fwd is not None and fwd.get("median_s") is not None:
            head[model]["forward_ms"] = float(fwd["median_s"]) * 1e3
        time_r[model] = {canon(r["estimator"]): r["ratio_to_train_step"] for r in pick}
        peak_r[model] = {canon(r["estimator"]): r["peak_ratio_to_train_step"] for r in pick}
    return time_r, peak_r, head

def find_curation(rd: RunDir) -> Path | None:
    """Where the curated-training results of this run are: ``<run>/curate`` or ``<results root>/curate``."""
    for p in (rd.root / "curate", rd.root.parent / "curate"):
        if p.is_dir():
            return p
    return None

def _shown(folder: Path) -> str:
    """``folder`` as the report names it: relative to the repository root when inside it (so a report recomputed
    from the stored data reads the same from any working directory), else as given."""
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(folder).resolve().relative_to(root))
    except ValueError:
        return str(folder)


def curation_rows(folder: Path | None) -> tuple[list[dict[str, Any]] | None, str]:
    """(paired rows method - vanilla, note) from ``validation.report.curation`` (the curation tables' home);
    (None, why) when there are none or they cannot be read."""
    if folder is None:
        return None, "no curated-training results next to this run"
    try:
        from validation.report.curation import load_curation, paired
    except ImportError as exc:
        return None, f"curation tables unavailable ({exc})"
    try:
        res = load_curation(folder)
        if not len(res.final):
            return None, f"no finished curated-training units under {folder}"
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        return [{k: clean(v) for k, v in r.items()} for r in paired(res.final).rows], f"from {_shown(folder)}"
    except Exception as exc:  # a malformed results folder: say so instead of failing the whole report
        return None, f"curation results under {folder} could not be read: {type(exc).__name__}: {exc}"

def curation_lai_rows(folder: Path | None) -> list[dict[str, Any]] | None:
    """Paired rows method - LAI (``validation.report.curation.paired`` with LAI as the control) over the
    (task, protocol) groups that ran LAI; None when there are none or they cannot be read."""
    if folder is None:
        return None
    try:
        from validation.report.curation import load_curation, paired

        final = load_curation(folder).final
        with_lai = {(r["task"], r["protocol"]) for r in final if r["method"] == "lai"}
        final = final.where(lambda r: (r["task"], r["protocol"]) in with_lai)
        if not len(final):
            return None
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        return [{k: clean(v) for k, v in r.items()} for r in paired(final, control="lai").rows]
    except Exception:  # noqa: BLE001 - the vanilla table (curation_rows) says why the folder cannot be read
        return None

def summarize(rd: RunDir, curate: str | Path | None = None) -> dict[str, Any]:
    """The summary dict of a run folder (see the module docstring). ``curate``: the curated-training results
    folder (default: :func:`find_curation`)."""
    config = rd.read_config()
    fid = rd.table_rows("fidelity")
    auroc = rd.table_rows("auroc")
    cost = rd.table_rows("cost")
    training = rd.table_rows("training")
    scores = rd.table_rows("scores")
    bound = bound_evidence(rd.table_rows("bound_steps"))
    cost_t, cost_p, cost_head = _cost_summary(cost) if cost else ({}, {}, {})
    final_train = {}
    for model in sorted({r["model"] for r in training}):
        last = _last_step_rows([r for r in training if r["model"] == model])
        final_train[model] = {"step": last[0]["step"], "final_ref_loss": _median(r["ref_loss"] for r in last),
                              "final_ref_accuracy": _median(r["ref_accuracy"] for r in last)}
    versus_lai = [(e, "lai") for e in dict.fromkeys([*cheap_rivals(), *top_layers(), "loss"])]
    ranks = rank_evidence(scores, pairs=list(dict.fromkeys([*LAYER_PAIRS, *versus_lai]))) if scores else {}
    aur = auroc_evidence(scores) if scores else {}
    aur_diff = auroc_difference(scores, pairs=(("loss", "lai"),)) if scores else {}
    with_bound = [b for b in bound.values() if b["steps_with_bound"]]
    cur_folder = Path(curate) if curate is not None else find_curation(rd)
    cur_rows, cur_note = curation_rows(cur_folder)
    s: dict[str, Any] = {
        "config_id": config_id(config),
        "profile": config.get("profile"),
        "bound_violations": sum(b["violations"] for b in with_bound) if with_bound else None,
        "spearman_vs_exact": _group_median(fid, "spearman", target="exact"),
        "spearman_vs_counterfactual": _group_median(fid, "spearman", target="counterfactual"),
        "spearman_vs_counterfactual_small_lr": _group_median(fid, "spearman", target="counterfactual_small_lr"),
        "kendall_vs_exact": _group_median(fid, "kendall", target="exact"),
        "topk_overlap_vs_exact": _group_median(fid, "topk_overlap", target="exact"),
        "sign_agreement_vs_exact": _group_median(fid, "sign_agreement", target="exact"),
        "noisy_auroc": _group_median(auroc, "auroc"),
        "noisy_auroc_final": _group_median(_last_step_rows(auroc), "auroc") if auroc else {},
        "evidence": {
            "spearman": {m: {e: v.to_dict() for e, v in r["spearman"].items()} for m, r in ranks.items()},
            "spearman_diff": {m: {k: v.to_dict() for k, v in r["diff"].items()} for m, r in ranks.items()},
            "auroc": {m: {e: v.to_dict() for e, v in r["auroc"].items()} for m, r in aur.items()},
            "positives": {m: r["positives"] for m, r in aur.items()},
            "auroc_diff": {m: {k: v.to_dict() for k, v in r.items()} for m, r in aur_diff.items()},
            "auroc_combined": {m: v.to_dict() for m, v in (combined_auroc_difference(scores) if scores
                                                           else {}).items()},
        },
        "first_order": {m: {t: v.to_dict() for t, v in r.items()} for m, r in first_order_evidence(fid).items()},
        "layers": layer_evidence(rd.table_rows("layer_terms")),
        "cost_ratio_to_train_step": cost_t,
        "cost_peak_ratio_to_train_step": cost_p,
        "cost_headline": cost_head,
        "bound": bound,
        "training": final_train,
        "curation": cur_rows,
        "curation_vs_lai": curation_lai_rows(cur_folder) if cur_rows else None,
        "curation_note": cur_note,
        "units": (rd.unit_counts() if isinstance(rd, StoredRun) else
                  {suite: sum(1 for _ in rd.iter_units(suite)) for suite in ("bound", "fidelity", "cost")}),
    }
    s["comparisons"] = comparisons(s)
    s["checks"] = checks(s)

    s["verdict"] = verdict(s)
    return s

def write_report(rd: RunDir, curate: str | Path | None = None) -> dict[str, Any]:
    """Write the CSV tables, summary.json and report.md of a run folder; returns the summary. ``curate``: the
    curated-training results folder (default ``<run>/curate`` or ``<results root>/curate`` when present).
    Call it again after curated training finished to add its section (``refresh_report``)."""

    rd.write_tables()
    s = summarize(rd, curate)
    atomic_write_json(rd.root / "summary.json", s)
    atomic_write_text(rd.root / "report.md", render(s, rd.read_config()))
    return s

def refresh_report(run: str | Path, curate: str | Path | None = None) -> dict[str, Any]:
    """:func:`write_report` on the run folder at ``run`` (e.g. after the curated-training runs of the main job)."""
    return write_report(RunDir(run), curate)

class StoredRun(RunDir):
    """A stored run folder (``paper_figs.stored_run``: the CSV tables, config.json and summary.json, no units):
    its tables are read from the CSVs (``*.csv.gz`` in their place), so :func:`summarize` and
    :func:`write_stored_report` recompute the summary and report from the stored data."""

    def table_rows(self, table: str) -> list[dict[str, Any]]:
        from validation.report.tables import read_table

        t = read_table(self.root / f"{table}.csv")
        return [] if t is None else t.rows

    def iter_units(self, suite: str):  # noqa: ANN201 - no units are stored
        return iter(())

    def unit_counts(self) -> dict[str, int]:
        """The finished units the run had (from the stored summary.json; the units themselves are not stored)."""
        path = self.root / "summary.json"
        if path.is_file():
            from validation.report.results import read_json

            return dict(read_json(path).get("units") or {})
        return {}

def write_stored_report(folder: str | Path, curate: str | Path | None = None,
                        out: str | Path | None = None) -> dict[str, Any]:
    """Recompute summary.json and report.md of a stored run folder (default: in place; ``out``: another folder)
    from its CSV tables and the curation results ``curate`` (default: :func:`find_curation`)."""

    rd = StoredRun(folder)
    s = summarize(rd, curate)
    dest = Path(out) if out is not None else rd.root
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / "summary.json", s)
    atomic_write_text(dest / "report.md", render(s, rd.read_config()))
    return s

def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m validation.report.summary",
                                 description="rewrite summary.json and report.md of a run folder")
    ap.add_argument("folder", help="a run folder (lai run), or a stored one with --stored")
    ap.add_argument("--stored", action="store_true", help="the folder holds only the CSV tables (paper_figs/data)")
    ap.add_argument("--curate", default=None, help="curated-training results (run folders or a stored folder)")
    ap.add_argument("--out", default=None, help="write here instead of into the folder (--stored only)")
    args = ap.parse_args(argv)
    if args.stored:
        write_stored_report(args.folder, args.curate, args.out)
        print(Path(args.out or args.folder) / "report.md")
    else:
        refresh_report(args.folder, args.curate)
        print(Path(args.folder) / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["StoredRun", "write_stored_report", "summarize", "write_report", "refresh_report", "find_curation",
           "curation_rows", "curation_lai_rows"]
