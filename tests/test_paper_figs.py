"""paper_figs: every figure drawn from small result files written in the validation/curation formats, and
checked against those files (plotted coordinates, series, labels), plus the command line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy.stats import rankdata, spearmanr

from paper_figs import fig1_dynamics, fig2_fidelity, fig3_bound, fig4_scatter, fig5_cost, fig6_curation, fig7_layers
from paper_figs.cli import main, newest_run
from paper_figs.style import CLEAN_COLOR, DOUBLE, GREY, NOISY_COLOR, SMALL_PT
from validation.report.curation import family_of, load_curation
from validation.report.results import TABLES, atomic_write_csv, atomic_write_json
from validation.report.tables import Table

MODELS = ("mlp", "cnn1d", "transformer")
STEPS = (10, 20, 30, 40, 50)
SAMPLES = (3, 7, 11, 19, 23, 42)
NOISY = {7, 23}


# ------------------------------------------------------------------------------------- result files

def _scores_rows(rng: np.random.Generator, models: tuple[str, ...] = MODELS) -> list[dict]:
    rows = []
    for model in models:
        for seed in (0, 1):
            for step in STEPS:
                for est in ("exact", "ghost", "lai", "lai-last", "lai-fit"):
                    for s in SAMPLES:
                        rows.append({"model": model, "seed": seed, "step": step, "sample": s, "is_noisy": int(s in NOISY),
                                     "estimator": est, "score": float(rng.normal()) * 10.0 ** -(step / 20)})
    return rows


def _fidelity_rows(rng: np.random.Generator, models: tuple[str, ...] = MODELS) -> list[dict]:
    rows = []
    for model in models:
        for seed in (0, 1, 2):
            for step in STEPS:
                for target in ("exact", "counterfactual"):
                    for est in ("exact", "ghost", "lai", "lai-last", "tracin", "loss"):
                        if est == target:
                            continue
                        rows.append({"model": model, "seed": seed, "step": step, "estimator": est, "target": target,
                                     "n": 6, "k": 1, "spearman": float(rng.uniform(-0.2, 1.0)),
                                     "kendall": float(rng.uniform(-0.2, 1.0)), "topk_overlap": 1.0,
                                     "bottomk_overlap": 0.0, "sign_agreement": 0.5})
    return rows


def _bound_rows(rng: np.random.Generator, models: tuple[str, ...] = MODELS) -> tuple[list[dict], list[dict]]:
    rows, layers = [], []
    for model in models:
        for step in STEPS[:2]:
            for j, s in enumerate(SAMPLES):
                bound = float(rng.uniform(0.1, 2.0)) * 10.0 ** -j
                err = 0.0 if (model == "mlp" and j == 0) else bound * float(rng.uniform(0.01, 1.0))
                apriori = None if model == "transformer" else bound * 10
                rows.append({"model": model, "seed": 0, "step": step, "sample": s, "is_noisy": int(s in NOISY),
                             "ghost": 1.0, "lai": 1.0 - err, "exact": 1.0, "error": err, "abs_error": err,
                             "decomposition_sum": err, "data_bound": bound, "apriori_bound": apriori,
                             "tightness_data": err / bound, "tightness_apriori": None if apriori is None else err / apriori,
                             "violation_data": 0, "violation_apriori": None if apriori is None else 0})
                names = ["0", "2"] if model == "mlp" else ["conv1", "blocks.0.attn.qkv", "blocks.0.mlp.fc1"]
                w = rng.uniform(0.1, 1.0, len(names))
                for name, share in zip(names, w / w.sum()):
                    layers.append({"model": model, "seed": 0, "step": step, "sample": s, "layer": name,
                                   "error": float(share) * err, "share": float(share)})
    return rows, layers


def _cost_rows(rng: np.random.Generator, models: tuple[str, ...] = MODELS) -> list[dict]:
    rows = []
    widths = {"mlp": (16, 32), "cnn1d": (4, 8), "transformer": (8, 16)}
    for model in models:
        for w in widths[model]:
            for b in (8, 16, 32):
                for est in ("forward", "forward_backward", "train_step", "exact", "ghost", "lai", "lai-last",
                            "tracin-last"):
                    r = 1.0 if est == "train_step" else float(rng.uniform(0.05, 30.0))
                    rows.append({"model": model, "seed": 0, "width": w, "batch": b, "n_ref": 10, "n_params": 100,
                                 "estimator": est, "median_s": r * 0.01, "peak_mb": r, "ratio_to_forward": r,
                                 "ratio_to_forward_backward": r, "ratio_to_train_step": r,
                                 "peak_ratio_to_train_step": float(rng.uniform(0.5, 20.0)),
                                 "times_s": [r * 0.01 * f for f in (0.8, 0.95, 1.0, 1.1, 1.4)]})
    return rows


def _layer_rows(rng: np.random.Generator, models: tuple[str, ...] = MODELS) -> list[dict]:
    rows = []
    for model in models:
        names = ["hidden.0", "hidden.1", "head"] if model == "mlp" else ["conv1", "blocks.0.attn.qkv", "head"]
        for seed in (0, 1):
            for step in STEPS:
                for i, name in enumerate(names):
                    rows.append({"model": model, "seed": seed, "step": step, "layer": name, "layer_index": i,
                                 "n_layers": len(names), "has_lai_term": 1, "is_last": int(name == "head"),
                                 "term_spearman": 1.0 if name == "head" else float(rng.uniform(-0.2, 0.8)),
                                 "scale_ratio": float(rng.uniform(0.2, 3)), "error_share": 0.5 * (name != "head"),
                                 "ghost_share": 1 / 3, "rho_alone": float(rng.uniform(0.5, 1)),
                                 "rho_fixed": float(rng.uniform(0.3, 1)), "fit_weight": float(rng.uniform(0, 2))})
    return rows


def write_run(folder: Path, seed: int = 0, skip: tuple[str, ...] = (),
              models: tuple[str, ...] = MODELS) -> dict[str, list[dict]]:
    """A validation run folder with every table (except ``skip``), in the validation writer's format."""
    rng = np.random.default_rng(seed)
    bound, layers = _bound_rows(rng, models)
    tables = {"scores": _scores_rows(rng, models), "fidelity": _fidelity_rows(rng, models), "bound": bound,
              "bound_layers": layers, "cost": _cost_rows(rng, models), "layer_terms": _layer_rows(rng, models)}
    for name, rows in tables.items():
        if name not in skip:
            atomic_write_csv(folder / f"{name}.csv", rows, TABLES[name][1])
    atomic_write_json(folder / "config.json", {"profile": "quick", "models": {
        "mlp": {"width_key": "hidden"}, "cnn1d": {"width_key": "channels"}, "transformer": {"width_key": "d_model"}}})
    atomic_write_json(folder / "summary.json", {"checks": []})
    return tables


