"""Curation results as paired differences to vanilla (validation.report.stats), the stored compact tables, and figure 6
drawn from them (both protocols, 95 % CIs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from paper_figs import fig6_curation, figures
from paper_figs.style import DOUBLE, SMALL_PT
from validation.report.curation import PAIRED_COLUMNS, export, has_results, load_curation, paired
from validation.report.results import atomic_write_json

SEEDS = range(5)
TASKS = {"mnist1d-noisy40": ("mnist1d", "mlp"), "digits-noisy40": ("digits", "cnn2d")}


def final_of(task: str, protocol: str, method: str, seed: int) -> float:
    base = 0.5 if task.startswith("mnist1d") else 0.9
    gain = {"vanilla": 0.0, "lai": 0.03, "random": -0.01, "oracle": 0.1}[method]
    jitter = 0.01 * ((seed * 7 + len(method) * 3 + len(protocol)) % 5 - 2)  # deterministic, not constant
    return base + gain + (0.0 if method == "vanilla" else jitter) + 0.002 * seed


def write_folder(root: Path, task: str, protocol: str, methods, epochs: int = 3) -> Path:
    folder = root / "curate" / f"{task}-{protocol}-abc"
    dataset, model = TASKS[task]
    atomic_write_json(folder / "config.json", {"task": {"name": task, "dataset": dataset, "model": model,
                                                        "noise": "symmetric", "rate": 0.4, "epochs": epochs,
                                                        "protocol": protocol}, "threads": 1})
    atomic_write_json(folder / "provenance.json", {"invocations": [{"time_utc": "2026-01-01T00:00:00Z",
                                                                    "argv": ["x"], "git": {"commit": "abc"}}]})
    for method in methods:
        for seed in SEEDS:
            f = final_of(task, protocol, method, seed)
            atomic_write_json(folder / "units" / "curate" / task / f"seed{seed}" / f"{method}.json", {
                "task": task, "method": method, "seed": seed, "metric": "accuracy", "final": f,
                "curve": [f * (e + 1) / epochs for e in range(epochs)], "kept_fraction": 0.6, "noise_recall": 0.5,
                "drop_precision": 0.4, "protocol": protocol, "noise": {"rate": 0.4}, "wall_s": 2.0, "cpu_s": 1.0,
                "code": {"commit": "abc", "dirty": False}})
    return folder


@pytest.fixture
def results(tmp_path):
    for task in TASKS:
        write_folder(tmp_path, task, "ours", ("vanilla", "lai", "random", "oracle"))
        write_folder(tmp_path, task, "original", ("lai", "random"))  # vanilla borrowed from "ours"
    return tmp_path


def test_paired_differences_match_scipy(results):
    res = load_curation(results)
    assert len(res.folders) == 4 and set(res.final.unique("protocol")) == {"ours", "original"}
    pt = paired(res.final)
    assert pt.columns == PAIRED_COLUMNS
    assert len(pt) == 2 * (3 + 2)  # ours: lai, random, oracle; original: lai, random
    for r in pt:
        m = [100 * final_of(r["task"], r["protocol"], r["method"], s) for s in SEEDS]
        v = [100 * final_of(r["task"], "ours", "vanilla", s) for s in SEEDS]
        d = np.subtract(m, v)
        t = stats.ttest_rel(m, v)
        ci = t.confidence_interval(0.95)
        assert r["diff"] == pytest.approx(d.mean(), rel=1e-12) and r["n"] == 5
        assert (r["low"], r["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert r["p"] == pytest.approx(t.pvalue, rel=1e-9)
        assert r["wins"] == int((d > 0).sum()) and r["losses"] == int((d < 0).sum())
        assert r["rate_matched_to"] == ("lai" if r["method"] == "random" else "")
    order = [(r["task"], r["protocol"], r["method"]) for r in pt][:5]
    assert order == [("mnist1d-noisy40", "ours", "lai"), ("mnist1d-noisy40", "ours", "random"),
                     ("mnist1d-noisy40", "ours", "oracle"), ("mnist1d-noisy40", "original", "lai"),
                     ("mnist1d-noisy40", "original", "random")]


def test_export_keeps_complete_seeds_only(results, tmp_path):
    (results / "curate" / "digits-noisy40-original-abc" / "units" / "curate" / "digits-noisy40" / "seed4" /
     "lai.json").unlink()
    export(results, tmp_path / "s")
    prov = json.loads((tmp_path / "s" / "provenance.json").read_text())
    assert prov["seeds"] == {"mnist1d-noisy40": [0, 1, 2, 3, 4], "digits-noisy40": [0, 1, 2, 3]}
    assert len(prov["left_out"]) == 4 + 1 and "digits-noisy40 ours vanilla seed4" in prov["left_out"]
    stored = load_curation(tmp_path / "s")
    assert sorted(set(stored.final.where(task="digits-noisy40").values("seed"))) == [0, 1, 2, 3]
    assert sorted(set(stored.curves.where(task="digits-noisy40").values("seed"))) == [0, 1, 2, 3]


def test_export_round_trip_and_figure_fallback(results, tmp_path, monkeypatch):
    stored = tmp_path / "stored"
    export(results, stored, note="test", command="lai curate --profile paper")
    assert has_results(stored) and not has_results(tmp_path / "nothing")
    prov = json.loads((stored / "provenance.json").read_text())
    assert prov["note"] == "test" and prov["units"] == 2 * (4 + 2) * 5 and prov["code"] == ["abc"]
    assert all(f["seeds"] == list(SEEDS) and f["threads"] == 1 for f in prov["folders"].values())
    assert all(f["invocations"][0]["argv"] == ["x"] for f in prov["folders"].values())
    a, b = load_curation(results), load_curation(stored)
    assert b.stored and len(a.final) == len(b.final) and len(a.curves) == len(b.curves)
    pa, pb = paired(a.final), paired(b.final)
    for ra, rb in zip(pa, pb):
        assert ra["method"] == rb["method"] and ra["diff"] == pytest.approx(rb["diff"], rel=1e-12)
        assert ra["low"] == pytest.approx(rb["low"], rel=1e-12)
    assert "| mnist1d-noisy40 | ours | lai |" in (stored / "paired.md").read_text()
    # no results of its own: figure 6 comes from the stored tables
    monkeypatch.setattr(figures, "STORED", stored)
    pd = figures._load6(figures.Sources(None, tmp_path / "empty" / "curate"))
    assert len(pd.table().where(panel=["vanilla", "oracle"])) == len(pb)
    monkeypatch.setattr(figures, "STORED", tmp_path / "none")
    with pytest.raises(figures.MissingResults, match="no curated-training results"):
        figures._load6(figures.Sources(None, tmp_path / "empty" / "curate"))


def test_fig6_draws_each_difference_with_its_ci(results):
    res = load_curation(results)
    pd = fig6_curation.data(res.final, res.curves)
    fig = fig6_curation.draw(pd)
    pt = paired(res.final)
    # oracle is off the axes (its difference is written in the title); methods sorted by mean difference
    assert pd.meta["protocols"] == ["ours", "original"] and pd.meta["methods"] == ["lai", "random"]
    assert pd.meta["best"] == {task: "lai" for task in TASKS}  # the only layer-aware member
    axes = np.array(fig.axes).reshape(2, len(TASKS))
    for j, task in enumerate(pd.meta["tasks"]):
        ax = axes[0, j]
        for r in pt.where(task=task):
            conts = [c for c in ax.containers if c.lines[0].get_gid() == f"vanilla:{r['protocol']}:{r['method']}"]
            if r["method"] == "oracle":
                assert not conts and f"oracle {r['diff']:+.1f}".replace("-", "−") in ax.get_title()
                continue
            (cont,) = conts
            assert cont.lines[0].get_xdata()[0] == pytest.approx(r["diff"], rel=1e-12)
            (seg,) = cont.lines[2][0].get_segments()
            assert (seg[0, 0], seg[1, 0]) == pytest.approx((r["low"], r["high"]), rel=1e-9)
            filled = cont.lines[0].get_markerfacecolor()
            assert (filled == "white") == (r["protocol"] == "original")
        assert "vanilla" in ax.get_title() and "pp" in ax.get_xlabel()
        # bottom row: paired difference to the best member (lai under "ours") at the same seed, by hand
        for protocol, method in (("ours", "random"), ("original", "random"), ("original", "lai")):
            m = [100 * final_of(task, protocol, method, s) for s in SEEDS]
            ref = [100 * final_of(task, "ours", "lai", s) for s in SEEDS]
            ci = stats.ttest_rel(m, ref).confidence_interval(0.95)
            (cont,) = [c for c in axes[1, j].containers if c.lines[0].get_gid() == f"best:{protocol}:{method}"]
            assert cont.lines[0].get_xdata()[0] == pytest.approx(np.mean(np.subtract(m, ref)), rel=1e-12)
            (seg,) = cont.lines[2][0].get_segments()
            assert (seg[0, 0], seg[1, 0]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert not [c for c in axes[1, j].containers if c.lines[0].get_gid() == "best:ours:lai"]  # the reference
        assert "best layer-aware" in axes[1, j].get_xlabel() and "LAI" in axes[1, j].get_xlabel()
        # the axes are fitted to the data, not a fixed +-20 pp
        lo, hi = ax.get_xlim()
        ends = [v for r in pt.where(task=task) if r["method"] != "oracle" for v in (r["low"], r["high"])]
        assert lo <= min(ends) and hi >= max(ends) and hi - lo < 1.2 * (max(ends) - min(0, *ends))
    w, _ = fig.get_size_inches()
    assert w == DOUBLE
    sizes = [t.get_fontsize() for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text"))
             if t.get_text()]
    assert min(sizes) >= SMALL_PT
