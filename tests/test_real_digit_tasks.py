"""Real-digit curation tasks (mnist-real-noisy<pct>[-pairflip|-instdep]), the plateau rule, the test accuracy at the
best validation epoch, and small-loss-est's estimated noise rate."""

import dataclasses
import math

import pytest
import torch

from influence.curation.methods import get_method, ramped_drop_rate
from validation.curation import cli
from validation.curation.convergence import estimate_noise_rate, plateau_window, plateaued
from validation.curation.experiment import SUITE, train_unit
from validation.curation.seeds import generator, stream
from validation.curation.tasks import REAL_DIGIT_TASKS, TASKS, get_task, prepare
from validation.data.datasets import get_dataset
from validation.report.results import read_csv, read_json
from validation.settings.config import ConfigError, NoiseSpec

NAMES = sorted(REAL_DIGIT_TASKS)


def test_the_six_real_digit_tasks_are_registered():
    assert NAMES == sorted(f"mnist-real-noisy{p}{s}" for p in (20, 40) for s in ("", "-pairflip", "-instdep"))
    for name in NAMES:
        spec = TASKS[name]
        assert spec.dataset == "mnist-real" and spec.model == "small-cnn" and spec.data_kw["pool"] == 2
        assert spec.model_kw["in_hw"] == 14 and spec.noise.rate in (0.2, 0.4)
    assert get_task("mnist-real-noisy40-instdep").noise.kind == "instance_dependent"
    assert get_task("mnist-real-noisy20-pairflip").noise.kind == "pair_flip"
    assert get_task("mnist-real-noisy20").noise.kind == "symmetric"


@pytest.mark.parametrize("task", NAMES)
def test_each_task_trains_one_epoch_with_vanilla_and_lai(tmp_path, capsys, task):
    argv = ["--task", task, "--seeds", "0", "--epochs", "1", "--max-train", "200", "--methods", "vanilla,lai",
            "--out", str(tmp_path), "--no-progress", "--timing-steps", "0"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / SUITE).iterdir()
    for m in ("vanilla", "lai"):
        unit = read_json(run / "units" / SUITE / task / "seed0" / f"{m}.json")
        assert unit["steps"] == 200 // 64 and 0 <= unit["final"] <= 1 and len(unit["val_curve"]) == 1
        assert unit["best_val_test"] == unit["final"] and unit["best_val_epoch"] == 0
        assert unit["noise"]["subset_noise_rate"] == pytest.approx(TASKS[task].noise.rate, abs=0.01)
        assert f"| {m} |" in out
    assert "vanilla plateau" in out and "n/a (too few epochs: 1" in out and "rule NOT met" in out  # 1 epoch: the rule cannot hold
    assert read_csv(run / "table.csv")[0]["plateau_held"] == "0/1"


def _clean_training_labels(spec, seed):
    """The clean labels of the training split ``prepare`` noises (the same split stream)."""
    d = get_dataset(spec.dataset, seed=0, **spec.data_kw)
    perm = torch.randperm(len(d.y_train), generator=generator(seed, "split"))
    return d.x_train[perm[spec.val_size:].sort().values], d.y_train[perm[spec.val_size:].sort().values]


@pytest.mark.parametrize("task", ["mnist-real-noisy40-instdep", "mnist-real-noisy20-pairflip"])
def test_noise_record_is_exact(task):
    spec = get_task(task)
    prep = prepare(spec, 3)
    x, y_clean = _clean_training_labels(spec, 3)
    assert torch.equal(prep.train[0], x)
    y_noisy = prep.train[1]
    assert torch.equal(prep.is_noisy, y_noisy != y_clean)  # the mask is exactly the changed labels
    assert int(prep.is_noisy.sum()) == round(spec.noise.rate * len(y_clean)) == round(spec.noise.rate * 3800)
    assert prep.noise["noise_rate"] == pytest.approx(spec.noise.rate)
    if spec.noise.kind == "pair_flip":
        assert torch.equal(y_noisy[prep.is_noisy], (y_clean[prep.is_noisy] + 1) % 10)
    else:  # the weak classifier is recorded; ambiguous images are the ones flipped
        meta = prep.noise["meta"]
        assert 0.6 < meta["accuracy"] < 0.95 and meta["mean_confusion_flipped"] > meta["mean_confusion_kept"]
        again = spec.noise.apply_labels(y_clean, 10, seed=stream(3, "noise"), x=x)
        assert torch.equal(again.y_noisy, y_noisy)  # seeded: the same draw