CURATION_METHODS = ("vanilla", "lai", "random")


def write_curation(root: Path, task: str, rate: float, finals: dict[tuple[str, int], float], epochs: int = 3,
                   cid: str = "abc") -> Path:
    """A curation run folder (validation/curation/experiment.py layout) with units for ``finals``."""
    folder = root / "curate" / f"{task}-{cid}"
    atomic_write_json(folder / "config.json", {"profile": task, "task": {
        "name": task, "dataset": "mnist1d", "model": "mlp", "noise": "symmetric", "rate": rate, "epochs": epochs}})
    for (method, seed), final in finals.items():
        curve = [final * (e + 1) / epochs for e in range(epochs)]
        atomic_write_json(folder / "units" / "curate" / task / f"seed{seed}" / f"{method}.json", {
            "task": task, "method": method, "seed": seed, "metric": "accuracy", "final": final, "curve": curve,
            "kept_fraction": 0.8, "noise_recall": 0.5, "drop_precision": 0.4, "noise": {"kind": "symmetric", "rate": rate}})
    return folder


def _finals(rate: float) -> dict[tuple[str, int], float]:
    return {(m, s): 0.9 - rate - 0.05 * k + 0.01 * s for k, m in enumerate(CURATION_METHODS) for s in range(3)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    folder = tmp_path_factory.mktemp("results") / "quick-0123456789"
    return folder, write_run(folder)


def table(run, name: str) -> Table:
    return Table.read(run[0] / f"{name}.csv")


def all_text_sizes(fig) -> list[float]:
    return [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
            if t.get_text().strip()]


def check_style(fig) -> None:
    w, _ = fig.get_size_inches()
    assert w in (DOUBLE, 3.4)
    assert min(all_text_sizes(fig)) >= SMALL_PT


# ---------------------------------------------------------------------------------------------- tables

def test_table_types_and_text_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("model,layer,step,score,note,empty\nmlp,0,10,1.5,a,\nmlp,2,20,nan,b,\n")
    t = Table.read(p)
    assert t.values("layer") == ["0", "2"]  # names stay strings
    assert t.values("step") == [10, 20] and all(isinstance(v, int) for v in t.values("step"))
    assert t.values("score")[0] == 1.5 and math.isnan(t.values("score")[1])
    assert t.values("empty") == [None, None]
    assert len(t.where(step=[10, 30])) == 1 and t.unique("model") == ["mlp"]
    with pytest.raises(KeyError, match="missing_col"):
        t.require("missing_col")

def _typed_reference(text: str) -> list[dict]:
    """The module doc's typing rule, cell by cell over csv.DictReader rows (the slow, obvious reading)."""
    import csv
    import io

    from validation.report.tables import TEXT_COLUMNS

    reader = csv.DictReader(io.StringIO(text))
    raw, columns = list(reader), reader.fieldnames or []

    def number(v):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return None

    out = [{} for _ in raw]
    for c in columns:
        cells = [r.get(c) or None for r in raw]
        parsed = [number(v) for v in cells if v is not None]
        if c in TEXT_COLUMNS or any(p is None for p in parsed):
            typed = cells
        elif all(isinstance(p, int) for p in parsed):
            typed = [None if v is None else int(v) for v in cells]
        else:
            typed = [None if v is None else float(v) for v in cells]
        for row, v in zip(out, typed):
            row[c] = v
    return out


def test_table_typing_matches_the_cell_by_cell_rule_on_messy_csv():
    text = ("model,a,b,c,d,layer\n"
            "mlp,1,2.5,x,,7\n"
            "\n"
            "cnn,-3,1e3,4, 5 ,8\n"
            "short,2\n"
            "long,4,nan,y,inf,9,extra\n"
            "t,,inf,,,\n")
    got = Table.parse(text).rows
    want = _typed_reference(text)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert type(g[k]) is type(w[k]), (k, g[k], w[k])
            assert g[k] == w[k] or (isinstance(g[k], float) and math.isnan(g[k]) and math.isnan(w[k]))
    assert [r["a"] for r in got] == [1, -3, 2, 4, None]  # int column, empty cells None
    assert isinstance(got[0]["b"], float) and got[0]["c"] == "x" and got[3]["d"] == float("inf")
    assert got[1]["d"] == 5.0 and isinstance(got[1]["d"], float)  # " 5 " is a number; "inf" makes the column float



# ------------------------------------------------------------------------------------------- figure 1

def test_fig1_medians_quartiles_and_rank_stability(run):
    from scipy import stats as st

    scores = table(run, "scores")
    pd = fig1_dynamics.data(scores)
    assert (pd.meta["models"], pd.meta["estimator"], pd.meta["seeds"]) == (list(MODELS), "exact", [0, 1])
    fig = fig1_dynamics.draw(pd)
    axes = np.array(fig.axes).reshape(2, len(MODELS))
    for j, model in enumerate(MODELS):
        src = [r for r in run[1]["scores"] if (r["model"], r["estimator"]) == (model, "exact")]
        # percentile ranks within each (seed, step), computed independently: 100 = largest score
        pct = {}
        for seed in (0, 1):
            for step in STEPS:
                rows = [r for r in src if (r["seed"], r["step"]) == (seed, step)]
                rk = rankdata([-r["score"] for r in rows])
                for r, k in zip(rows, rk):
                    pct[(seed, step, r["sample"])] = 100 * (len(rows) - k) / (len(rows) - 1)
        for i, panel in enumerate(("score", "rank")):
            ax = axes[i, j]
            for group, colour in (("clean", CLEAN_COLOR), ("noisy", NOISY_COLOR)):
                pooled = [[(r["score"] if panel == "score" else pct[(r["seed"], step, r["sample"])])
                           for r in src if r["step"] == step and (r["sample"] in NOISY) == (group == "noisy")]
                          for step in STEPS]
                (ln,) = [ln for ln in ax.lines if ln.get_gid() == f"median:{panel}:{group}"]
                np.testing.assert_array_equal(ln.get_xdata(), STEPS)
                np.testing.assert_allclose(ln.get_ydata(), [np.median(v) for v in pooled], rtol=1e-12)
                assert to_hex(ln.get_color()) == to_hex(colour)
                (band,) = [c for c in ax.collections if c.get_gid() == f"band:{panel}:{group}"]
                ys = band.get_paths()[0].vertices[:, 1]
                assert np.isclose(ys.max(), max(np.percentile(v, 75) for v in pooled))
                assert np.isclose(ys.min(), min(np.percentile(v, 25) for v in pooled))
        # first vs last scored step: Spearman of the ranks per seed, mean and t interval over the seeds
        rhos = [spearmanr([pct[(s, STEPS[0], k)] for k in SAMPLES], [pct[(s, STEPS[-1], k)] for k in SAMPLES]).statistic
                for s in (0, 1)]
        (row,) = [r for r in pd.rows if (r["panel"], r["model"]) == ("stability", model)]
        ci = st.ttest_1samp(rhos, 0).confidence_interval(0.95)
        assert row["mean"] == pytest.approx(np.mean(rhos), rel=1e-12)
        assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert f"{np.mean(rhos):.2f}" in axes[1, j].get_title(loc="right")
        assert axes[1, j].get_ylim() == (0, 100) and axes[0, j].get_title() == \
            {"mlp": "MLP", "cnn1d": "CNN-1D", "transformer": "Transformer"}[model]
    assert "nats" in axes[0, 0].get_ylabel() and "percentile" in axes[1, 0].get_ylabel()
    assert axes[1, 0].get_xlabel() == "training step (SGD steps)"
    assert [t.get_text().split(":")[0] for t in fig.legends[0].get_texts()] == ["clean label", "noisy label"]
    # symlog ticks: 0 and whole decades at least 3x the linear threshold, so no label sits in the band around 0
    lt = axes[0, 0].yaxis.get_transform().linthresh
    ticks = axes[0, 0].get_yticks()
    assert 0.0 in ticks and all(t == 0 or (abs(t) >= 3 * lt and math.log10(abs(t)).is_integer()) for t in ticks)
    check_style(fig)


def test_fig1_choices_and_missing(run):
    pd = fig1_dynamics.data(table(run, "scores"), model="transformer", estimator="lai", seed=1)
    assert {r["model"] for r in pd.rows} == {"transformer"} and pd.meta["seeds"] == [1]
    assert {r["n"] for r in pd.rows if r["panel"] == "score"} == {len(SAMPLES) - len(NOISY), len(NOISY)}
    with pytest.raises(LookupError, match="no model 'cnn2d'"):
        fig1_dynamics.data(table(run, "scores"), model="cnn2d")
    one_step = table(run, "scores").where(step=STEPS[0])
    with pytest.raises(LookupError, match="2 or more"):
        fig1_dynamics.data(one_step)


# ------------------------------------------------------------------------------------------- figure 2

def _paired_by_hand(rows, model, est, ref="lai"):
    """Per seed: mean over steps of Spearman vs Exact; then est - ref per seed, mean and 95 % t interval."""
    from scipy import stats as st

    def per_seed(e):
        return {s: np.mean([r["spearman"] for r in rows if (r["model"], r["estimator"], r["target"], r["seed"])
                            == (model, e, "exact", s)]) for s in (0, 1, 2)}
    a, b = per_seed(est), per_seed(ref)
    d = [a[s] - b[s] for s in (0, 1, 2)]
    ci = st.ttest_1samp(d, 0).confidence_interval(0.95)
    ca = st.ttest_1samp(list(a.values()), 0).confidence_interval(0.95)
    return (np.mean(d), ci.low, ci.high), (np.mean(list(a.values())), ca.low, ca.high)


def test_fig2_paired_differences_to_lai_and_absolute(run):
    pd = fig2_fidelity.data(table(run, "fidelity"))
    fig = fig2_fidelity.draw(pd)
    rows = run[1]["fidelity"]
    axes = np.array(fig.axes).reshape(2, len(MODELS))
    ests = ["ghost", "lai", "lai-last", "tracin", "loss"]  # registry order, then loss; no lai-fit rows
    assert pd.meta["estimators"] == ests
    for j, model in enumerate(MODELS):
        for est in ests:
            diff, absolute = _paired_by_hand(rows, model, est)
            (ra,) = [r for r in pd.rows if (r["panel"], r["model"], r["estimator"]) == ("abs", model, est)]
            assert (ra["mean"], ra["low"], ra["high"]) == pytest.approx(absolute, rel=1e-9)
            if est == "lai":
                assert not [r for r in pd.rows if (r["panel"], r["model"], r["estimator"]) == ("diff", model, est)]
                continue
            (rd,) = [r for r in pd.rows if (r["panel"], r["model"], r["estimator"]) == ("diff", model, est)]
            assert (rd["mean"], rd["low"], rd["high"]) == pytest.approx(diff, rel=1e-9)
            for i, r in ((0, ra), (1, rd)):  # each drawn mark: at its value, interval as its bar, own row
                ax = axes[i, j]
                conts = [c for c in ax.containers if c.lines[0].get_gid() == f"{r['panel']}:{est}"]
                if r["clipped"]:
                    assert not conts and [t for t in ax.texts if t.get_gid() == f"clipped:{est}"]
                    continue
                (cont,) = conts
                assert cont.lines[0].get_xdata()[0] == pytest.approx(r["mean"], rel=1e-12)
                assert cont.lines[0].get_ydata()[0] == ests.index(est)
                (seg,) = cont.lines[2][0].get_segments()
                assert (seg[0, 0], seg[1, 0]) == pytest.approx((r["low"], r["high"]), rel=1e-9)
        # the bar and the zero line; zoomed difference axis: the approximate estimators' intervals fit inside
        assert [ln.get_xdata()[0] for ln in axes[0, j].lines if ln.get_linestyle() == "--"] == [fig2_fidelity.BAR]
        lo, hi = axes[1, j].get_xlim()
        for r in pd.rows:
            if r["panel"] == "diff" and r["model"] == model and fig2_fidelity.zoomed(r["estimator"]):
                assert lo <= r["low"] and r["high"] <= hi and not r["clipped"]
        assert lo < 0 < hi
        assert axes[0, j].get_title() == {"mlp": "MLP", "cnn1d": "CNN-1D", "transformer": "Transformer"}[model]
    assert "vs Exact" in axes[0, 0].get_xlabel() and "LAI" in axes[1, 0].get_xlabel()
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[1:] == ["Ghost", "LAI", "LAI (last layer)", "TracIn", "Loss only"]  # the registry's labels
    marks = {c.lines[0].get_gid(): (to_hex(c.lines[0].get_color()), c.lines[0].get_marker())
             for ax in axes[0] for c in ax.containers}
    assert len(marks) == len(ests)  # every estimator its own colour and its own marker
    assert len({v[0] for v in marks.values()}) == len(ests) and len({v[1] for v in marks.values()}) == len(ests)
    assert "95 % t interval" in legend.get_title().get_text()
    check_style(fig)


def test_fig2_one_seed_has_no_interval(run):
    fig = fig2_fidelity.figure(table(run, "fidelity").where(seed=0))
    title = fig.legends[0].get_title().get_text()
    assert "one seed" in title and "95 %" not in title


# ------------------------------------------------------------------------------------------- figure 3

def test_fig3_points_identity_and_layer_shares(run):
    pd = fig3_bound.data(table(run, "bound"), table(run, "bound_layers"))
    fig = fig3_bound.draw(pd)
    ax_d, ax_a, ax_l = fig.axes[:3]
    bound = run[1]["bound"]
    for ax, col in ((ax_d, "data_bound"), (ax_a, "apriori_bound")):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "(nats)" in ax.get_xlabel() and "|Ghost − LAI|" in ax.get_ylabel()
        ident = [ln for ln in ax.lines if ln.get_label() == "|error| = bound"][0]
        np.testing.assert_array_equal(ident.get_xdata(), ident.get_ydata())
        for model in MODELS:
            expect = sorted((r[col], r["abs_error"]) for r in bound
                            if r["model"] == model and r[col] is not None and r["abs_error"] > 0)
            coll = [c for c in ax.collections if c.get_gid() == f"points:{model}"]
            if not expect:
                assert not coll  # transformer: no a-priori bound
                continue
            assert sorted(map(tuple, coll[0].get_offsets().tolist())) == expect
        kept = [(r[col], r["abs_error"]) for r in bound if r[col] is not None and r["abs_error"] > 0]
        assert f"median |error|/bound {np.median([e / b for b, e in kept]):.2g}" in ax.get_xlabel()
        assert not ax.texts  # nothing written inside the axes (under the y = x line)
        # each axis fitted to its own data: a quarter decade beyond the extreme values
        b_all, e_all = [b for b, _ in kept], [e for _, e in kept]
        np.testing.assert_allclose(ax.get_xlim(), (min(b_all) / 10 ** 0.25, max(b_all) * 10 ** 0.25), rtol=1e-12)
        np.testing.assert_allclose(ax.get_ylim(), (min(e_all) / 10 ** 0.25, max(e_all) * 10 ** 0.25), rtol=1e-12)
    assert pd.meta["dropped"] == {"data": 2, "apriori": 2}  # the mlp's zero-error samples (2 steps)
    # per-layer panel: one bar per layer, its width the mean share, labelled "Model: layer"
    layers = run[1]["bound_layers"]
    labels = [t.get_text() for t in ax_l.get_yticklabels()]
    for model in MODELS:
        bars = [p for p in ax_l.patches if (p.get_gid() or "").startswith(f"layer:{model}:")]
        names = list(dict.fromkeys(r["layer"] for r in layers if r["model"] == model))
        assert [b.get_gid().split(":", 2)[2] for b in bars] == names
        means = [np.mean([r["share"] for r in layers if r["model"] == model and r["layer"] == n]) for n in names]
        np.testing.assert_allclose([b.get_width() for b in bars], means, rtol=1e-12)
        assert all(b.get_x() == 0 for b in bars)
    assert "Transformer: 0.attn.qkv" in labels and "MLP: 0" in labels
    assert "share of |Ghost − LAI|" in ax_l.get_xlabel()
    assert "no bound: Transformer" in ax_a.get_xlabel()  # no a-priori bound
    assert fig3_bound.short_layer_name("blocks.0.attn.qkv") == "0.attn.qkv"
    check_style(fig)


def test_fig3_without_layers_or_apriori(run):
    bound = table(run, "bound").where(model="transformer")
    fig = fig3_bound.figure(bound)
    assert len([a for a in fig.axes if a.get_xscale() == "log"]) == 2
    assert "not available" in " ".join(t.get_text() for t in fig.axes[1].texts)
    zero = Table([{**r, "abs_error": 0.0} for r in bound.rows], bound.columns)
    with pytest.raises(LookupError, match="positive error"):
        fig3_bound.data(zero)


# ------------------------------------------------------------------------------------------- figure 4

def test_fig4_pairs_steps_and_markers(run):
    fig = fig4_scatter.figure(table(run, "scores"))
    assert fig4_scatter.pick_steps(STEPS, 3) == [10, 30, 50]
    axes = np.array(fig.axes).reshape(len(MODELS), 3)
    src = run[1]["scores"]
    for i, model in enumerate(MODELS):
        for j, step in enumerate((10, 30, 50)):
            ax = axes[i, j]
            get = lambda est, s: [r["score"] for r in src if (r["model"], r["seed"], r["step"], r["estimator"],
                                                              r["sample"]) == (model, 0, step, est, s)][0]  # noqa: E731
            by_label = {c.get_label(): c.get_offsets() for c in ax.collections}
            for label, group in (("clean label", set(SAMPLES) - NOISY), ("noisy label", NOISY)):
                expect = sorted((get("ghost", s), get("lai", s)) for s in group)
                assert sorted(map(tuple, by_label[label].tolist())) == expect
            assert ax.get_title(loc="right").endswith(f"step {step}")
            rho = spearmanr([get("ghost", s) for s in SAMPLES], [get("lai", s) for s in SAMPLES]).statistic
            assert ax.texts[0].get_text() == f"ρ = {rho:.2f}"
    assert axes[-1, 0].get_xlabel() == "Ghost score (nats)" and axes[0, 0].get_ylabel() == "LAI score (nats)"
    check_style(fig)


# ------------------------------------------------------------------------------------------- figure 5

def test_fig5_sweeps(run):
    pd = fig5_cost.data(table(run, "cost"), width_units={"mlp": "hidden units"})
    fig = fig5_cost.draw(pd)
    axes = np.array(fig.axes).reshape(len(MODELS), 4)
    src = run[1]["cost"]
    for i, model in enumerate(MODELS):
        widths = sorted({r["width"] for r in src if r["model"] == model})
        for j, (value, sweep) in enumerate(fig5_cost.PANELS):
            ax = axes[i, j]
            column = "ratio_to_train_step" if value == "time_ratio" else "peak_ratio_to_train_step"
            fixed = ("width", widths[-1]) if sweep == "batch" else ("batch", 32)
            for est in ("lai", "exact", "forward"):
                ln = [ln for ln in ax.lines if ln.get_gid() == f"{value}:{sweep}:{est}"][0]
                rows = sorted((r for r in src if r["model"] == model and r["estimator"] == est
                               and r[fixed[0]] == fixed[1]), key=lambda r: r[sweep])
                np.testing.assert_array_equal(ln.get_xdata(), [r[sweep] for r in rows])
                np.testing.assert_allclose(ln.get_ydata(), [r[column] for r in rows], rtol=1e-12)
            assert not [ln for ln in ax.lines if "train_step" in (ln.get_gid() or "")]  # the baseline is the line at 1
            assert [ln.get_ydata()[0] for ln in ax.lines if ln.get_label() == "1× training step"] == [1.0]
            for ref, label in (("forward", "1× forward pass"), ("forward_backward", "1× forward+backward")):
                (ln,) = [ln for ln in ax.lines if ln.get_gid() == f"{value}:{sweep}:{ref}"]
                assert ln.get_label() == label and to_hex(ln.get_color()) == to_hex(GREY)
            bars = [c for c in ax.collections if (c.get_gid() or "").startswith("spread:")]
            if value == "memory_ratio":  # one measurement: no bar
                assert not bars
                continue
            for est in ("lai", "exact"):  # the bar: 25th-75th percentile of the repeats over the step's median
                (bar,) = [c for c in ax.collections if c.get_gid() == f"spread:{sweep}:{est}"]
                rows = sorted((r for r in src if r["model"] == model and r["estimator"] == est
                               and r[fixed[0]] == fixed[1]), key=lambda r: r[sweep])
                for seg, r in zip(bar.get_segments(), rows):
                    q = np.percentile(r["times_s"], [25, 75]) * r["ratio_to_train_step"] / r["median_s"]
                    assert seg[0, 0] == r[sweep] and (seg[0, 1], seg[1, 1]) == pytest.approx(tuple(q), rel=1e-9)
                    assert seg[0, 1] < r["ratio_to_train_step"] < seg[1, 1]
            assert ax.get_yscale() == "log"
            lo, hi = ax.get_ylim()
            shown = [t for t in ax.get_yticks() if lo <= t <= hi]
            assert len(shown) >= 3 and all("10^" not in lab.get_text() and "times" not in lab.get_text()
                                           for lab in ax.get_yticklabels())
            assert ax.get_xlabel() == ("batch size (samples)" if sweep == "batch"
                                       else f"width ({ {'mlp': 'hidden units', 'cnn1d': 'channels', 'transformer': 'd_model'}[model]})")
    assert "time / training step" in axes[0, 0].get_ylabel() and "peak memory" in axes[0, 2].get_ylabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"LAI", "Ghost", "Exact", "1× training step", "1× forward pass", "1× forward+backward"} <= set(labels)
    check_style(fig)


