"""Optimizer-aware scores: with Adam's diagonal preconditioner, Exact predicts the first-order change of the reference
loss caused by each sample in a real torch.optim.Adam step better than the SGD score does (float64)."""

import copy

import pytest
import torch
from scipy import stats
from torch import nn

import influence
from influence.optim import MissingOptimizerStateError, adam_preconditioner, is_adaptive


def setup(seed=0, n=24, steps=200, betas=(0.9, 0.999)):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # features on very different scales: Adam's per-coordinate step differs a lot from SGD's
    scale = torch.logspace(-2, 1, 8, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 3, (n,), generator=g)
    ref = (torch.randn(32, 8, generator=g, dtype=torch.float64) * scale, torch.randint(0, 3, (32,), generator=g))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=betas)
    for _ in range(steps):  # real steps, so the moments are those of a model in training
        idx = torch.randint(0, n, (8,), generator=g)
        opt.zero_grad()
        influence.cross_entropy(model(x[idx]), y[idx]).mean().backward()
        opt.step()
    return model, opt, (x, y), ref


def adam_update(model, opt, data, weights):
    """The parameter change of one real torch.optim.Adam step (lr = 1) on the weighted batch loss
    sum_j w_j l_j / n, from the optimizer's current state; the model and optimizer are left untouched."""
    m = copy.deepcopy(model)
    o = torch.optim.Adam(m.parameters())
    o.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict may alias the state tensors
    for group in o.param_groups:
        group["lr"] = 1.0
    o.zero_grad()
    (influence.cross_entropy(m(data[0]), data[1]) * weights).sum().div(len(weights)).backward()
    o.step()
    return [(a - b).detach() for a, b in zip(m.parameters(), model.parameters())]


def ref_gradient(model, ref):
    loss = influence.cross_entropy(model(ref[0]), ref[1]).mean()
    return torch.autograd.grad(loss, list(model.parameters()))


def first_order_decrease(grad_ref, delta):
    """-<grad L_ref, delta w>: the first-order decrease of the reference loss caused by the update delta w (per unit
    lr; it is the limit of (L_ref(w) - L_ref(w + lr delta)) / lr as lr -> 0, computed without the rounding of a
    loss difference)."""
    return -sum(float((g * d).sum()) for g, d in zip(grad_ref, delta))


def batch_share(model, opt, data, ref):
    """Per sample: the decrease of the reference loss owed to the sample's share of a real Adam step on the whole
    batch, i.e. first-order decrease of (step on the batch) minus that of (the same step with the sample's weight 0)."""
    gref, n = ref_gradient(model, ref), len(data[1])
    full = first_order_decrease(gref, adam_update(model, opt, data, torch.ones(n, dtype=torch.float64)))
    out = []
    for i in range(n):
        w = torch.ones(n, dtype=torch.float64)
        w[i] = 0
        out.append(full - first_order_decrease(gref, adam_update(model, opt, data, w)))
    return torch.tensor(out, dtype=torch.float64)


def single_sample_step(model, opt, data, ref):
    """Per sample: the decrease of the reference loss after a real Adam step on that sample alone."""
    gref, n = ref_gradient(model, ref), len(data[1])
    one = torch.ones(1, dtype=torch.float64)
    return torch.tensor([first_order_decrease(gref, adam_update(model, opt, (data[0][i:i + 1], data[1][i:i + 1]),
                                                                 one)) for i in range(n)], dtype=torch.float64)


def correlations(model, opt, data, ref, truth):
    P = adam_preconditioner(opt, model)
    sgd = influence.exact(model, influence.cross_entropy, data, ref, lr=1.0).scores
    adam = influence.exact(model, influence.cross_entropy, data, ref, lr=1.0, preconditioner=P).scores
    return stats.pearsonr(sgd, truth).statistic, stats.pearsonr(adam, truth).statistic


def test_adam_preconditioned_exact_predicts_a_real_adam_batch_step():
    model, opt, data, ref = setup()
    r_sgd, r_adam = correlations(model, opt, data, ref, batch_share(model, opt, data, ref))
    print(f"sample's share of a real Adam batch step, Pearson r: SGD score {r_sgd:.4f}, "
          f"Adam-preconditioned {r_adam:.4f}")
    assert r_adam > 0.999 and r_adam > r_sgd


def test_adam_preconditioned_exact_predicts_real_single_sample_adam_steps():
    """A step on one sample alone also moves the second moment v by (1 - beta2) g_i^2 (second order in g_i, left out
    of the preconditioned score): still predicted better than by the SGD score."""
    model, opt, data, ref = setup()
    r_sgd, r_adam = correlations(model, opt, data, ref, single_sample_step(model, opt, data, ref))
    print(f"single-sample real Adam step, Pearson r: SGD score {r_sgd:.4f}, Adam-preconditioned {r_adam:.4f}")
    assert r_adam > 0.99 and r_adam > r_sgd


def test_preconditioner_of_ones_is_the_sgd_score_and_bad_ones_are_named():
    model, opt, data, ref = setup()
    ones = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    a = influence.exact(model, influence.cross_entropy, data, ref, lr=0.1).scores
    b = influence.exact(model, influence.cross_entropy, data, ref, lr=0.1, preconditioner=ones).scores
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    with pytest.raises(influence.InfluenceError, match="shape"):
        influence.exact(model, influence.cross_entropy, data, ref, lr=0.1, preconditioner={"0.weight": torch.ones(3)})
    with pytest.raises(influence.InfluenceError, match="does not have"):
        influence.exact(model, influence.cross_entropy, data, ref, lr=0.1, preconditioner={"nope": torch.ones(3)})


def test_preconditioner_needs_a_step_and_adam():
    model = nn.Linear(3, 2)
    with pytest.raises(MissingOptimizerStateError):
        adam_preconditioner(torch.optim.Adam(model.parameters()), model)
    with pytest.raises(TypeError):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert is_adaptive(torch.optim.AdamW(model.parameters())) and not is_adaptive(torch.optim.SGD(model.parameters(), lr=1))
