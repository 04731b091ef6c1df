"""The floor of LAI's cost in ``lai bench``: plain torch ops that must give ``influence.lai``'s scores."""

import pytest
import torch
from torch import nn

import influence
from validation.bench import floor as bench_floor
from validation.bench.workloads import build_workload


def _batches(d_in=6, classes=4, n=9, m=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    make = lambda k: (torch.randn(k, d_in, generator=gen, dtype=dtype), torch.randint(0, classes, (k,), generator=gen))
    return make(n), make(m)


def _mlp(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).double()


@pytest.mark.parametrize("bias", [True, False])
def test_the_floor_gives_lai_scores(bias):
    model = _mlp(bias)
    train, ref = _batches()
    calls = bench_floor.floor_calls(model, influence.cross_entropy, train, ref, 0.3)
    assert set(calls) == set(bench_floor.FLOORS)
    for name, layers in bench_floor.FLOORS.items():
        want = influence.lai(model, influence.cross_entropy, train, ref, 0.3, layers=layers).scores
        torch.testing.assert_close(calls[name](), want, rtol=1e-10, atol=0)
    assert not torch.allclose(calls["lai-floor"](), calls["lai-last-floor"]())  # the hidden layers count


def test_the_bench_mlp_workload_has_a_floor():
    w = build_workload("mlp", tiny=True)
    gen = torch.Generator().manual_seed(1)
    train, ref = w.make(8, gen), w.make(4, gen)
    assert set(bench_floor.floor_calls(w.model, w.loss_fn, train, ref, w.spec.lr)) == set(bench_floor.FLOORS)


def test_no_floor_where_lai_reads_more_than_linear_layers():
    train, ref = _batches()
    assert bench_floor.floor_calls(_mlp(), influence.mse, train, ref, 0.1) == {}  # not cross-entropy
    frozen = _mlp()
    frozen[0].bias.requires_grad_(False)  # LAI skips the frozen bias; the floor does not model that
    assert bench_floor.floor_calls(frozen, influence.cross_entropy, train, ref, 0.1) == {}
    w = build_workload("cnn", tiny=True)
    gen = torch.Generator().manual_seed(1)
    assert bench_floor.floor_calls(w.model, w.loss_fn, w.make(4, gen), w.make(4, gen), 0.1) == {}  # conv layers


def test_a_floor_that_disagrees_with_lai_is_refused(monkeypatch):
    model = _mlp()
    train, ref = _batches()
    monkeypatch.setattr(bench_floor, "_g", lambda f, y: f.softmax(1))  # g without the onehot: a wrong floor
    with pytest.raises(AssertionError, match="differs from influence.lai"):
        bench_floor.floor_calls(model, influence.cross_entropy, train, ref, 0.3)