# ------------------------------------------------------------------------------------------- figure 7

def test_fig7_intervals_and_layer_gains(run):
    from scipy.stats import spearmanr as sp

    pd = fig7_layers.data(table(run, "scores"), table(run, "layer_terms"))
    fig = fig7_layers.draw(pd)
    ax_f, ax_l = fig.axes[:2]
    src = run[1]["scores"]
    for model in MODELS:
        for est in ("lai", "lai-last", "lai-fit"):
            row = [r for r in pd.rows if (r["panel"], r["model"], r.get("estimator")) == ("fidelity", model, est)][0]
            get = lambda e, seed, step: [x["score"] for x in sorted(  # noqa: E731
                (x for x in src if (x["model"], x["seed"], x["step"], x["estimator"]) == (model, seed, step, e)),
                key=lambda x: x["sample"])]
            direct = np.mean([sp(get(est, seed, step), get("exact", seed, step)).statistic
                              for seed in (0, 1) for step in STEPS])
            assert row["value"] == pytest.approx(direct, rel=1e-12) and row["low"] <= row["value"] <= row["high"]
            assert "bootstrap" in row["method"]
    bar = {p.get_gid(): p.get_width() for p in ax_l.patches}
    lt = run[1]["layer_terms"]
    for model in MODELS:
        base = {(r["seed"], r["step"]): r["rho_fixed"] for r in lt if r["model"] == model and r["is_last"]}
        for name in {r["layer"] for r in lt if r["model"] == model and not r["is_last"]}:
            gains = [r["rho_fixed"] - base[(r["seed"], r["step"])] for r in lt
                     if r["model"] == model and r["layer"] == name]
            assert bar[f"layer:{model}:{name}"] == pytest.approx(np.mean(gains), rel=1e-12)
        assert f"layer:{model}:head" not in bar  # the last layer's term is exact: no bar
    assert "Spearman ρ vs Exact" in ax_f.get_ylabel()
    assert [ln.get_label() for ln in ax_f.lines if ln.get_linestyle() == "--"] == ["Ghost (= Exact)"]
    check_style(fig)
    without = fig7_layers.figure(table(run, "scores"))  # no layer_terms.csv: panel (a) alone
    assert len(without.axes) == 1


