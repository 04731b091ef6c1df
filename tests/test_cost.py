"""The cost harness: positive times, ratios taken from the same rows, peak memory that sees allocations."""

import pytest
import torch

import influence
from validation.bench.estimator_cost import Measurement, estimator_costs, measure_many, rows_from
from validation.bench.measure import measure
from validation.training.models import MLP

MB = 1 << 20


def _small():
    torch.manual_seed(0)
    model = MLP(8, (16,), 3).eval()
    train = (torch.randn(12, 8), torch.randint(0, 3, (12,)))
    ref = (torch.randn(6, 8), torch.randint(0, 3, (6,)))
    return model, train, ref


def test_measure_times_and_peak_memory_sees_a_large_allocation():
    m = measure(lambda: torch.ones(50_000_000, dtype=torch.float32), "alloc", repeats=2, warmup=0)
    assert isinstance(m, Measurement) and m.name == "alloc"
    assert len(m.times_s) == 2 and all(t > 0 for t in m.times_s)
    assert min(m.times_s) <= m.median_s <= max(m.times_s)
    assert m.peak_bytes >= 150 * MB  # 200 MB allocated


def test_peak_memory_of_a_call_that_allocates_nothing_new_is_small():
    x = torch.ones(10_000_000)
    m = measure(lambda: x.sum(), "sum", repeats=1)
    assert m.peak_bytes < 1 * MB


def test_peak_counts_temporaries_that_are_freed():
    def fn():
        big = torch.ones(25_000_000)  # 100 MB, freed before returning
        return big.sum()
    assert measure(fn, "tmp", repeats=1, warmup=0).peak_bytes >= 90 * MB


def test_measure_rejects_zero_repeats():
    with pytest.raises(ValueError):
        measure(lambda: None, "x", repeats=0)


def test_estimator_costs_rows_and_ratios_from_the_same_rows():
    model, train, ref = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = estimator_costs(model, influence.cross_entropy, train, ref, 0.1,
                           estimators=("forward", "train_step", "ghost", "lai", "lai-last", "exact", "tracin-last"),
                           repeats=2)
    by = {r["estimator"]: r for r in rows}
    assert {"forward", "forward_backward", "train_step", "ghost", "lai", "lai-last", "exact", "tracin-last"} <= set(by)
    for r in rows:
        assert r["median_s"] > 0 and r["peak_mb"] >= 0
        assert r["ratio_to_forward"] == pytest.approx(r["median_s"] / by["forward"]["median_s"], rel=1e-12)
        assert r["ratio_to_train_step"] == pytest.approx(r["median_s"] / by["train_step"]["median_s"], rel=1e-12)
        assert r["ratio_to_forward_backward"] == pytest.approx(
            r["median_s"] / by["forward_backward"]["median_s"], rel=1e-12)
        assert r["ratio_time_to_train_step"] == r["ratio_to_train_step"]
    assert by["forward"]["ratio_to_forward"] == 1.0
    for k, v in model.state_dict().items():  # the training step ran on a copy
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_unknown_estimator_is_refused():
    model, train, ref = _small()
    with pytest.raises(ValueError, match="unknown estimators"):
        estimator_costs(model, influence.cross_entropy, train, ref, 0.1, estimators=("nope",), repeats=1)


def test_measure_many_interleaves_and_rows_from_handles_missing_baselines():
    calls = []
    got = measure_many({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=0,
                       memory=False)
    assert calls == ["a", "b"] * 3
    rows = rows_from(got)
    assert all(r["ratio_to_forward"] is None and r["peak_ratio_to_ghost"] is None for r in rows)
    assert got["a"].peak_bytes == 0


def test_memory_kept_by_an_earlier_measured_call_is_not_counted_again():
    from validation.bench.measure import peak_bytes
    keep = []
    assert peak_bytes(lambda: keep.append(torch.ones(25_000_000)), settle=False) >= 90 * MB  # 100 MB kept alive
    assert peak_bytes(lambda: torch.ones(1000).sum()) < 1 * MB


def test_cpu_ratios_come_from_cpu_medians():
    model, train, ref = _small()
    rows = estimator_costs(model, influence.cross_entropy, train, ref, 0.1, estimators=("lai",), repeats=2,
                           memory=False)
    by = {r["estimator"]: r for r in rows}
    for r in rows:
        assert r["cpu_median_s"] > 0 and len(r["cpu_times_s"]) == 2
        assert r["cpu_ratio_to_forward"] == pytest.approx(r["cpu_median_s"] / by["forward"]["cpu_median_s"])
        assert r["peak_mb"] == 0  # memory=False
