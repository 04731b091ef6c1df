"""The shared training run: seeded data/noise/probe, the batch schedule, and resuming from a checkpoint."""

import pytest
import torch

from validation.settings.profiles import get_profile, model_settings, with_width
from validation.training.task import BatchSchedule, build_task, stratified_probe, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_is_a_seeded_permutation_per_epoch():
    s = BatchSchedule(10, 3, seed=4)
    epoch0 = torch.cat([s.indices(k) for k in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 batches of 3 distinct samples, last partial batch dropped
    again = BatchSchedule(10, 3, seed=4)
    assert torch.equal(again.indices(4), s.indices(4)) and torch.equal(again.indices(1), s.indices(1))
    assert not torch.equal(BatchSchedule(10, 3, seed=5).indices(0), s.indices(0))
    with pytest.raises(ValueError):
        BatchSchedule(3, 4, seed=0)


def test_stratified_probe_holds_both_kinds():
    noisy = torch.zeros(100, dtype=torch.bool)
    noisy[[3, 50, 77]] = True
    p = stratified_probe(noisy, 10, seed=0)
    assert len(p) == 10 and len(set(p.tolist())) == 10 and noisy[p].sum() == 1  # round(10 * 0.03) = 0 -> at least 1
    p = stratified_probe(noisy, 99, seed=0)
    assert noisy[p].sum() == 3 and torch.equal(p, torch.sort(p).values)


@pytest.mark.parametrize("name", ["mlp", "cnn2d", "transformer"])
def test_task_is_seeded_and_marks_exactly_the_corrupted_samples(name):
    s = model_settings(get_profile("tiny"), name)
    a, b = build_task(name, s, seed=3), build_task(name, s, seed=3)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.probe, b.probe) and torch.equal(a.ref[0], b.ref[0])
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert len(a.probe) == s.n_score and len(a.ref[1]) == s.n_ref
    assert 0 < int(a.is_noisy[a.probe].sum()) < s.n_score
    if name == "transformer":
        assert a.x_train.dtype == torch.int64 and torch.equal(a.x_train[:, 1:], a.y_train[:, :-1])
        assert a.noise["noisy_indices"] and 0 < a.noise["sequence_noise_rate"] < 1
    else:
        clean = __import__("validation.data.datasets", fromlist=["get_dataset"]).get_dataset(s.dataset, seed=3, **s.data_kw)
        assert torch.equal(a.is_noisy, a.y_train != clean.y_train)
        assert abs(float(a.is_noisy.float().mean()) - s.noise.rate) < 0.05


def test_resumed_training_equals_uninterrupted():
    s = model_settings(get_profile("tiny"), "mlp")
    task = build_task("mlp", s, seed=0)
    seen = {}
    full = train(task, lambda step, m: seen.setdefault(step, {k: v.clone() for k, v in m.state_dict().items()}),
                 stops=[3, 9], progress=False)
    resumed = train(task, stops=[9], start_step=3, state=seen[3], progress=False)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k])
    assert not torch.equal(seen[3]["head.weight"], full.state_dict()["head.weight"])  # training moved the weights
    assert all(torch.equal(p, q) for p, q in zip(task.model.parameters(), build_task("mlp", s, 0).model.parameters()))


def test_training_lowers_the_loss():
    s = model_settings(get_profile("tiny"), "cnn1d")
    task = build_task("cnn1d", s, seed=0)
    x, y = task.x_train[:256], task.y_train[:256]
    model = train(task, stops=[40], progress=False)
    with torch.no_grad():
        assert float(task.loss_fn(model(x), y).mean()) < float(task.loss_fn(task.model(x), y).mean())


def test_with_width_keeps_depth():
    assert with_width({"hidden": (512, 512), "bias": True}, "hidden", 64) == {"hidden": (64, 64), "bias": True}
    assert with_width({"channels": 16}, "channels", 8) == {"channels": 8}