# ------------------------------------------------------------------------------------------- figure 6

def test_fig6_from_curation_units(tmp_path):
    # the paired-difference figure itself is tested in tests/test_curation_figure.py; here: the loader picks the
    # folder with most units per (task, protocol) and the figure draws from the old-style units (no protocol)
    write_curation(tmp_path, "mnist1d-noisy20", 0.2, _finals(0.2))
    write_curation(tmp_path, "mnist1d-noisy40", 0.4, _finals(0.4))
    old = write_curation(tmp_path, "mnist1d-noisy40", 0.4, {("vanilla", 0): 0.01}, cid="old")
    res = load_curation(tmp_path)
    assert old in res.ignored and len(res.folders) == 2 and res.final.unique("protocol") == ["ours"]
    assert family_of("mnist1d-noisy40-classdep") == "mnist1d-classdep"
    pd = fig6_curation.data(res.final, res.curves)
    fig = fig6_curation.draw(pd)
    diff = pd.table().where(panel="vanilla", task="mnist1d-noisy40", method="lai")
    expect = np.mean([100 * (_finals(0.4)[("lai", s)] - _finals(0.4)[("vanilla", s)]) for s in range(3)])
    assert diff.rows[0]["mean"] == pytest.approx(expect, rel=1e-12)
    check_style(fig)


