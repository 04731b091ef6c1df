"""The curation table's further pairs (validation/report/curation_pairs.py) and their words
(validation/report/curation_words.py): on a fake ``lai curate`` folder with known per-seed finals, the paired
differences and intervals equal a direct scipy computation, the best layer-aware member is the registry's
layer-aware method with the highest mean (never Ghost), each method is paired with its own rate-matched random,
vanilla's plateau is counted, unknown method names do not crash, and the bottom lines say a clear win, a clear
loss and a tie as such. The detection clause pairs the combined rank loss+lai-last with the loss."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from validation.report.curation import export, load_curation, paired
from validation.report.curation_pairs import is_layer_aware, method_label, rate_control
from validation.report.curation_words import curation_bottoms, task_lines
from validation.report.evidence import combined_auroc_difference

TASK = "mnist1d-noisy40"
SEEDS = list(range(10))
JITTER = np.array([0.002, -0.001, 0.003, -0.002, 0.001, -0.003, 0.002, -0.001, 0.0, -0.001])
#: method -> offset over vanilla's final (fraction); ghost is above every layer-aware member but not one of them
OFFSET = {"vanilla": 0.0, "lai": 0.03, "lai-last": 0.04, "exact-top2": 0.05, "ghost": 0.08, "random": -0.005,
          "random-as-lai-last": 0.0, "small-loss": 0.10, "new-est": 0.01, "random-as-new-est": 0.0, "oracle": 0.2}
OLD_PAIRED = ["task", "family", "dataset", "model", "noise", "rate", "protocol", "method", "metric", "n",
              "vanilla_mean", "method_mean", "diff", "sd", "se", "low", "high", "p", "wins", "ties", "losses",
              "kept_fraction", "noise_recall", "drop_precision", "rate_matched_to", "seeds"]


def _final(method: str, seed: int) -> float:
    base = 0.40 + 0.01 * math.sin(seed)
    if method == "random-as-exact-top2":  # a tie with exact-top2: the same plus a jitter that averages to 0
        return _final("exact-top2", seed) + (0.003 if seed % 2 else -0.003)
    k = sorted(OFFSET).index(method) if method in OFFSET else 0
    return base + OFFSET[method] + (0.0 if method == "vanilla" else JITTER[(seed + k) % len(JITTER)])


def _methods() -> list[str]:
    return [*OFFSET, "random-as-exact-top2"]


@pytest.fixture
def folder(tmp_path):
    run = tmp_path / "curate" / f"{TASK}-ours-abc"
    (run).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": {
        "name": TASK, "dataset": "mnist1d", "model": "mlp", "noise": {"kind": "symmetric", "rate": 0.4},
        "epochs": 5, "protocol": "ours"}}))
    for seed in SEEDS:
        d = run / "units" / "curate" / TASK / f"seed{seed}"
        d.mkdir(parents=True)
        for m in _methods():
            f = _final(m, seed)
            bv = f + (0.03 if m == "vanilla" else 0.01)
            held = not (m == "vanilla" and seed == 3)
            (d / f"{m}.json").write_text(json.dumps({
                "task": TASK, "method": m, "seed": seed, "metric": "accuracy", "final": f,
                "curve": [0.3, 0.35, 0.38, 0.39, f], "best_val_test": bv, "best_val_epoch": 3,
                "plateau_held": held, "plateau_gain": -0.01 if held else 0.02,
                "kept_fraction": 1.0 if m == "vanilla" else 0.6, "protocol": "ours",
                "noise": {"kind": "symmetric", "rate": 0.4}}))
    return tmp_path / "curate"


def _ci(a: str, b: str, key: str = "final") -> tuple[float, float, float]:
    """Direct scipy: mean and 95 % t interval of 100 * (a - b) over the seeds."""
    if key == "final":
        d = np.array([100 * (_final(a, s) - _final(b, s)) for s in SEEDS])
    else:
        bva = np.array([_final(a, s) + (0.03 if a == "vanilla" else 0.01) for s in SEEDS])
        bvb = np.array([_final(b, s) + (0.03 if b == "vanilla" else 0.01) for s in SEEDS])
        d = 100 * (bva - bvb)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    return float(d.mean()), float(ci.low), float(ci.high)


def _rows(folder) -> dict[str, dict]:
    return {r["method"]: r for r in paired(load_curation(folder).final)}


def test_labels_and_layer_awareness_by_the_registry():
    assert method_label("random-as-lai-last") == "random (rate of lai-last)"
    assert method_label("random") == "random (rate of lai)"
    assert method_label("small-loss") == "small-loss (oracle rate)"
    assert method_label("small-loss-est") == "small-loss (estimated rate)"
    assert method_label("some-later-method") == "some-later-method"
    assert all(is_layer_aware(m) for m in ("lai", "lai-last", "exact-top2"))
    assert not any(is_layer_aware(m) for m in ("ghost", "exact", "random-as-lai", "new-est", "lai-topk",
                                                "loss+lai-last", "small-loss", "vanilla"))
    assert rate_control("lai", {"lai", "random"}) == "random"
    assert rate_control("lai-last", {"lai-last", "random", "random-as-lai-last"}) == "random-as-lai-last"
    assert rate_control("exact-top2", {"exact-top2", "random"}) is None


def test_pairs_equal_scipy_and_pick_the_best_layer_aware_member(folder):
    rows = _rows(folder)
    assert set(rows) == set(_methods()) - {"vanilla"}  # unknown names (new-est, random-as-new-est) included
    for m in ("lai", "ghost", "small-loss", "new-est"):
        mean, lo, hi = _ci(m, "vanilla")
        assert rows[m]["diff"] == pytest.approx(mean) and rows[m]["low"] == pytest.approx(lo)
        assert rows[m]["high"] == pytest.approx(hi)
    # exact-top2 has the highest mean among lai / lai-last / exact-top2; ghost is higher but not layer-aware
    assert {r["best_layer_aware"] for r in rows.values()} == {"exact-top2"}
    assert rows["ghost"]["best_layer_aware_mean"] == pytest.approx(
        100 * np.mean([_final("exact-top2", s) for s in SEEDS]))
    for m in ("lai", "ghost", "small-loss"):
        mean, lo, hi = _ci(m, "exact-top2")
        r = rows[m]
        assert (r["vs_best_diff"], r["vs_best_low"], r["vs_best_high"]) == pytest.approx((mean, lo, hi))
        assert r["vs_best_n"] == len(SEEDS)
        mean, lo, hi = _ci(m, "vanilla", "bv")
        assert (r["bv_diff"], r["bv_low"], r["bv_high"]) == pytest.approx((mean, lo, hi))
        mean, lo, hi = _ci(m, "exact-top2", "bv")
        assert (r["bv_best_diff"], r["bv_best_low"], r["bv_best_high"]) == pytest.approx((mean, lo, hi))
    assert rows["exact-top2"]["vs_best_diff"] is None  # the member itself is the reference
    # each method against its own rate-matched random; lai against plain random
    for m, rc in (("lai", "random"), ("lai-last", "random-as-lai-last"), ("exact-top2", "random-as-exact-top2"),
                  ("new-est", "random-as-new-est")):
        mean, lo, hi = _ci(m, rc)
        r = rows[m]
        assert r["random_control"] == rc
        assert (r["vs_random_diff"], r["vs_random_low"], r["vs_random_high"]) == pytest.approx((mean, lo, hi))
    assert rows["exact-top2"]["vs_random_low"] < 0 < rows["exact-top2"]["vs_random_high"]  # the tie
    assert rows["small-loss"]["random_control"] == ""
    assert rows["random-as-lai-last"]["rate_matched_to"] == "lai-last"
    assert rows["random"]["rate_matched_to"] == "lai"
    # vanilla's plateau: held on 9 of 10 seeds, the largest gain 2 pp, 5 epochs
    assert {r["vanilla_plateau"] for r in rows.values()} == {"9/10"}
    assert rows["lai"]["vanilla_plateau_gain"] == pytest.approx(2.0) and rows["lai"]["epochs"] == "5"


def test_export_adds_columns_and_the_stored_folder_reads_back(folder, tmp_path):
    out = export(folder, tmp_path / "stored")
    with open(out / "paired.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(OLD_PAIRED)] == OLD_PAIRED  # only added columns, none removed or renamed
    assert {"best_layer_aware", "vs_best_diff", "bv_diff", "bv_best_diff", "vs_random_diff",
            "vanilla_plateau"} <= set(header)
    with open(out / "units.csv", newline="") as f:
        assert {"best_val_test", "plateau_held", "plateau_gain"} <= set(next(csv.reader(f)))
    md = (out / "paired.md").read_text()
    assert "method − best layer-aware" in md and "| mnist1d-noisy40 | ours | lai |" in md
    again = {r["method"]: r for r in paired(load_curation(out).final)}
    assert again["lai"]["vs_best_diff"] == pytest.approx(_rows(folder)["lai"]["vs_best_diff"])
    assert again["lai"]["vanilla_plateau"] == "9/10"


def test_stored_folder_without_the_new_fields_still_pairs(tmp_path):
    """A stored folder written before the convergence fields existed (units.csv without best_val_test,
    best_val_epoch, plateau_held, plateau_gain) still pairs; made here from the committed one."""
    import csv
    import shutil

    from validation.report.curation import STORED

    old = tmp_path / "old"
    shutil.copytree(STORED, old)
    with open(old / "units.csv", newline="") as f:
        units = list(csv.DictReader(f))
    new_fields = ("best_val_test", "best_val_epoch", "plateau_held", "plateau_gain", "matched_to")
    keep = [k for k in units[0] if k not in new_fields]
    with open(old / "units.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(units)
    rows = paired(load_curation(old).final)
    assert len(rows) and all(r["bv_diff"] is None and r["vanilla_plateau"] is None for r in rows)
    assert all(r["best_layer_aware"] in ("lai", "lai-last", "exact-top2") for r in rows)


def test_plain_random_pairs_with_the_method_its_run_matched(folder, tmp_path):
    """``lai curate --match lai-last``: plain ``random`` kept lai-last's fraction, so it is lai-last's control (and
    LAI has none), as the run folder's config records; the stored folder keeps that (``matched_to``). With
    ``--keep-fraction`` nothing is matched and no method has a random control."""
    cfg = folder / f"{TASK}-ours-abc" / "config.json"
    for m in [m for m in _methods() if m.startswith("random-as-")]:  # only plain random left
        for seed in SEEDS:
            (folder / f"{TASK}-ours-abc" / "units" / "curate" / TASK / f"seed{seed}" / f"{m}.json").unlink()
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "match": "lai-last", "keep_fraction": None}))
    rows = _rows(folder)
    assert rows["random"]["rate_matched_to"] == "lai-last"
    assert rows["lai-last"]["random_control"] == "random" and rows["lai"]["random_control"] == ""
    mean, lo, hi = _ci("lai-last", "random")
    assert (rows["lai-last"]["vs_random_diff"], rows["lai-last"]["vs_random_low"]) == pytest.approx((mean, lo))
    stored = {r["method"]: r for r in paired(load_curation(export(folder, tmp_path / "stored")).final)}
    assert stored["lai-last"]["random_control"] == "random" and stored["random"]["rate_matched_to"] == "lai-last"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_fraction": 0.6}))
    rows = _rows(folder)
    assert rows["random"]["rate_matched_to"] == "" and not any(r["random_control"] for r in rows.values())


def test_bottom_lines_say_win_loss_and_tie(folder):
    final = load_curation(folder).final
    s = {"curation": list(paired(final).rows), "curation_vs_lai": list(paired(final, control="lai").rows)}
    text = "\n".join(curation_bottoms(s))
    # a clear loss: lai-last is 1 pp above lai on every seed
    mean, lo, hi = _ci("lai", "lai-last")
    assert f"{TASK} (ours): no, last-layer LAI is better ({mean:+.1f} [{lo:+.1f}, {hi:+.1f}] pp)" in text
    # a clear win over vanilla and a tie with its own rate-matched random
    mean, lo, hi = _ci("exact-top2", "vanilla")
    assert f"exact-top2: beats vanilla: yes ({mean:+.1f} [{lo:+.1f}, {hi:+.1f}] pp)" in text
    assert "beats random (rate of exact-top2): no difference shown (" in text
    # best overall: small-loss (the oracle is left out), 5 pp over the best layer-aware member
    mean, lo, hi = _ci("small-loss", "exact-top2")
    assert (f"{TASK} (ours): small-loss (oracle rate), {mean:+.1f} [{lo:+.1f}, {hi:+.1f}] pp over exact-top2 "
            "(better)") in text
    assert "plateau rule held on every seed on 0 of 1 task/protocols; not on " in text
    bullets = "\n".join(task_lines(s["curation"])[(TASK, "ours")])
    assert "Best layer-aware member: exact-top2" in bullets and "did NOT hold on every seed (9 of 10; 5 epochs" in bullets
    assert "random-as-new-est" not in bullets and "random (rate of new-est)" in bullets


def _scores(rng, lai_sep: float, loss_sep: float) -> list[dict]:
    n, rows = 40, []
    noisy = np.arange(n) < 10
    for seed in range(4):
        for step in (1, 2):
            est = {"lai-last": rng.normal(size=n) - lai_sep * noisy, "loss": -(loss_sep * noisy + rng.normal(size=n))}
            rows += [{"model": "mlp", "seed": seed, "step": step, "sample": i, "is_noisy": int(noisy[i]),
                      "estimator": e, "score": float(v[i])} for e, v in est.items() for i in range(n)]
    return rows


def test_combined_rank_detection_against_the_loss():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    rows = _scores(rng, lai_sep=4.0, loss_sep=0.5)  # LAI separates the noisy labels far better than the loss
    e = combined_auroc_difference(rows)["mlp"]
    per_seed = []
    for seed in range(4):
        d = []
        for step in (1, 2):
            cell = [r for r in rows if (r["seed"], r["step"]) == (seed, step)]
            lai = np.array([r["score"] for r in cell if r["estimator"] == "lai-last"])
            loss = np.array([r["score"] for r in cell if r["estimator"] == "loss"])  # = -loss
            noisy = np.array([r["is_noisy"] for r in cell if r["estimator"] == "loss"])
            combined = stats.rankdata(lai) + stats.rankdata(loss)  # rank of the loss from the top
            d.append(roc_auc_score(noisy, -combined) - roc_auc_score(noisy, -loss))
        per_seed.append(np.mean(d))
    assert e.value == pytest.approx(np.mean(per_seed)) and e.low > 0  # adding LAI helps here
    worse = combined_auroc_difference(_scores(rng, lai_sep=0.0, loss_sep=4.0))["mlp"]
    assert worse.high < 0  # an uninformative score only dilutes a loss that already separates


def test_the_stored_report_renders_the_new_curation_lines(folder, tmp_path):
    from validation.report.curation import STORED
    from validation.report.summary import write_stored_report

    s = write_stored_report(STORED.parent / "validation", curate=folder, out=tmp_path / "out")
    bottom = "\n".join(s["verdict"][: s["verdict"].index(next(x for x in s["verdict"] if x.startswith("- **Ranking")))])
    assert "Curation, the layer-aware sum: does all-layer LAI beat last-layer LAI" in bottom
    assert "exact-top2: beats vanilla: yes (" in bottom and "Detection:" in bottom and "Cost:" in bottom
    # the stored run's scores hold lai-last and the loss: the combined rank is compared on every model
    assert "AUROC loss+lai-last − loss)? cnn1d " in bottom
    assert not any(c["name"].startswith("mlp: LAI flags noisy labels better than the loss+") for c in s["checks"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- Convergence: vanilla's plateau rule" in md and "random (rate of lai-last)" in md


def test_unknown_methods_only_do_not_crash(tmp_path):
    run = tmp_path / "curate" / "t-noisy20-ours-x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": {"name": "t-noisy20", "dataset": "d", "model": "m",
                                                          "noise": {"kind": "symmetric", "rate": 0.2}}}))
    for seed in (0, 1, 2):
        d = run / "units" / "curate" / "t-noisy20" / f"seed{seed}"
        d.mkdir(parents=True)
        for m, v in (("vanilla", 0.5), ("later-est", 0.6), ("random-as-later-est", 0.5)):
            (d / f"{m}.json").write_text(json.dumps({"method": m, "seed": seed, "metric": "accuracy",
                                                     "final": v + 0.01 * seed * (m != "vanilla"), "curve": [v]}))
    rows = paired(load_curation(tmp_path).final).rows
    by = {r["method"]: r for r in rows}
    assert by["later-est"]["best_layer_aware"] == "" and by["later-est"]["random_control"] == "random-as-later-est"
    assert by["later-est"]["vs_random_diff"] == pytest.approx(10.0)  # (0.6 + 0.01 s) - (0.5 + 0.01 s), in pp
    s = {"curation": rows, "curation_vs_lai": None}
    text = "\n".join(curation_bottoms(s))
    assert "no layer-aware method was run" in text and "not measured (no run of both)" in text
    assert "random (rate of later-est)" in "\n".join(task_lines(rows)[("t-noisy20", "ours")])
