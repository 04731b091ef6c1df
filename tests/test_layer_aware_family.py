"""The layer-aware family (``influence.estimators.top_layers``) and the field's baselines
(``influence.estimators.baselines``), checked in float64 against Exact, LAI and the closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import influence
from influence.estimators import estimator_names, get_estimator, register_estimator, unregister_estimator
from influence.estimators.baselines import NotPairwiseError
from influence.estimators.top_layers import entry

CE = influence.cross_entropy
LR = 0.1
FAMILY = ("exact-top2", "exact-top2-lai-below", "exact-top1-lai-below")
BASELINES = ("loss", "el2n", "grad-norm")


@pytest.fixture(autouse=True)
def _f64(f64, one_thread):
    yield


def mlp_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    train = (torch.randn(7, 6), torch.randint(0, 3, (7,)))
    ref = (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    return model, train, ref


def cnn_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 3))
    train = (torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,)))
    ref = (torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)))
    return model, train, ref


def lm_data(seed: int = 0, tied: bool = False):
    """A token model without transformers: embedding, a hidden linear layer, a vocabulary head ([n, T, V])."""
    torch.manual_seed(seed)
    v, d, t = 11, 6, 5
    model = nn.Sequential(nn.Embedding(v, d), nn.Linear(d, d), nn.Tanh(), nn.Linear(d, v))
    if tied:
        model[3].weight = model[0].weight
    train = (torch.randint(0, v, (4, t)), torch.randint(0, v, (4, t)))
    ref = (torch.randint(0, v, (3, t)), torch.randint(0, v, (3, t)))
    return model, train, ref


@pytest.fixture
def top_entry():
    """``exact-top{k}`` / ``exact-top{k}-lai-below`` for any k, registered for the test and removed after."""
    added = []

    def make(k: int, lai_below: bool = False) -> str:
        e = entry(k, lai_below)
        if e.name not in estimator_names():
            register_estimator(e)
            added.append(e.name)
        return e.name
    yield make
    for name in added:
        unregister_estimator(name)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("data, layers", [(mlp_data, ["0", "2", "4"]), (cnn_data, ["0", "2", "5", "7"])])
def test_exact_top_k_equals_exact_on_those_layers(data, layers, top_entry):
    model, train, ref = data()
    ex = influence.exact(model, CE, train, ref, lr=LR)
    for k in range(1, len(layers) + 1):
        r = influence.estimate(top_entry(k), model, CE, train, ref, lr=LR)
        top = layers[-k:]
        assert sorted(r.per_layer) == sorted(top), k
        for name in top:
            assert close(r.per_layer[name], ex.per_layer[name]), (k, name)
        assert close(r.scores, sum(ex.per_layer[name] for name in top)), k


def test_exact_top_2_pairwise_equals_exact_pairwise_on_those_layers():
    model, train, ref = cnn_data(1)
    ex = influence.exact(model, CE, train, ref, lr=LR, pairwise=True)
    r = influence.estimate("exact-top2", model, CE, train, ref, lr=LR, pairwise=True)
    assert close(r.pairwise, ex.per_layer_pairwise["5"] + ex.per_layer_pairwise["7"])


@pytest.mark.parametrize("data", [mlp_data, cnn_data])
def test_k1_on_a_linear_head_is_last_layer_lai_and_k1_lai_below_is_lai(data, top_entry):
    model, train, ref = data()
    top1 = influence.estimate(top_entry(1), model, CE, train, ref, lr=LR)
    last = influence.estimate("lai-last", model, CE, train, ref, lr=LR)
    assert close(top1.scores, last.scores)
    below = influence.estimate("exact-top1-lai-below", model, CE, train, ref, lr=LR)
    lai = influence.estimate("lai", model, CE, train, ref, lr=LR)
    assert close(below.scores, lai.scores)
    assert sorted(below.per_layer) == sorted(lai.per_layer)


@pytest.mark.parametrize("data", [mlp_data, cnn_data])
def test_exact_top_2_lai_below_is_exact_top_2_plus_lai_terms_below(data):
    model, train, ref = data(2)
    r = influence.estimate("exact-top2-lai-below", model, CE, train, ref, lr=LR)
    top = influence.estimate("exact-top2", model, CE, train, ref, lr=LR)
    lai = influence.estimate("lai", model, CE, train, ref, lr=LR)
    below = [k for k in lai.per_layer if k not in top.per_layer]
    assert below and sorted(r.per_layer) == sorted([*top.per_layer, *below])
    assert close(r.scores, top.scores + sum(lai.per_layer[k] for k in below))


def test_exact_top_2_on_a_token_model():
    model, train, ref = lm_data()
    ex = influence.exact(model, CE, train, ref, lr=LR)
    r = influence.estimate("exact-top2", model, CE, train, ref, lr=LR)
    assert sorted(r.per_layer) == ["1", "3"]
    assert close(r.scores, ex.per_layer["1"] + ex.per_layer["3"])
    r2 = influence.estimate("exact-top2-lai-below", model, CE, train, ref, lr=LR)
    lai = influence.estimate("lai", model, CE, train, ref, lr=LR)
    assert close(r2.scores, r.scores + lai.per_layer["0"])


def test_a_top_parameter_tied_below_is_scored_by_exact():
    """The head's weight is the embedding's: its gradient needs the full backward, so Exact scores it (warned)."""
    model, train, ref = lm_data(tied=True)
    ex = influence.exact(model, CE, train, ref, lr=LR)
    with pytest.warns(influence.RoutedToExactWarning, match="scored by Exact"):
        r = influence.estimate("exact-top2", model, CE, train, ref, lr=LR)
    assert r.routed_to_exact == ["0.weight"]
    assert close(r.scores, ex.per_layer["0"] + ex.per_layer["1"] + ex.per_layer["3"])  # tied weight: under "0"


def test_self_reference_and_self_influence():
    model, train, _ = mlp_data(3)
    s = influence.Session(model, CE, None, estimator="exact-top2", lr=LR)
    ex = influence.exact(model, CE, train, train, lr=LR)
    assert close(s.score(train).scores, ex.per_layer["2"] + ex.per_layer["4"])
    per_sample = influence.Session(model, CE, train, estimator="exact", lr=LR, params=["2.weight", "2.bias",
                                                                                         "4.weight", "4.bias"])
    assert close(s.self_influence(train), per_sample.self_influence(train))


def test_loss_and_el2n_are_the_closed_forms():
    model, train, ref = mlp_data(4)
    with torch.no_grad():
        f = model(train[0])
    loss = influence.estimate("loss", model, CE, train, ref, lr=LR)
    assert close(loss.scores, -nn.functional.cross_entropy(f, train[1], reduction="none"))
    el2n = influence.estimate("el2n", model, CE, train, ref, lr=LR)
    onehot = nn.functional.one_hot(train[1], 3).to(f.dtype)
    assert close(el2n.scores, -(f.softmax(-1) - onehot).norm(dim=1))
    mse = influence.mse  # another loss: g = dl/df = f - y
    y = torch.randn(7, 3)
    r = influence.estimate("el2n", model, mse, (train[0], y), (ref[0], torch.randn(5, 3)), lr=LR)
    assert close(r.scores, -(f - y).norm(dim=1))


@pytest.mark.parametrize("data", [mlp_data, cnn_data, lm_data])
def test_grad_norm_is_minus_exact_self_influence(data):
    model, train, ref = data()
    r = influence.estimate("grad-norm", model, CE, train, ref, lr=LR)
    want = influence.Session(model, CE, ref, estimator="exact", lr=LR).self_influence(train)
    assert close(r.scores, -want)
    assert close(influence.Session(model, CE, None, estimator="grad-norm", lr=LR).self_influence(train), want)


class OutsideUse(nn.Module):
    """A Linear whose weight is also used outside its call: the verification routes it to Exact."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        return self.lin(x) + 0.5 * x[:, :3] @ self.lin.weight[:, :3].T