# ---------------------------------------------------------------------------------------- command line

def test_cli_draws_every_figure_with_its_data(tmp_path, capsys):
    folder = tmp_path / "results" / "quick-aaaaaaaaaa"
    write_run(folder, models=("mlp",))  # one model keeps the layouts small; the figure tests cover several
    write_curation(tmp_path / "results", "mnist1d-noisy20", 0.2, _finals(0.2))
    older = tmp_path / "results" / "quick-bbbbbbbbbb"
    write_run(older, seed=1, models=("mlp",))
    os.utime(older / "summary.json", (1, 1))
    assert newest_run(tmp_path / "results") == folder
    assert main(["--results", str(tmp_path / "results"), "--formats", "png", "--dpi", "30"]) == 0
    out = capsys.readouterr().out
    figs = folder / "figures"
    for stem in ("fig1_dynamics", "fig2_fidelity", "fig3_bound", "fig4_scatter", "fig5_cost", "fig6_curation",
                 "fig7_layers"):
        assert (figs / f"{stem}.png").stat().st_size > 0 and f"drawn   {stem}" in out
        assert (figs / f"{stem}.csv").is_file()
    assert not [p for p in figs.iterdir() if p.name.startswith(".")]  # no temporary files left
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in figs.iterdir()} == {0o666 & ~mask}
    assert "7 of 7 figures drawn" in out
    # the CSV is the plotted data: fig2's mean column equals the means drawn from the same results
    csv = Table.read(figs / "fig2_fidelity.csv")
    pd = fig2_fidelity.data(table((folder,), "fidelity"))
    assert csv.columns == fig2_fidelity.COLUMNS and len(csv) == len(pd.rows)
    np.testing.assert_allclose(csv.array("mean"), [r["mean"] for r in pd.rows], rtol=0, atol=0)


