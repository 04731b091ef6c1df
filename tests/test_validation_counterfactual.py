"""The one-step counterfactual against steps taken by hand, and its first-order limit (= Exact)."""

import copy

import pytest
import torch
from conftest import rel_err

import influence
from validation.suites.counterfactual import one_step_counterfactual, per_sample_gradients
from validation.training.models import MLP, CausalTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def _by_hand(model, loss_fn, train, ref, lr):
    """n * (L_ref(w_{B-i}) - L_ref(w_B)) with each step taken on a copy of the model by autograd."""
    n = len(train[1])

    def stepped(weights):
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        loss = (loss_fn(m(train[0]), train[1]) * weights).sum() / n
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
            return float(loss_fn(m(ref[0]), ref[1]).mean())

    full = stepped(torch.ones(n, dtype=torch.float64))
    out = []
    for i in range(n):
        w = torch.ones(n, dtype=torch.float64)
        w[i] = 0
        out.append(n * (stepped(w) - full))
    return torch.tensor(out, dtype=torch.float64)


def test_counterfactual_equals_steps_taken_by_hand(f64):
    torch.manual_seed(0)
    model = MLP(d_in=6, hidden=(8, 7), n_classes=4).eval()
    train = (torch.randn(9, 6), torch.randint(0, 4, (9,)))
    ref = (torch.randn(5, 6), torch.randint(0, 4, (5,)))
    cf = one_step_counterfactual(model, influence.cross_entropy, train, ref, lr=0.3, chunk_size=4)
    assert rel_err(cf, _by_hand(model, influence.cross_entropy, train, ref, 0.3)) < 1e-9


def test_counterfactual_on_a_language_model_matches_by_hand(f64):
    torch.manual_seed(1)
    model = CausalTransformer(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_len=5).eval()
    ids = torch.randint(0, 11, (6, 6))
    train, ref = (ids[:4, :5], ids[:4, 1:]), (ids[4:, :5], ids[4:, 1:])
    cf = one_step_counterfactual(model, influence.cross_entropy, train, ref, lr=0.5)
    assert rel_err(cf, _by_hand(model, influence.cross_entropy, train, ref, 0.5)) < 1e-9


def test_counterfactual_tends_to_exact_as_lr_vanishes(f64):
    torch.manual_seed(2)
    model = MLP(d_in=5, hidden=(6,), n_classes=3).eval()
    train = (torch.randn(7, 5), torch.randint(0, 3, (7,)))
    ref = (torch.randn(4, 5), torch.randint(0, 3, (4,)))
    errs = []
    for lr in (1e-2, 1e-3):
        cf = one_step_counterfactual(model, influence.cross_entropy, train, ref, lr)
        errs.append(rel_err(cf, influence.exact(model, influence.cross_entropy, train, ref, lr).scores))
    # second-order remainder: error relative to the score scale shrinks ~ linearly with lr
    assert errs[1] < errs[0] / 5 and errs[1] < 1e-2


def test_per_sample_gradients_sum_to_batch_gradient(f64):
    torch.manual_seed(3)
    model = MLP(d_in=4, hidden=(5,), n_classes=3).eval()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    g = per_sample_gradients(model, influence.cross_entropy, (x, y), chunk_size=4)
    full = torch.autograd.grad(influence.cross_entropy(model(x), y).sum(), list(model.parameters()))
    for (name, _), ref in zip(model.named_parameters(), full):
        assert g[name].shape == (6, *ref.shape)
        assert rel_err(g[name].sum(0), ref) < 1e-12


def test_model_is_left_unchanged(f64):
    torch.manual_seed(4)
    model = MLP(d_in=4, hidden=(5,), n_classes=3).eval()
    before = copy.deepcopy(model.state_dict())
    one_step_counterfactual(model, influence.cross_entropy, (torch.randn(3, 4), torch.tensor([0, 1, 2])),
                            (torch.randn(2, 4), torch.tensor([1, 1])), lr=0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