def test_instance_dependent_noise_needs_x_and_other_kinds_ignore_it():
    y = torch.arange(100) % 10
    with pytest.raises(ConfigError, match="needs the inputs x"):
        NoiseSpec("instance_dependent", 0.2).apply_labels(y, 10, seed=0)
    for kind in ("symmetric", "class_dependent", "pair_flip"):
        spec = NoiseSpec(kind, 0.3)
        assert not spec.needs_inputs
        a, b = spec.apply_labels(y, 10, seed=5), spec.apply_labels(y, 10, seed=5, x=torch.randn(100, 4))
        assert torch.equal(a.y_noisy, b.y_noisy)


def test_plateaued_on_synthetic_curves():
    rising = [0.1 * k for k in range(1, 11)]
    held, gain = plateaued(rising)
    assert not held and gain == pytest.approx(0.3)  # window: 3 epochs (20 % of 10 is 2 < 3)
    flat = [0.5, 0.8, 0.9, 0.905, 0.9, 0.91, 0.9, 0.905, 0.908, 0.912]
    held, gain = plateaued(flat)
    assert held and gain == pytest.approx(0.912 - 0.91)
    peaked = [0.6, 0.85, 0.9, 0.88, 0.86, 0.84, 0.83, 0.82, 0.8, 0.79]  # memorising noise after epoch 2
    assert plateaued(peaked) == (True, pytest.approx(0.82 - 0.9))  # best of the last 3 vs the best before
    slow = [0.5 + 0.002 * k for k in range(30)]  # +0.2 pp per epoch: 1.2 pp over the last 6 epochs
    assert plateau_window(30) == 6 and plateaued(slow)[0] is False
    assert plateaued(slow, tol=0.02)[0] is True
    held, gain = plateaued([0.5, 0.6, 0.7])  # no epoch before the window
    assert not held and math.isnan(gain)
    ppl = [40.0, 20.0, 12.0, 11.0, 10.9, 11.2, 11.0, 10.95, 11.1, 11.0]  # lower is better
    held, gain = plateaued(ppl, higher_is_better=False)
    assert held and gain == pytest.approx(10.9 - 10.95)


def test_estimate_noise_rate_on_separated_losses():
    g = torch.Generator().manual_seed(0)
    losses = torch.cat([torch.rand(700, generator=g) * 0.5, 2 + torch.rand(300, generator=g)])
    assert estimate_noise_rate(losses)["rate"] == pytest.approx(0.3, abs=0.02)
    assert estimate_noise_rate(torch.ones(20))["rate"] == 0.0


def test_small_loss_est_estimates_the_rate_on_real_digits_and_ramps_with_it():
    """On mnist-real-noisy40 (seed 0, the whole training set) the median of the GMM estimates after epochs 2-4
    is within 0.1 of the true 0.4; nothing is dropped before, then the ramp uses the estimate. (On MNIST-1D's MLP
    it is not: see ``estimate_noise_rate``.)"""
    torch.set_num_threads(1)
    spec = dataclasses.replace(get_task("mnist-real-noisy40"), epochs=5)
    summary, rows = train_unit(prepare(spec, 0), get_method("small-loss-est"), 0, "best", progress=False)
    est = summary["noise_rate_estimate"]
    assert summary["drop_rate_source"] == "estimated" and summary["drop_rate_tau"] == est["rate"]
    assert est["epochs"] == [1, 2, 3] and len(est["per_epoch"]) == 3
    assert abs(est["rate"] - 0.4) < 0.1
    kept = {}
    for r in rows:
        kept.setdefault(r["epoch"], set()).add(r["kept"])
    assert all(kept[e] == {64} for e in range(4))
    assert kept[4] == {round(64 * (1 - ramped_drop_rate(4, est["rate"], spec.ramp_epochs)))}
    oracle, _ = train_unit(prepare(dataclasses.replace(spec, epochs=1), 0), get_method("small-loss"), 0, "best",
                           progress=False)
    assert oracle["drop_rate_source"] == "oracle" and oracle["drop_rate_tau"] == 0.4