def test_cli_reports_missing_results(tmp_path, capsys, monkeypatch):
    from paper_figs import figures

    monkeypatch.setattr(figures, "STORED", tmp_path / "no-stored-tables")  # else fig6 uses the stored tables
    folder = tmp_path / "quick-cccccccccc"
    write_run(folder, skip=("bound", "bound_layers"), models=("mlp",))
    (folder / "units").mkdir()  # a run folder with units is resumed; a stored folder (no units) is not
    code = main(["--results", str(folder), "--formats", "png", "--dpi", "30", "--only", "1,3,6"])
    out = capsys.readouterr().out
    assert code == 1
    assert "drawn   fig1_dynamics" in out and "skipped fig3_bound" in out and "skipped fig6_curation" in out
    assert f"lai run --resume {folder} --suite bound" in out
    assert "lai curate --profile quick" in out
    assert (folder / "figures" / "fig1_dynamics.png").is_file() and not (folder / "figures" / "fig3_bound.png").exists()
    # only the curated-training figure missing: still exit status 0
    write_run(folder, models=("mlp",))
    assert main(["--results", str(folder), "--formats", "png", "--dpi", "30", "--only", "3,6"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["--results", str(tmp_path / "empty")]) == 1  # a results root without runs: the commands to run
    assert "lai run --profile quick" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a folder that does not exist: a usage error
        main(["--results", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "no such folder" in capsys.readouterr().err


def test_pdf_output(run, tmp_path):
    from paper_figs.plotdata import save_figure

    pd = fig1_dynamics.data(table(run, "scores"))
    paths = save_figure(fig1_dynamics.draw(pd), pd, tmp_path, "f", ("pdf",))
    assert [p.name for p in paths] == ["f.pdf", "f.csv"] and paths[0].read_bytes().startswith(b"%PDF")
    assert json.dumps(pd.meta)  # the choices behind a figure are plain data


def test_cli_run_produces_results_first(tmp_path, monkeypatch, capsys):
    """``--run quick`` calls the validation run (its last stdout line is the run folder) and the curation
    commands with the same results root, then draws from the folder the run printed."""
    from paper_figs import cli
    from paper_figs.figures import CURATION_COMMANDS

    root = tmp_path / "res"
    calls = []

    def fake_run(cmd, quiet=False):
        calls.append(cmd[1:])
        if cmd[2:4] == ["lai", "run"]:
            folder = root / "quick-dddddddddd"
            write_run(folder, models=("mlp",))
            return 0, f"progress\n{folder}\n"
        return 3, ""  # a failing curation command is reported, not fatal

    monkeypatch.setattr(cli, "_run", fake_run)
    code = main(["--results", str(root), "--run", "quick", "--formats", "png", "--dpi", "30", "--only", "1,6"])
    out = capsys.readouterr().out
    assert code == 0
    # the curation commands run in a second process next to the validation run
    assert [c for c in calls if c[2] == "run"] == [["-m", "lai", "run", "--profile", "quick", "--out", str(root)]]
    assert [c[3:] for c in calls if c[2] == "curate"] == [[*a, "--out", str(root)] for a in CURATION_COMMANDS["quick"]]
    assert (root / "quick-dddddddddd" / "figures" / "fig1_dynamics.png").is_file()
    # the failed curation command is reported; figure 6 then falls back to the stored curation tables, if any
    assert "exited with status 3" in out and ("skipped fig6_curation" in out or "drawn   fig6_curation" in out)
    # the run's report is rewritten after the curation commands, with its curated-training section
    assert "## Curated training" in (root / "quick-dddddddddd" / "report.md").read_text()
