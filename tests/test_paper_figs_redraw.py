"""The redrawn figures 2 and 6 (issue 25, item 6) on the names the studies produce now: figure 2 on the stored
study fidelity table (layer-aware family and the rankings), figure 6 on curation units with the rate-matched
controls, the combined rank and the layer-aware family, one protocol, a task of a new kind."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy import stats

from paper_figs import fig2_fidelity, fig6_curation
from paper_figs.plotdata import save_figure
from validation.report.curation import load_curation
from validation.report.results import atomic_write_json
from validation.report.tables import Table

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "paper_figs" / "data" / "study-quick" / "fidelity" / "fidelity.csv"

# ----------------------------------------------------------------------------------------------- figure 2


def test_fig2_on_the_study_table_csv_matches_an_independent_computation(tmp_path):
    pd = fig2_fidelity.data(Table.read(STUDY))
    fig = fig2_fidelity.draw(pd)
    save_figure(fig, pd, tmp_path, "f2", ("png",), dpi=40)
    with open(STUDY, newline="") as f:
        src = [r for r in csv.DictReader(f) if r["target"] == "exact"]
    # per (model, estimator, seed): mean over the scored steps; then paired with LAI at the same seed
    per: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in src:
        per[(r["model"], r["estimator"])][r["seed"]].append(float(r["spearman"]))
    with open(tmp_path / "f2.csv", newline="") as f:
        drawn = list(csv.DictReader(f))
    diffs = [r for r in drawn if r["panel"] == "diff"]
    assert diffs and {r["estimator"] for r in diffs} >= {"exact-top2", "exact-top2-lai-below", "exact-top1-lai-below",
                                                         "el2n", "grad-norm", "loss", "tracin-last", "lai-last"}
    for r in diffs:
        est = {s: np.mean(v) for s, v in per[(r["model"], r["estimator"])].items()}
        ref = {s: np.mean(v) for s, v in per[(r["model"], "lai")].items()}
        d = [est[s] - ref[s] for s in sorted(set(est) & set(ref))]
        assert int(r["n_seeds"]) == len(d) == 5
        assert float(r["mean"]) == pytest.approx(np.mean(d), rel=1e-9, abs=1e-12)
        if np.ptp(d) > 0:
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
            assert (float(r["low"]), float(r["high"])) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # every estimator its own colour and marker, and the labels on the rows are the registry's
    marks = {}
    for ax in fig.axes[: len(pd.meta["models"])]:
        for c in ax.containers:
            ln = c.lines[0]
            marks[ln.get_gid()] = (to_hex(ln.get_color()), ln.get_marker())
    assert len(marks) == len(pd.meta["estimators"])
    assert len({v[0] for v in marks.values()}) == len(marks) and len({v[1] for v in marks.values()}) == len(marks)
    assert "Exact top 2" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # the difference axes are zoomed: narrower than the absolute axes, the rankings cut at the edge
    for j, model in enumerate(pd.meta["models"]):
        lo, hi = fig.axes[len(pd.meta["models"]) + j].get_xlim()
        assert hi - lo < 0.9
        assert {t.get_gid() for t in fig.axes[len(pd.meta["models"]) + j].texts} >= {"clipped:el2n", "clipped:loss"}


# ----------------------------------------------------------------------------------------------- figure 6

TASK = "mnist-real-noisy40-instdep"
SEEDS = range(4)
GAIN = {"vanilla": 0.0, "lai": 0.02, "lai-last": 0.03, "exact-top2": 0.04, "loss+lai-last": 0.06,
        "random-as-lai-last": -0.005, "small-loss": 0.01, "small-loss-est": 0.015, "loss-threshold": -0.30,
        "oracle": 0.20}


def final_of(method: str, seed: int) -> float:
    jitter = 0.004 * ((seed * 5 + len(method) * 3) % 4 - 1.5)
    return 0.6 + GAIN[method] + (0.0 if method == "vanilla" else jitter) + 0.003 * seed


@pytest.fixture
def new_names(tmp_path) -> Path:
    folder = tmp_path / "curate" / f"{TASK}-ours-abc"
    atomic_write_json(folder / "config.json", {"task": {"name": TASK, "dataset": "mnist", "model": "mlp",
                                                        "noise": "instance_dependent", "rate": 0.4, "epochs": 2,
                                                        "protocol": "ours"}, "threads": 1})
    atomic_write_json(folder / "provenance.json", {"invocations": []})
    for method in GAIN:
        for seed in SEEDS:
            f = final_of(method, seed)
            atomic_write_json(folder / "units" / "curate" / TASK / f"seed{seed}" / f"{method}.json", {
                "task": TASK, "method": method, "seed": seed, "metric": "accuracy", "final": f, "curve": [f / 2, f],
                "kept_fraction": 0.6, "noise_recall": 0.5, "drop_precision": 0.4, "protocol": "ours",
                "noise": {"rate": 0.4}, "wall_s": 1.0, "cpu_s": 1.0, "code": {"commit": "abc", "dirty": False}})
    return tmp_path


def test_fig6_new_method_names_best_member_and_zoom(new_names):
    res = load_curation(new_names / "curate")
    pd = fig6_curation.data(res.final, res.curves)
    fig = fig6_curation.draw(pd)
    # sorted by mean difference to vanilla, oracle off the axes, read from the data (nothing hard-coded)
    assert pd.meta["methods"] == ["loss+lai-last", "exact-top2", "lai-last", "lai", "small-loss-est", "small-loss",
                                  "random-as-lai-last", "loss-threshold"]
    assert pd.meta["protocols"] == ["ours"]
    # the best layer-aware member: the combined rank (higher, but mixed with the loss) is not a member
    assert [m for m in GAIN if fig6_curation.is_member(m)] == ["lai", "lai-last", "exact-top2"]
    assert pd.meta["best"] == {TASK: "exact-top2"}
    ax_v, ax_b = fig.axes[:2]
    ref = [100 * final_of("exact-top2", s) for s in SEEDS]
    for method in pd.meta["methods"]:
        m = [100 * final_of(method, s) for s in SEEDS]
        (row,) = [r for r in pd.rows if (r["panel"], r["method"]) == ("best", method)] or [None]
        if method == "exact-top2":
            assert row is None  # the reference itself
            continue
        t = stats.ttest_rel(m, ref)
        ci = t.confidence_interval(0.95)
        assert row["mean"] == pytest.approx(np.mean(np.subtract(m, ref)), rel=1e-9)
        assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert row["p"] == pytest.approx(t.pvalue, rel=1e-9)
    # the loss threshold (-30 pp) is cut at the edge with its value; the axis fits the 1-6 pp differences
    for ax, panel in ((ax_v, "vanilla"), (ax_b, "best")):
        lo, hi = ax.get_xlim()
        assert hi - lo < 12
        (txt,) = [t for t in ax.texts if t.get_gid() == f"clipped:{panel}:ours:loss-threshold"]
        assert "−3" in txt.get_text()
        gids = {c.lines[0].get_gid() for c in ax.containers}
        assert f"{panel}:ours:oracle" not in gids and f"{panel}:ours:loss-threshold" not in gids
    assert "oracle +20" in ax_v.get_title()
    labels = [t.get_text() for t in ax_v.get_yticklabels()]
    assert "Random drop, rate of LAI, last layer" in labels and len(set(labels)) == len(labels)
    assert "Exact top 2" in ax_b.get_xlabel()
    assert len(fig.legends[0].legend_handles) == 1  # one protocol


@pytest.mark.parametrize("match, label", [(None, "Random drop, rate of LAI"),
                                          ("lai-last", "Random drop, rate of LAI, last layer")])
def test_fig6_names_the_rate_a_plain_random_matched(tmp_path, match, label):
    """Plain ``random`` keeps the fraction of the run's ``--match`` method (LAI by default); its row says which,
    as the report's "random (rate of X)" does, instead of a bare "Random drop"."""
    folder = tmp_path / "curate" / f"{TASK}-ours-abc"
    cfg = {"task": {"name": TASK, "dataset": "mnist", "model": "mlp", "noise": "symmetric", "rate": 0.4,
                    "epochs": 2, "protocol": "ours"}, "threads": 1}
    if match:
        cfg["match"] = match
    atomic_write_json(folder / "config.json", cfg)
    atomic_write_json(folder / "provenance.json", {"invocations": []})
    for method in ("vanilla", "lai", "lai-last", "random"):
        for seed in SEEDS:
            f = 0.6 + {"vanilla": 0.0, "lai": 0.02, "lai-last": 0.03, "random": 0.005}[method] + 0.003 * seed * len(method)
            atomic_write_json(folder / "units" / "curate" / TASK / f"seed{seed}" / f"{method}.json", {
                "task": TASK, "method": method, "seed": seed, "metric": "accuracy", "final": f, "curve": [f / 2, f],
                "kept_fraction": 0.6, "noise_recall": 0.5, "drop_precision": 0.4, "protocol": "ours",
                "noise": {"rate": 0.4}, "wall_s": 1.0, "cpu_s": 1.0, "code": {"commit": "abc", "dirty": False}})
    res = load_curation(tmp_path / "curate")
    fig = fig6_curation.draw(fig6_curation.data(res.final, res.curves))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert label in labels and "Random drop" not in labels
    assert {"LAI", "LAI (last layer)"} <= set(labels)  # the other rows keep their names
