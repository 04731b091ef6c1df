"""The estimator registry: an estimator registered from outside the package is built by ``Session`` from its entry
and reads its capabilities like the built-in ones; names are one spelling; built-in entries keep their contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import influence
from influence.batch import call_model, output_tensor
from influence.estimators import (
    BaseBackend,
    Capabilities,
    Estimator,
    UnknownEstimatorError,
    estimator_names,
    get_estimator,
    register_estimator,
    unregister_estimator,
)
from influence.result import Chunk

CE = influence.cross_entropy
TOY = "toy-loss-product"


class LossProduct(BaseBackend):
    """A toy estimator: lr * l_i * l_v (per reference sample v), averaged over v. Not an influence; easy to check."""

    estimator = TOY

    def __init__(self, model: nn.Module, loss_fn, settings, routed) -> None:
        self.model, self.loss_fn, self.lr = model, loss_fn, settings.lr

    def _losses(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.loss_fn(output_tensor(call_model(self.model, batch[0])), batch[1])

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        self.pairwise, self.columns = pairwise, []

    def add_reference(self, batch, n: int) -> dict:
        self.columns.append(self._losses(batch))
        return {}

    def score(self, batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        l, ref = self._losses(batch), torch.cat(self.columns)
        value = self.lr * l[:, None] * ref[None] if self.pairwise else self.lr * l * ref.mean()
        return Chunk({"model": value}, l)

    def self_products(self, batch, n: int) -> torch.Tensor:
        l = self._losses(batch)
        return self.lr * l * l


@pytest.fixture
def toy():
    entry = register_estimator(Estimator(TOY, "Toy (loss product)", LossProduct,
                                         Capabilities(needs_backward=False), family="toy"))
    yield entry
    unregister_estimator(TOY)


def _mlp_data(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)
    x, xv = torch.randn(6, 5, dtype=dtype), torch.randn(4, 5, dtype=dtype)
    return model, (x, torch.randint(0, 3, (6,))), (xv, torch.randint(0, 3, (4,)))


def test_a_registered_estimator_is_scored_through_session_and_estimate(toy):
    model, train, ref = _mlp_data()
    assert TOY in estimator_names() and TOY in estimator_names(needs_backward=False)
    r = influence.Session(model, CE, ref, estimator=TOY, lr=0.5).score(train)
    l, lv = CE(model(train[0]), train[1]).detach(), CE(model(ref[0]), ref[1]).detach()
    assert r.estimator == TOY and torch.allclose(r.scores, 0.5 * l * lv.mean(), rtol=1e-12, atol=0)
    assert torch.equal(influence.estimate(TOY, model, CE, train, ref, lr=0.5).scores, r.scores)
    pair = influence.Session(model, CE, ref, estimator=TOY, lr=0.5, pairwise=True).score(train)
    assert pair.pairwise.shape == (6, 4) and torch.allclose(pair.scores, r.scores, rtol=1e-12, atol=0)
    assert torch.allclose(influence.Session(model, CE, ref, estimator=TOY, lr=0.5).self_influence(train),
                          0.5 * l * l, rtol=1e-12, atol=0)


def test_capabilities_decide_what_a_session_accepts(toy):
    model, train, ref = _mlp_data()
    with pytest.raises(influence.InfluenceError, match="ref=None .* available for ghost, lai"):
        influence.Session(model, CE, None, estimator=TOY, lr=0.1)
    with pytest.raises(influence.InfluenceError, match="cannot apply a preconditioner"):
        influence.Session(model, CE, ref, estimator=TOY, lr=0.1,
                          preconditioner={n: torch.ones_like(p) for n, p in model.named_parameters()})


def test_names_are_one_spelling():
    with pytest.raises(UnknownEstimatorError, match="spelled 'lai-last'"):
        get_estimator("lai_last")
    with pytest.raises(UnknownEstimatorError, match="choose from exact, ghost, lai"):
        influence.Session(nn.Linear(2, 2), CE, (torch.randn(2, 2), torch.tensor([0, 1])), estimator="nope", lr=0.1)
    for bad in ("Toy", "toy_loss", "toy[last]", ""):
        with pytest.raises(influence.InvalidArgumentError, match="lower case words"):
            register_estimator(Estimator(bad, "x", LossProduct))
    with pytest.raises(influence.InvalidArgumentError, match="registered already"):
        register_estimator(get_estimator("ghost"))


def test_an_entry_fixes_its_options():
    model, train, ref = _mlp_data()
    with pytest.raises(influence.InfluenceError, match="fixes .*layers.*'last'"):
        influence.Session(model, CE, ref, estimator="lai-last", lr=0.1, layers="all")
    with pytest.raises(influence.InvalidArgumentError, match="unknown estimator options"):
        influence.Session(model, CE, ref, estimator="ghost", lr=0.1, no_such_option=1)
    last = influence.Session(model, CE, ref, estimator="lai-last", lr=0.1).score(train)
    assert last.estimator == "lai-last"
    assert torch.equal(influence.lai(model, CE, train, ref, lr=0.1, layers="last").scores, last.scores)


def test_entries_marked_exact_equal_exact():
    model, train, ref = _mlp_data()
    want = influence.exact(model, CE, train, ref, lr=0.1).scores
    exact = [n for n in estimator_names(exact=True, checkpoints=False)]
    assert {"exact", "ghost"} <= set(exact)
    for name in exact:
        got = influence.estimate(name, model, CE, train, ref, lr=0.1).scores
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14), name
    tracin = influence.estimate("tracin", model, CE, train, ref, lr=0.1).scores  # one checkpoint: the weights
    assert torch.allclose(tracin, want, rtol=1e-10, atol=1e-14)


def test_every_entry_scores_a_small_model():
    model, train, ref = _mlp_data()
    for name in estimator_names(sequence_only=False):
        r = influence.estimate(name, model, CE, train, ref, lr=0.1)
        assert r.estimator == name and r.scores.shape == (6,) and torch.isfinite(r.scores).all(), name
