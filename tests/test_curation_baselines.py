"""Curation baselines and protocols: the --max-train subset keeps the task's noise rate (own seed stream), the
co-teaching small-loss schedule, the oracle and loss-threshold filters, rate matching, the original protocol,
and corrupt unit files recomputed."""

import dataclasses
import json

import pytest
import torch
from scipy.stats import binomtest

import influence
from influence.curation import curation_step, get_method
from influence.curation.methods import ramped_drop_rate
from validation.curation import cli
from validation.curation.experiment import SUITE, unit_problem
from validation.curation.protocols import apply_protocol, expand
from validation.curation.seeds import generator, stream
from validation.curation.tasks import get_task, prepare, stratified_subset
from validation.report.results import read_csv, read_json
from validation.training.models import MLP


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_train_subset_has_the_task_noise_rate(seed):
    task = get_task("mnist1d-noisy40")
    full = prepare(task, seed)
    sub = prepare(dataclasses.replace(task, max_train=500), seed)
    n, rate = len(full.is_noisy), float(full.is_noisy.float().mean())
    assert rate == pytest.approx(0.4, abs=1 / n)
    assert len(sub.is_noisy) == 500
    # stratified: exactly round(500 * rate) noisy samples (it was 100 % when the subset replayed the noise's
    # permutation), and a binomial test would not tell it from a uniform draw either
    assert int(sub.is_noisy.sum()) == round(500 * rate)
    assert binomtest(int(sub.is_noisy.sum()), 500, rate).pvalue > 0.05
    # the subset is a part of the training set: its labels and inputs are rows of the full set's
    full_rows = {tuple(r.tolist()) + (int(l),) for r, l in zip(full.train[0], full.train[1])}
    assert all(tuple(r.tolist()) + (int(l),) in full_rows for r, l in zip(*sub.train))


def test_stratified_subset_and_streams():
    noisy = torch.zeros(1000, dtype=torch.bool)
    noisy[:300] = True  # noisy samples first: a subset drawn from the same permutation would be all noisy
    idx = stratified_subset(noisy, 100, generator(0, "subset"))
    assert len(idx) == 100 == len(set(idx.tolist())) and int(noisy[idx].sum()) == 30
    assert torch.equal(idx, stratified_subset(noisy, 100, generator(0, "subset")))
    with pytest.raises(ValueError):
        stratified_subset(noisy, 0, generator(0, "subset"))
    s = {stream(seed, p, *e) for seed in range(3) for p in ("noise", "subset", "batches")
         for e in ((), (0,), (1,))}
    assert len(s) == 27 and all(0 <= v < 2 ** 63 for v in s)
    a = torch.randperm(50, generator=generator(0, "noise"))
    b = torch.randperm(50, generator=generator(0, "subset"))
    assert not torch.equal(a[:20].sort().values, b[:20].sort().values)