def test_grad_norm_scores_unfactorable_parameters_with_exact():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), OutsideUse())
    train, ref = (torch.randn(7, 6), torch.randint(0, 3, (7,))), (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    want = influence.Session(model, CE, ref, estimator="exact", lr=LR).self_influence(train)
    with pytest.warns(influence.RoutedToExactWarning, match="2.lin.weight"):
        got = influence.estimate("grad-norm", model, CE, train, ref, lr=LR).scores
    assert close(got, -want)


def test_baselines_ignore_the_reference_and_refuse_pairwise():
    model, train, ref = mlp_data(6)
    other = (torch.randn(9, 6), torch.randint(0, 3, (9,)))
    for name in BASELINES:
        a = influence.estimate(name, model, CE, train, ref, lr=LR).scores
        assert close(a, influence.estimate(name, model, CE, train, other, lr=LR).scores), name
        assert (a <= 0).all(), name
        with pytest.raises(NotPairwiseError, match="pairwise"):
            influence.estimate(name, model, CE, train, ref, lr=LR, pairwise=True)


def test_every_new_entry_is_registered_and_scores():
    model, train, ref = cnn_data(7)
    names = estimator_names()
    for name in (*FAMILY, *BASELINES):
        assert name in names
        e = get_estimator(name)
        assert e.label and e.description and not e.caps.exact and e.caps.self_reference
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = influence.estimate(name, model, CE, train, ref, lr=LR)
        assert r.estimator == name and r.scores.shape == (6,) and torch.isfinite(r.scores).all(), name
    assert get_estimator("exact-top2").caps.needs_backward and not get_estimator("loss").caps.needs_backward


def test_a_top_parameter_the_verification_rejects_is_scored_by_exact():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), OutsideUse(), nn.Tanh(), nn.Linear(3, 3))
    train, ref = (torch.randn(7, 6), torch.randint(0, 3, (7,))), (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    ex = influence.exact(model, CE, train, ref, lr=LR)
    with pytest.warns(influence.RoutedToExactWarning, match="2.lin.weight"):
        r = influence.estimate("exact-top2", model, CE, train, ref, lr=LR)
    assert r.routed_to_exact == ["2.lin.weight"] and sorted(r.per_layer) == ["2.lin", "4"]
    assert close(r.scores, ex.per_layer["2.lin"] + ex.per_layer["4"])
    with pytest.raises(influence.InfluenceError, match="need Exact"):
        influence.Session(model, CE, None, estimator="exact-top2", lr=LR).score(train)


class Tap(nn.Module):
    """Identity that counts the backward passes reaching its output."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = 0

    def forward(self, x):
        if x.requires_grad:
            x.register_hook(self._count)
        return x

    def _count(self, grad):
        self.reached += 1


@pytest.mark.parametrize("name, reached", [("exact-top2", 0), ("exact-top2-lai-below", 0), ("ghost", 2)])
def test_the_backward_stops_below_the_top_layers(name, reached):
    torch.manual_seed(9)
    tap = Tap()
    model = nn.Sequential(nn.Linear(6, 5), tap, nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    train, ref = (torch.randn(7, 6), torch.randint(0, 3, (7,))), (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    influence.estimate(name, model, CE, train, ref, lr=LR)  # the first capture of a signature verifies it (a full
    tap.reached = 0  # backward of a few samples), cached after
    influence.estimate(name, model, CE, train, ref, lr=LR)
    assert tap.reached == reached  # Ghost: the reference and the training backward reach the lowest layer


@pytest.mark.parametrize("name", ["exact-top2", "exact-top2-lai-below"])
def test_several_reference_batches_equal_their_concatenation(name):
    model, train, ref = cnn_data(10)
    halves = [(ref[0][:2], ref[1][:2]), (ref[0][2:], ref[1][2:])]
    one = influence.Session(model, CE, ref, estimator=name, lr=LR).score(train)
    two = influence.Session(model, CE, halves, estimator=name, lr=LR).score(train)
    assert close(two.scores, one.scores)
    pair = influence.Session(model, CE, halves, estimator=name, lr=LR, pairwise=True).score(train)
    assert close(pair.scores, one.scores)


def test_rankings_are_not_influence():
    """The baselines say that their sign means nothing (curation's "keep score >= 0" must not read them)."""
    from influence.estimators import estimator_names
    assert set(estimator_names(influence=False)) == {"loss", "el2n", "grad-norm"}
    assert {"exact-top2", "exact-top2-lai-below", "exact-top1-lai-below"} <= set(estimator_names(influence=True))
