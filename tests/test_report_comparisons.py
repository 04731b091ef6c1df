"""The report compares (validation/report: checks.py, verdict.py, summary.py): on synthetic results where the answer is known,
each expectation is a paired comparison with its interval (a method better on every seed -> interval above 0;
equal -> interval covers 0 -> "no difference shown"), "ranks like Exact" is judged at Spearman >= 0.9, the
README's cost ranges are met only inside them, the first-order caveat and the bottom lines open the verdict, and
the software (theory) checks are labelled as such and come last."""

from __future__ import annotations

import numpy as np
import pytest

import validation.report.summary as report
import validation.report.verdict as render
from validation.report.checks import bar_status, best_cheap, comparisons, cost_claims
from validation.report.results import RunDir
from validation.report.summary import summarize

SEEDS = (0, 1, 2, 3)
STEPS = (10, 20)
N = 40
SOFTWARE = "- **Software checks (regression tests of the implementation), not evidence for the paper's claim**"


def _scores(rng: np.random.Generator, *, lai_noise: float = 1.0, last_noise: float | None = 0.3,
            loss_sep: float = 3.0, lai_sep: float = 0.0) -> list[dict]:
    """Per seed and step: exact; lai = exact + noise; lai-last = exact + less noise (or the same scores as LAI
    when ``last_noise`` is None); loss separating the noisy samples by ``loss_sep``."""
    noisy = np.zeros(N, dtype=bool)
    noisy[: N // 4] = True
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            exact = rng.normal(size=N)
            lai = exact + lai_noise * rng.normal(size=N) - lai_sep * noisy
            last = lai.copy() if last_noise is None else exact + last_noise * rng.normal(size=N)
            est = {"exact": exact, "ghost": exact.copy(), "lai": lai, "lai-last": last,
                   "loss": -(loss_sep * noisy + rng.normal(size=N))}
            rows += [{"model": "mlp", "seed": seed, "step": step, "sample": i, "is_noisy": int(noisy[i]),
                      "estimator": e, "score": float(v[i])} for e, v in est.items() for i in range(N)]
    return rows


def _fidelity(cf: float, cf_small: float) -> list[dict]:
    """Exact vs the one-step counterfactual targets, the same Spearman at every seed and step but for a wobble."""
    rows = []
    for seed in SEEDS:
        for step in STEPS:
            for target, v in (("counterfactual", cf), ("counterfactual_small_lr", cf_small)):
                rows.append({"model": "mlp", "seed": seed, "step": step, "estimator": "exact", "target": target,
                             "n": N, "k": 4, "spearman": v + 0.01 * (seed - 1.5), "kendall": None,
                             "topk_overlap": None, "bottomk_overlap": None, "sign_agreement": None})
    return rows


def _run(tmp_path, scores: list[dict], fidelity: list[dict] | None = None) -> RunDir:
    rd = RunDir(tmp_path / "run")
    rd.init({"profile": "test", "seeds": list(SEEDS), "device": "cpu", "models": {}})
    for seed in SEEDS:
        for step in STEPS:
            tables = {"scores": [r for r in scores if (r["seed"], r["step"]) == (seed, step)]}
            if fidelity:
                tables["fidelity"] = [r for r in fidelity if (r["seed"], r["step"]) == (seed, step)]
            rd.write_unit("fidelity", "mlp", f"step{step}", {"tables": tables}, seed)
    return rd


def _find(s: dict, question: str, a: str, b: str = "lai") -> dict:
    return next(c for c in s["comparisons"] if (c["question"], c["a"], c["b"]) == (question, a, b))


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def test_last_layer_better_on_every_seed_is_said_with_an_interval_above_zero(tmp_path, rng):
    s = summarize(_run(tmp_path, _scores(rng, lai_noise=1.0, last_noise=0.2)))
    c = _find(s, "fidelity", "lai-last")
    assert c["finding"] == "a" and c["low"] > 0 and c["method"] == f"paired t over {len(SEEDS)} seeds"
    assert c["best"]  # the only cheap rival present is the best cheap estimator
    by = {x["name"]: x for x in s["checks"]}
    check = by["mlp: LAI ranks closer to Exact than LAI (last layer) (the best cheap estimator)"]
    assert check["status"] == "fail" and "LAI (last layer) better" in check["detail"]
    text = "\n".join(s["verdict"])
    assert f"last-layer LAI ranks closer to Exact on mlp (+{c['value']:.2f} [+{c['low']:.2f}, +{c['high']:.2f}])" \
        in text
    assert "the layer-aware sum (all-layer over last-layer LAI) does not help on 1 of 1 models" in text


def test_each_top_layers_member_is_compared_with_lai(tmp_path, rng):
    rows = _scores(rng, lai_noise=1.0)
    extra = []
    for r in rows:
        if r["estimator"] == "exact":
            extra.append({**r, "estimator": "exact-top2", "score": r["score"]})  # ranks exactly like Exact
    s = summarize(_run(tmp_path, rows + extra))
    c = _find(s, "fidelity", "exact-top2")
    assert c["family"] == "top-layers" and c["finding"] == "a" and c["best"]  # also the best cheap estimator
    assert "exact-top2" in report.top_layers() and "exact-top2" in report.cheap_rivals()
    assert "el2n" not in report.cheap_rivals() and "lai" not in report.cheap_rivals()
    text = "\n".join(s["verdict"])
    assert "other estimators ranking closer to Exact than LAI (paired interval above 0): " in text


def test_equal_estimators_cover_zero_and_show_no_difference(tmp_path, rng):
    s = summarize(_run(tmp_path, _scores(rng, last_noise=None)))
    c = _find(s, "fidelity", "lai-last")
    assert c["value"] == pytest.approx(0.0, abs=1e-12) and c["low"] <= 0 <= c["high"] and c["finding"] == "none"
    by = {x["name"]: x for x in s["checks"]}
    assert by["mlp: LAI ranks closer to Exact than LAI (last layer) (the best cheap estimator)"]["status"] == \
        "inconclusive"
    assert "no difference shown on mlp" in "\n".join(s["verdict"])


def test_ranks_like_exact_is_judged_at_the_projects_bar():
    assert report.RANK_BAR == 0.9
    assert bar_status({"value": 0.88, "low": 0.87, "high": 0.89}) == "fail"  # would have passed "> 0.5"
    assert bar_status({"value": 0.57, "low": 0.51, "high": 0.64}) == "fail"
    assert bar_status({"value": 0.92, "low": 0.88, "high": 0.96}) == "inconclusive"  # the mean clears, not the CI
    assert bar_status({"value": 0.95, "low": 0.91, "high": 0.99}) == "pass"
    assert bar_status(None) == "not run"


def test_the_bar_in_a_summary(tmp_path, rng):
    s = summarize(_run(tmp_path, _scores(rng, lai_noise=1.0)))  # LAI ~0.7 vs Exact
    by = {x["name"]: x for x in s["checks"]}
    c = by["mlp: LAI ranks like Exact (mean Spearman >= 0.9)"]
    assert c["status"] == "fail" and "below the 0.9 bar" in c["detail"] and "does not clear it" in c["detail"]
    assert "reaches the project's bar (mean Spearman vs Exact >= 0.9) on 0 of 1 models" in s["verdict"][1]


def test_detection_compares_lai_with_the_loss_paired(tmp_path, rng):
    s = summarize(_run(tmp_path, _scores(rng, loss_sep=4.0, lai_sep=0.0)))
    c = _find(s, "detection", "loss")
    assert c["finding"] == "a" and c["low"] > 0
    by = {x["name"]: x for x in s["checks"]}
    assert by["mlp: LAI flags noisy labels better than the loss-only baseline"]["status"] == "fail"
    assert "the training loss alone finds the noisy labels better than LAI on 1 of 1 models" in s["verdict"][2]
    s = summarize(_run(tmp_path / "b", _scores(rng, loss_sep=0.0, lai_sep=4.0)))
    assert _find(s, "detection", "loss")["finding"] == "b"


def test_best_cheap_estimator_is_the_best_non_exact_rival_present():
    est = {"lai": {"value": 0.9}, "lai-last": {"value": 0.8}, "tracin-last": {"value": 0.85},
           "exact": {"value": 1.0}, "ghost": {"value": 1.0}, "tracin": {"value": 0.99}, "el2n": {"value": 0.95},
           "loss": {"value": 0.97}}
    assert best_cheap(est) == "tracin-last"  # not LAI itself, not Exact's equals, not the rankings
    est["exact-top2"] = {"value": 0.93}
    assert best_cheap(est) == "exact-top2"
    assert best_cheap({"lai": {"value": 0.5}}) is None


def test_cost_claims_have_no_slack(monkeypatch):
    from validation.report.checks import README_COST

    monkeypatch.setitem(README_COST, "lai", ("forward", "a forward pass", (1.3, 2.1)))  # ranges the test is
    monkeypatch.setitem(README_COST, "ghost", ("forward_backward", "a forward+backward", (0.9, 1.3)))  # written for
    assert not hasattr(render, "CLAIM_SLACK")
    ratios = {"mlp": {"forward": 1.0, "lai": 1.5, "forward_backward": 1.0, "ghost": 2.6},
              "cnn2d": {"forward": 1.0, "lai": 2.2, "forward_backward": 1.0, "ghost": 0.85},
              "cnn1d": {"forward": 1.0, "lai": 2.1, "forward_backward": 1.0, "ghost": 1.31}}
    s = {"cost_ratio_to_train_step": ratios, "cost_headline": {}}
    got = {(c["estimator"], c["model"]): c for c in cost_claims(s)}
    assert got[("lai", "mlp")]["met"] and got[("lai", "cnn1d")]["met"]  # inside 1.3-2.1, the upper end included
    assert not got[("lai", "cnn2d")]["met"] and got[("lai", "cnn2d")]["miss"] == pytest.approx(0.1)
    assert not got[("ghost", "mlp")]["met"] and got[("ghost", "mlp")]["miss"] == pytest.approx(1.3)  # 2x was "met"
    assert not got[("ghost", "cnn1d")]["met"]  # 1.31 against 0.9-1.3
    assert not got[("ghost", "cnn2d")]["met"] and got[("ghost", "cnn2d")]["miss"] == pytest.approx(-0.05)
    text = "\n".join(render._cost_lines(s))
    assert "mlp 2.60x misses by 1.30x (above 0.9-1.3x)" in text and "cnn2d 0.85x misses by 0.05x (below" in text
    bottom = render._cost_bottom(s)
    assert "hold on 2 of 6 model/estimator pairs" in bottom and "Ghost on mlp 2.60x a forward+backward against " \
        "0.9-1.3x (misses by 1.30x)" in bottom


def test_software_checks_are_labelled_and_not_first(tmp_path, rng):
    from test_report import _step_row

    rd = _run(tmp_path, _scores(rng), _fidelity(0.48, 0.99))
    for step in STEPS:
        rd.write_unit("bound", "mlp", f"step{step}", {"tables": {"bound_steps": [_step_row("mlp", step)]}}, 0)
    s = report.write_report(rd)
    v = s["verdict"]
    assert v[0] == "- **Bottom lines**:" and "Theory" not in v[0]
    soft = [i for i, line in enumerate(v) if line.startswith(SOFTWARE)]
    assert soft == [len(v) - 1] and "none failed; 3 passed" in v[-1]
    kinds = [c["kind"] for c in s["checks"]]
    assert kinds.index("theory") > max(i for i, k in enumerate(kinds) if k != "theory")  # theory checks last
    md = (rd.root / "report.md").read_text()
    assert "| Ghost equals Exact (float64) | software check | PASS |" in md
    assert "regression tests of the implementation, not evidence for the paper's claim" in md


def test_first_order_caveat_in_the_verdict_with_the_numbers(tmp_path, rng):
    s = summarize(_run(tmp_path, _scores(rng), _fidelity(0.48, 0.99)))
    fo = s["first_order"]["mlp"]
    assert fo["counterfactual"]["value"] == pytest.approx(0.48) and fo["counterfactual_small_lr"]["value"] == \
        pytest.approx(0.99)
    assert fo["counterfactual"]["method"] == f"t over {len(SEEDS)} seeds"
    bottom = next(line for line in s["verdict"] if "First-order caveat:" in line)
    assert "Spearman 0.48 at the training lr and 0.99 at lr/10 (mlp)" in bottom
    assert any(line.startswith("- **First-order caveat**") for line in s["verdict"])


def _cur(method: str, diff: float, low: float, high: float, task: str = "t1") -> dict:
    return {"task": task, "protocol": "ours", "method": method, "metric": "accuracy", "n": 10, "diff": diff,
            "low": low, "high": high, "vanilla_mean": 40.0, "method_mean": 40.0 + diff, "p": 0.01, "wins": 5,
            "ties": 0, "losses": 5, "kept_fraction": 0.6, "noise_recall": 0.5}


def test_curation_compares_each_method_with_lai_and_vanilla_by_the_paired_interval(tmp_path, rng, monkeypatch):
    vanilla = [_cur("lai", 3.0, 1.0, 5.0), _cur("lai-last", 5.0, 3.0, 7.0), _cur("ghost", 3.5, 1.0, 6.0),
               _cur("small-loss", 8.0, 6.0, 10.0), _cur("oracle", 15.0, 14.0, 16.0)]
    # ghost's point estimate is above LAI's, but its paired interval vs LAI covers 0: not in "Beat LAI"
    vs_lai = [_cur("vanilla", -3.0, -5.0, -1.0), _cur("lai-last", 2.0, 0.5, 3.5), _cur("ghost", 0.5, -0.6, 1.6),
              _cur("small-loss", 5.0, 3.0, 7.0), _cur("oracle", 12.0, 11.0, 13.0)]
    monkeypatch.setattr(report, "curation_rows", lambda folder: (vanilla, "from test"))
    monkeypatch.setattr(report, "curation_lai_rows", lambda folder: vs_lai)
    monkeypatch.setattr(report, "find_curation", lambda rd: tmp_path)
    s = summarize(_run(tmp_path, _scores(rng)))
    cs = comparisons(s)
    assert {(c["a"], c["b"]) for c in cs if c["question"] == "curation"} >= {
        ("lai", "vanilla"), ("lai-last", "lai"), ("ghost", "lai"), ("vanilla", "lai")}
    assert not any(c["a"] == "oracle" for c in cs)
    line = next(x for x in s["verdict"] if x.startswith("  - t1 (ours protocol"))
    assert "Beat LAI: lai-last +2.0 pp [+0.5, +3.5], small-loss (oracle rate) +5.0 pp [+3.0, +7.0]." in line
    assert "ghost" not in line.split("Beat LAI")[1]
    by = {x["name"]: x for x in s["checks"]}
    assert by["t1 (ours): LAI curation beats vanilla"]["status"] == "pass"
    assert by["t1 (ours): LAI curation beats LAI (last layer)"]["status"] == "fail"
    bottom = next(x for x in s["verdict"] if "Curation:" in x)
    assert "LAI beats vanilla on 1 of 1 task/protocols" in bottom
    assert "loses to it on 1 (t1 (ours) (+2.0 [+0.5, +3.5]))" in bottom