def test_ramped_drop_rate_is_co_teaching_schedule():
    assert [ramped_drop_rate(e, 0.4, 10) for e in (0, 5, 10, 20)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert ramped_drop_rate(0, 0.4, 0) == 0.4
    with pytest.raises(ValueError):
        ramped_drop_rate(0, 1.0, 10)
    m = get_method("small-loss")
    assert m.ramp and not m.rate_matched and get_method("small-loss-fixed").rate_matched
    assert get_method("random").rate_matched and not get_method("oracle").rate_matched


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    return (x, torch.randint(0, 3, (16,), generator=g)), (torch.randn(5, 6, generator=g, dtype=torch.float64),
                                                           torch.randint(0, 3, (5,), generator=g))


def _model():
    torch.manual_seed(0)
    return MLP(d_in=6, hidden=(8,), n_classes=3).double()


def test_oracle_keeps_exactly_the_clean_samples():
    batch, ref = _batch()
    noisy = torch.arange(16) % 3 == 0
    model = _model()
    info = curation_step(model, influence.cross_entropy, None, batch, ref, "oracle", lr=0.1, is_noisy=noisy)
    assert torch.equal(info.kept, ~noisy) and info.noisy_kept == 0 and info.noisy_dropped == int(noisy.sum())
    with pytest.raises(ValueError, match="noise mask"):
        curation_step(_model(), influence.cross_entropy, None, batch, ref, "oracle", lr=0.1)


def test_loss_threshold_keeps_losses_at_most_the_mean_reference_loss():
    batch, ref = _batch(1)
    model = _model()
    with torch.no_grad():
        losses = influence.cross_entropy(model(batch[0]), batch[1])
        ref_mean = float(influence.cross_entropy(model(ref[0]), ref[1]).mean())
    info = curation_step(model, influence.cross_entropy, None, batch, ref, "loss-threshold", lr=0.1)
    assert torch.equal(info.kept, losses <= ref_mean)
    assert 0 < int(info.kept.sum()) < 16  # the check could fail both ways


def _curate(tmp_path, capsys, methods, extra=()):
    argv = ["--task", "digits-noisy40", "--seeds", "0", "--epochs", "3", "--max-train", "320", "--methods", methods,
            "--out", str(tmp_path), "--no-progress", "--timing-steps", "0", *extra]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_small_loss_ramps_its_drop_rate_per_epoch(tmp_path, capsys):
    _curate(tmp_path, capsys, "small-loss", extra=("--protocol", "ours"))
    (run,) = (tmp_path / SUITE).iterdir()
    rows = read_csv(run / "steps" / "small-loss" / "seed0.csv")
    per_epoch = {}
    for r in rows:
        per_epoch.setdefault(int(r["epoch"]), set()).add(int(r["kept"]))
    # 3 epochs with T_k = 10 and tau = 0.4: drop 0, 0.04, 0.08 of 64 -> keep 64, round(61.44) = 61, round(58.88) = 59
    assert per_epoch == {0: {64}, 1: {61}, 2: {59}}
    unit = read_json(run / "units" / SUITE / "digits-noisy40" / "seed0" / "small-loss.json")
    assert unit["ramp"] and unit["drop_rate_tau"] == 0.4 and unit["ramp_epochs"] == 10


def test_original_protocol_warms_up_and_resamples_the_reference(tmp_path, capsys):
    spec = apply_protocol(get_task("digits-noisy40"), "original")
    base = get_task("digits-noisy40")  # the warm-up is a third of the task's epochs
    assert spec.reference == "resample" and spec.warmup_epochs == round(base.epochs / 3) and spec.n_ref == spec.batch_size
    assert apply_protocol(spec, "ours").reference == "fixed" and expand("both") == ["ours", "original"]
    out = _curate(tmp_path, capsys, "vanilla,lai,random", extra=("--protocol", "both"))
    assert "(ours protocol)" in out and "(original protocol)" in out
    runs = sorted((tmp_path / SUITE).iterdir())
    assert len(runs) == 2 and {r.name.split("-")[2] for r in runs} == {"ours", "original"}
    orig = next(r for r in runs if "-original-" in r.name)
    rows = read_csv(orig / "steps" / "lai" / "seed0.csv")  # 5 steps per epoch, warm-up round(3/3) = 1 epoch
    assert all(float(r["kept_fraction"]) == 1.0 for r in rows[:5])
    lai = read_json(orig / "units" / SUITE / "digits-noisy40" / "seed0" / "lai.json")
    rnd = read_json(orig / "units" / SUITE / "digits-noisy40" / "seed0" / "random.json")
    assert lai["warmup_steps"] == 5 and lai["protocol"] == "original" and lai["reference"] == "resample"
    assert rnd["keep_fraction"] == pytest.approx(lai["kept_fraction"])  # matched over the curated steps only
    assert lai["kept_fraction"] == pytest.approx(
        sum(float(r["kept_fraction"]) for r in rows[5:]) / len(rows[5:]))
    ours = next(r for r in runs if "-ours-" in r.name)
    van = [read_json(r / "units" / SUITE / "digits-noisy40" / "seed0" / "vanilla.json")["curve"] for r in (ours, orig)]
    assert van[0] == van[1]  # vanilla never scores: one run under both protocols (the tables may share it)


def test_corrupt_or_empty_units_are_recomputed(tmp_path, capsys):
    _curate(tmp_path, capsys, "vanilla")
    (run,) = (tmp_path / SUITE).iterdir()
    path = run / "units" / SUITE / "digits-noisy40" / "seed0" / "vanilla.json"
    good = read_json(path)
    for bad in ("{", "{}", "[]"):
        path.write_text(bad)
        assert unit_problem(path) is not None
        out = _curate(tmp_path, capsys, "vanilla")
        assert "(done)" not in out and "vanilla seed0: accuracy" in out and unit_problem(path) is None
        assert read_json(path)["final"] == good["final"]  # same seed streams -> same result
    assert json.loads(path.read_text())["code"]["commit"] is not None


def test_curation_profiles():
    from validation.settings.profiles import get_curation_profile

    paper, quick = get_curation_profile("paper"), get_curation_profile("quick")
    assert paper["seeds"] == list(range(10)) and set(paper["methods"]) == {"ours"}
    assert set(paper["tasks"]) == {"mnist1d-noisy40", "digits-noisy40", "mnist-real-noisy40-instdep",
                                   "mnist-real-noisy40-pairflip"}
    for m in paper["methods"]["ours"]:  # every name is a method (rate-matched controls included)
        get_method(m)
    # quick means fewer seeds, tasks and methods, never fewer epochs than the task's own
    assert quick["epochs"] is None and quick["seeds"] == [0, 1, 2] and set(quick["methods"]) == {"ours", "original"}
    assert all(get_task(t).epochs >= 40 for t in paper["tasks"] + quick["tasks"])
