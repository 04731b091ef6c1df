"""Ranking corollary: guaranteed Kendall tau and filter accuracy never exceed the measured ones."""

import numpy as np
import pytest
import torch
import toy_models as ex
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau
from torch import nn

import influence
import theory


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(2, 25), scale=st.floats(0.0, 3.0), ties=st.booleans())
def test_lower_bounds_hold_for_any_perturbation_within_the_bounds(seed, n, scale, ties):
    """LAI = Ghost + u * Delta with |u| <= 1 (the only thing the corollary assumes), ties included (tau-b)."""
    rng = np.random.default_rng(seed)
    ghost = rng.normal(size=n)
    if ties:
        ghost = np.round(ghost, 0)
    delta = scale * rng.random(n)
    lai = ghost + rng.uniform(-1, 1, n) * delta
    if ties:
        lai = np.where(rng.random(n) < 0.3, ghost, lai)  # exact ties with Ghost's values
    lb = theory.kendall_lower_bound(ghost, delta)
    tau = kendalltau(lai, ghost).statistic
    if not np.isnan(tau):
        assert lb <= tau + 1e-12
    tau_a = np.sign(np.subtract.outer(lai, lai)) * np.sign(np.subtract.outer(ghost, ghost))
    assert lb <= tau_a[np.triu_indices(n, 1)].mean() + 1e-12
    assert theory.guaranteed_filter_accuracy(ghost, delta) <= theory.filter_agreement(ghost, lai)
    # every guaranteed pair really keeps its order
    ok = theory.guaranteed_concordant(ghost, delta).numpy()
    assert (tau_a[ok] == 1).all()


def test_extremes():
    g = torch.tensor([0.3, -1.0, 2.0, 0.5])
    assert theory.kendall_lower_bound(g, torch.zeros(4)) == 1.0
    assert theory.guaranteed_filter_accuracy(g, torch.zeros(4)) == 1.0
    assert theory.kendall_lower_bound(g, torch.full((4,), 10.0)) == -1.0
    assert theory.guaranteed_filter_accuracy(g, torch.full((4,), 10.0)) == 0.0
    # one pair (2.0 vs -1.0, gap 3 > 1 + 1) guaranteed out of 6: tau_lb = (2 - 6) / 6
    assert theory.kendall_lower_bound(g, torch.ones(4)) == pytest.approx((2 * 1 - 6) / 6)
    assert theory.guaranteed_filter_accuracy(g, torch.ones(4)) == 0.25


def test_input_checks():
    with pytest.raises(ValueError, match="shape"):
        theory.kendall_lower_bound(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        theory.kendall_lower_bound(torch.zeros(3), -torch.ones(3))
    with pytest.raises(ValueError, match="two samples"):
        theory.kendall_lower_bound(torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("kind", ["near_linear", "mlp", "cnn"])
def test_guarantees_on_models(f64, kind):
    torch.manual_seed(12)
    if kind == "near_linear":  # small inputs to the only hidden layer: small error, informative guarantees
        model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, 3)).eval()
        (x, y), (xv, yv) = ex.classification_batch((5,), 12, 3, 0), ex.classification_batch((5,), 6, 3, 1)
        train, ref = (0.05 * x, y), (0.05 * xv, yv)
    elif kind == "mlp":
        model = ex.mlp(d_in=5, widths=(3,), n_classes=3)
        train, ref = ex.classification_batch((5,), 12, 3, 0), ex.classification_batch((5,), 6, 3, 1)
    else:
        model = ex.cnn(dim=1, channels=(2,), kernel=3)
        train, ref = ex.classification_batch((1, 8), 12, 3, 0), ex.classification_batch((1, 8), 6, 3, 1)
    lr = 0.1
    ghost = influence.ghost(model, influence.cross_entropy, train, ref, lr).scores
    lai = influence.lai(model, influence.cross_entropy, train, ref, lr).scores
    res = theory.analyse(model, influence.cross_entropy, train, ref, lr)
    tau = kendalltau(lai.numpy(), ghost.numpy()).statistic
    for bound in (res.data_bound(), res.apriori_bound()):
        assert theory.kendall_lower_bound(ghost, bound) <= tau
        assert theory.guaranteed_filter_accuracy(ghost, bound) <= theory.filter_agreement(ghost, lai)
    assert theory.kendall_lower_bound(ghost, res.apriori_bound()) <= theory.kendall_lower_bound(ghost, res.data_bound())
    if kind == "near_linear":
        assert theory.kendall_lower_bound(ghost, res.apriori_bound()) > -1
        assert theory.guaranteed_filter_accuracy(ghost, res.apriori_bound()) > 0.5
