"""validation.report.stats against scipy.stats / sklearn and direct computations on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from validation.report.stats import (
    auroc_ci,
    kendall_ci,
    mean_ci,
    paired_difference,
    paired_table,
    spearman_ci,
    spearman_difference_ci,
)


def test_paired_difference_matches_direct_t_interval():
    treat = [0.61, 0.58, 0.66, 0.70, 0.55, 0.63]
    ctrl = [0.52, 0.57, 0.60, 0.61, 0.56, 0.58]
    d = np.subtract(treat, ctrl)
    r = paired_difference(treat, ctrl)
    se = d.std(ddof=1) / math.sqrt(len(d))
    half = stats.t.ppf(0.975, len(d) - 1) * se
    assert r.mean == pytest.approx(d.mean(), rel=1e-12)
    assert r.se == pytest.approx(se, rel=1e-12)
    assert (r.low, r.high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-10)
    assert r.p == pytest.approx(stats.ttest_rel(treat, ctrl).pvalue, rel=1e-12)
    assert (r.wins, r.ties, r.losses, r.n) == (5, 0, 1, 6)
    assert r.significant() == (r.low > 0)
    assert "wins 5/6" in r.fmt()


def test_paired_difference_edge_cases():
    one = paired_difference([0.7], [0.5])
    assert one.mean == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.p) and one.n == 1
    assert not one.significant()
    nan_pair = paired_difference([1.0, float("nan"), 3.0], [0.0, 1.0, 1.0])  # the NaN pair is dropped
    assert nan_pair.n == 2 and nan_pair.mean == pytest.approx(1.5)
    same = paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # constant difference: zero-width interval
    assert same.low == same.high == pytest.approx(0.5) and same.p == 0.0
    tie = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert tie.ties == 2 and tie.p == 1.0 and not tie.significant()
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
    assert paired_difference([], []).n == 0


def test_paired_table_matches_by_seed():
    values = {"vanilla": {0: 0.5, 1: 0.6, 2: 0.55}, "lai": {2: 0.60, 0: 0.56, 1: 0.61, 5: 0.9}}
    t = paired_table(values, "vanilla")
    assert set(t) == {"lai"}
    assert t["lai"].n == 3  # seed 5 has no vanilla partner
    assert t["lai"].mean == pytest.approx(np.mean([0.06, 0.01, 0.05]))
    with pytest.raises(KeyError):
        paired_table(values, "ghost")


def test_mean_ci_matches_t_interval():
    v = [0.62, 0.48, 0.71, 0.55]
    e = mean_ci(v)
    se = np.std(v, ddof=1) / 2
    half = stats.t.ppf(0.975, 3) * se
    assert (e.value, e.low, e.high, e.n) == pytest.approx((np.mean(v), np.mean(v) - half, np.mean(v) + half, 4))
    assert e.excludes(0.0) and not e.excludes(0.6)
    assert math.isnan(mean_ci([0.3]).low) and mean_ci([0.3]).n == 1
    assert mean_ci([None, float("nan")]).n == 0
    assert "no CI" in mean_ci([0.3]).fmt()


def _correlated(n: int, strata: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(strata, n))
    return a, a + noise * rng.normal(size=(strata, n))


def test_spearman_ci_value_and_interval():
    a, b = _correlated(64, 4, 1.0)
    e = spearman_ci(a, b)
    assert e.value == pytest.approx(np.mean([stats.spearmanr(x, y).statistic for x, y in zip(a, b)]), rel=1e-12)
    assert e.low < e.value < e.high and e.n == 64
    assert spearman_ci(a, b) == e  # seeded
    assert spearman_ci(a, b, seed=1) != e
    one = spearman_ci(a[0], b[0])
    assert one.value == pytest.approx(stats.spearmanr(a[0], b[0]).statistic, rel=1e-12)
    # more samples, narrower interval; independent scores: the interval covers 0
    wide = spearman_ci(*_correlated(30, 1, 1.0, seed=3))
    narrow = spearman_ci(*_correlated(600, 1, 1.0, seed=3))
    assert narrow.high - narrow.low < 0.6 * (wide.high - wide.low)
    rng = np.random.default_rng(5)
    indep = spearman_ci(rng.normal(size=200), rng.normal(size=200))
    assert indep.low < 0 < indep.high and not indep.excludes(0.0)
    strong = spearman_ci(*_correlated(200, 2, 0.1))
    assert strong.above(0.9)


def test_spearman_ci_undefined_and_shapes():
    const = spearman_ci(np.ones(10), np.arange(10.0))
    assert math.isnan(const.value) and math.isnan(const.low)
    with pytest.raises(ValueError):
        spearman_ci(np.ones((2, 5)), np.ones((2, 6)))


def test_spearman_difference_ci():
    rng = np.random.default_rng(6)
    t = rng.normal(size=(3, 80))
    close, far = t + 0.3 * rng.normal(size=t.shape), t + 2.0 * rng.normal(size=t.shape)
    d = spearman_difference_ci(close, far, t)
    direct = np.mean([stats.spearmanr(x, z).statistic - stats.spearmanr(y, z).statistic
                      for x, y, z in zip(close, far, t)])
    assert d.value == pytest.approx(direct, rel=1e-12)
    assert d.above(0.0)  # the close copy ranks closer, beyond resampling noise
    same = spearman_difference_ci(close, close, t)
    assert same.value == 0.0 and same.low == 0.0 == same.high


def test_kendall_ci_matches_scipy():
    a, b = _correlated(40, 2, 1.0, seed=2)
    e = kendall_ci(a, b, n_resamples=200)
    assert e.value == pytest.approx(np.mean([stats.kendalltau(x, y).statistic for x, y in zip(a, b)]), rel=1e-12)
    assert e.low < e.value < e.high


def test_auroc_ci_matches_sklearn_and_counts_positives():
    rng = np.random.default_rng(4)
    y = np.zeros(64, dtype=bool)
    y[:13] = True
    det = rng.normal(size=(3, 64)) + 0.8 * y
    e = auroc_ci(y, det)
    assert e.value == pytest.approx(np.mean([roc_auc_score(y, d) for d in det]), rel=1e-12)
    assert (e.n_positive, e.n_negative, e.n) == (13, 51, 64)
    assert e.low < e.value < e.high
    assert "13 positives" in e.fmt()
    # a detector that separates perfectly: AUROC 1, interval excludes chance; pure noise: it does not
    perfect = auroc_ci(y, y.astype(float))
    assert perfect.value == 1.0 and perfect.excludes(0.5)
    chance = auroc_ci(y, rng.normal(size=64))
    assert chance.low < 0.5 < chance.high
    # ties count half, as sklearn does
    tied = auroc_ci([1, 0, 1, 0], [1.0, 1.0, 2.0, 0.0])
    assert tied.value == pytest.approx(roc_auc_score([1, 0, 1, 0], [1.0, 1.0, 2.0, 0.0]))


def test_auroc_ci_single_class_and_mismatch():
    assert math.isnan(auroc_ci([1, 1, 1], [0.1, 0.2, 0.3]).value)
    with pytest.raises(ValueError):
        auroc_ci([1, 0], [0.1, 0.2, 0.3])
    to_json = auroc_ci([1, 0, 0], [0.3, 0.2, 0.1]).to_dict()  # one positive: a value, no interval
    assert to_json["value"] == 1.0 and to_json["low"] is None and to_json["n_positive"] == 1


def test_within_clips_a_bounded_quantity_and_says_so():
    from validation.report.stats import AurocEstimate, Estimate, mean_ci, within

    e = mean_ci([0.6, 0.9, 0.95])  # three seeds: the t interval reaches past 1
    assert e.high > 1.0 and e.low > 0.0
    c = within(e, 0.0, 1.0)
    assert c.high == 1.0 and c.low == e.low and c.value == e.value and "clipped to [0, 1]" in c.method
    inside = Estimate(0.5, 0.4, 0.6, 3, method="t")
    assert within(inside, 0.0, 1.0) is inside  # nothing to clip: unchanged
    a = within(AurocEstimate(0.5, -0.2, 1.2, 12, method="t", n_positive=2, n_negative=10), 0.0, 1.0)
    assert isinstance(a, AurocEstimate) and (a.low, a.high, a.n_positive) == (0.0, 1.0, 2)
    assert within(Estimate(0.5, float("nan"), float("nan"), 1), 0.0, 1.0).fmt() == "0.50 (no CI)"
