"""The one-shot fast path stays exact (float64): the plan cache notices every change a plan depends on, the
finite checks still catch NaN and infinity, the closed-form output gradient equals autograd's, the contraction's
orientations and unstored ones columns equal the explicit products, and LAI from views with an unstored bias
column equals the formula with [a, 1] concatenated."""

import gc
import weakref

import pytest
import torch
from conftest import rel_err
from torch import nn

import influence
import influence.capture.planning as capture
from influence.checks import all_finite
from influence.errors import NonFiniteInputError, StochasticModuleError, UndefinedGradientError
from influence.factors import Dense, Segment, segment_contract, segment_matrix
from influence.layers import base as layer_base
from influence.losses import output_gradient

CE = influence.cross_entropy
TOL = 1e-10


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Dropout(0.5), nn.Linear(9, 4)).double().eval()


def data(n, seed=0, d=6, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


@pytest.fixture
def planned(monkeypatch):
    """Counts the plans actually computed (cache misses)."""
    calls = []
    real = capture._plan

    def counting(model, fallback):
        calls.append(1)
        return real(model, fallback)
    monkeypatch.setattr(capture, "_plan", counting)
    return calls


# ------------------------------------------------------------------ plan cache


def test_plan_cache_hit_returns_an_equal_private_copy(planned):
    model = mlp()
    a = capture.plan(model)
    b = capture.plan(model)
    assert len(planned) == 1
    assert a is not b and a.modules == b.modules and a.names == b.names and a.rules == b.rules
    a.routed[123] = ("x", "y")
    a.modules.clear()
    c = capture.plan(model)
    assert 123 not in c.routed and c.modules == b.modules
    capture.plan(model, "exact")  # another fallback: its own entry
    assert len(planned) == 2 and capture.plan(model, "exact").fallback == "exact"


def test_plan_cache_sees_requires_grad_toggle(planned):
    model = mlp()
    before = capture.plan(model)
    model[0].weight.requires_grad_(False)
    after = capture.plan(model)
    assert len(planned) == 2
    assert id(model[0].weight) in before.names and id(model[0].weight) not in after.names
    model[0].weight.requires_grad_(True)
    assert capture.plan(model).names == before.names


def test_plan_cache_sees_module_swap_and_parameter_replacement(planned):
    model = mlp()
    old = capture.plan(model)
    model[3] = nn.Linear(9, 4).double()
    new = capture.plan(model)
    assert new.modules["3"] is model[3] and old.modules["3"] is not model[3]
    model[0].weight = nn.Parameter(torch.randn(9, 6, dtype=torch.float64))
    newer = capture.plan(model)
    assert id(model[0].weight) in newer.names
    with torch.no_grad():
        model[0].weight.data = torch.randn(9, 6, dtype=torch.float64)  # same object, same shape: same plan
    capture.plan(model)
    assert len(planned) == 3


def test_plan_cache_sees_train_eval_and_settings(planned):
    model = mlp()
    capture.plan(model)
    model.train()
    with pytest.raises(StochasticModuleError):
        capture.plan(model)
    model[2].p = 0.0  # a setting: dropout with rate 0 is allowed in train mode
    capture.plan(model)
    model.eval()
    capture.plan(model)
    assert len(planned) == 4
    emb = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    capture.plan(emb)
    emb[0].max_norm = 1.0
    with pytest.raises(UndefinedGradientError):
        capture.plan(emb)


def test_plan_cache_sees_registry_changes(planned, monkeypatch):
    model = mlp()
    capture.plan(model)
    version = capture.registry_version()
    monkeypatch.setattr(capture, "registry_version", lambda: version + 1)  # as after a register_layer call
    capture.plan(model)
    assert len(planned) == 2


def test_plan_cache_keeps_no_model_alive():
    for make in (mlp, lambda: nn.Linear(3, 2).double()):  # a model that is itself a scored layer is not cached
        model = make()
        capture.plan(model)
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None


def test_session_scores_follow_a_frozen_layer():
    model, train, ref = mlp(), data(7, 1), data(9, 2)
    s = influence.Session(model, CE, ref, estimator="lai", lr=0.1)
    all_layers = s.score(train).per_layer
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    s.refresh()
    frozen = s.score(train)
    assert "0" in all_layers and "0" not in frozen.per_layer
    fresh = influence.lai(model, CE, train, ref, lr=0.1)
    assert rel_err(frozen.scores, fresh.scores) < TOL


# ------------------------------------------------------------------ finite checks


def test_all_finite_catches_nan_and_inf_and_survives_overflow():
    x = torch.randn(50, 3, dtype=torch.float64)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[17, 1] = bad
        assert not all_finite(y)
    big = torch.full((64,), 6e4, dtype=torch.float16)  # finite entries whose sum overflows float16
    assert all_finite(big)
    both = torch.tensor([float("inf"), -float("inf")])
    assert not all_finite(both)
    assert not all_finite(torch.tensor([1.0, float("nan")], dtype=torch.complex64))
    x = torch.randn(4, 6, dtype=torch.float64)
    x[2, 0] = float("nan")
    for layers in ("all", "last"):
        with pytest.raises(NonFiniteInputError, match=r"samples \[2\]"):
            influence.lai(mlp(), CE, (x, torch.zeros(4, dtype=torch.long)), data(3), lr=0.1, layers=layers)


# ------------------------------------------------------------------ output gradient


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5)])
@pytest.mark.parametrize("ignore", [False, True])
def test_closed_form_output_gradient_equals_autograd(shape, ignore):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, shape[-1], shape[:-1], generator=g)
    if ignore:
        t.view(-1)[::3] = -100
    losses, grad = output_gradient(CE, f, t)
    leaf = f.clone().requires_grad_(True)
    want = CE(leaf, t)
    (want_g,) = torch.autograd.grad(want.sum(), leaf)
    assert torch.equal(losses, want.detach())
    assert rel_err(grad, want_g) < TOL


# ------------------------------------------------------------------ factor products


@pytest.mark.parametrize("p,q", [(3, 40), (40, 3), (50, 60), (1, 1)])
@pytest.mark.parametrize("lo,ro", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("t", [1, 3])
def test_contract_and_matrix_with_unstored_ones_equal_explicit(p, q, lo, ro, t):
    g = torch.Generator().manual_seed(p * 100 + q)
    n = 6
    a = torch.randn(n, t, 1, p, generator=g, dtype=torch.float64)
    b = torch.randn(n, t, 1, q, generator=g, dtype=torch.float64)
    seg = Segment(Dense(a, lo), Dense(b, ro))
    ax, bx = Dense(a, lo).x, Dense(b, ro).x
    m = torch.randn(1, p + lo, q + ro, generator=g, dtype=torch.float64)
    want = torch.einsum("itgp,gpq,itgq->i", ax, m, bx)
    assert rel_err(segment_contract(seg, m), want) < TOL
    assert rel_err(segment_matrix(seg), torch.einsum("itgp,itgq->gpq", ax, bx)) < TOL


def test_linear_lai_activation_is_a_view_with_unstored_ones():
    lin = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    act = influence.layers.lai_activation(lin, x)
    assert act.ones and act.data.data_ptr() == x.data_ptr()
    assert torch.equal(act.x, layer_base.with_bias(x.reshape(5, 1, 1, 4), True, True))
    lin.weight.requires_grad_(False)
    only_bias = influence.layers.lai_activation(lin, x)
    assert torch.equal(only_bias.x, torch.ones(5, 1, 1, 1, dtype=torch.float64))


@pytest.mark.parametrize("layers", ["all", "last"])
def test_lai_equals_the_formula_with_bias_columns(layers):
    """LAI_i = lr * mean_v (g_i . g_v) * sum_l ([a_i, 1] . [a_v, 1]), computed by hand."""
    model, train, ref = mlp(), data(8, 1), data(11, 2)
    got = influence.lai(model, CE, train, ref, lr=0.3, layers=layers)

    def parts(batch):
        h0 = batch[0]
        h1 = torch.tanh(model[0](h0))
        f = model[3](h1)
        _, g = output_gradient(CE, f.detach(), batch[1])
        ones = torch.ones(len(h0), 1, dtype=torch.float64)
        return g, [torch.cat([h0, ones], 1), torch.cat([h1, ones], 1)]

    gt, at = parts(train)
    gv, av = parts(ref)
    pairs = [1] if layers == "last" else [0, 1]
    want = 0.3 * sum(((gt @ gv.T) * (at[k] @ av[k].T)).mean(1) for k in pairs)
    assert rel_err(got.scores.detach(), want.detach()) < TOL


# ------------------------------------------------------------------ last layer recorded alone


class TwoHeads(nn.Module):
    """The output comes from head ``a`` for even batch sizes and from head ``b`` for odd ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Linear(6, 9).double()
        self.a = nn.Linear(9, 4).double()
        self.b = nn.Linear(9, 4).double()

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.a(h) if len(x) % 2 == 0 else self.b(h)


def one_head(model, head):
    return nn.Sequential(model.body, nn.Tanh(), getattr(model, head))


def test_last_layer_follows_the_output_layer_and_refuses_a_changing_one():
    model = TwoHeads()
    for n_train, n_ref, head in ((8, 10, "a"), (7, 9, "b"), (6, 4, "a")):  # the remembered output layer goes stale
        train, ref = data(n_train, 1), data(n_ref, 2)
        got = influence.lai(model, CE, train, ref, lr=0.1, layers="last")
        want = influence.lai(one_head(model, head), CE, train, ref, lr=0.1, layers="last")
        assert rel_err(got.scores, want.scores) < TOL
        assert list(got.per_layer) == [head]
    s = influence.Session(model, CE, data(10, 2), estimator="lai-last", lr=0.1)
    with pytest.raises(influence.InfluenceError, match="output comes from layer 'b'"):
        s.score(data(7, 1))


# ------------------------------------------------------------------ kept sessions


@pytest.mark.parametrize("estimator", ["lai", "lai-last", "ghost"])
def test_refreshed_session_equals_a_fresh_one_after_updates_and_a_swap(estimator):
    model, train, ref = mlp(), data(7, 1), data(9, 2)
    s = influence.Session(model, CE, ref, estimator=estimator, lr=0.2)
    s.score(train)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    s.refresh()
    fresh = influence.Session(model, CE, ref, estimator=estimator, lr=0.2).score(train)
    kept = s.score(train)
    assert rel_err(kept.scores, fresh.scores) < TOL
    model[3] = nn.Linear(9, 4).double()  # a new output layer: the cached plan and output layer must not be reused
    s.refresh()
    fresh = influence.Session(model, CE, ref, estimator=estimator, lr=0.2).score(train)
    kept = s.score(train)
    assert rel_err(kept.scores, fresh.scores) < TOL
    assert kept.scores.abs().max() > 0


def test_scores_are_fresh_tensors():
    model, train, ref = mlp(), data(7, 1), data(9, 2)
    r = influence.lai(model, CE, train, ref, lr=0.1, layers="last")
    (only,) = r.per_layer.values()
    r.scores.add_(1.0)
    assert not torch.equal(r.scores, only)


@pytest.mark.parametrize("pad", [False, True])
def test_closed_form_output_gradients_equal_autograd(pad):
    """The closed forms of cross_entropy on [n, T, C] and of influence.hf.causal_lm_loss (its own
    output_gradient attribute) equal autograd's gradient of the per-sample losses, in float64, with ignored
    targets (padding) and a sample with none counted."""
    from influence import hf
    from influence.losses import output_gradient
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (3, 6), generator=g)
    if pad:
        y[0, 4:] = -100
        y[2, :] = -100
    for loss_fn in (influence.cross_entropy, hf.causal_lm_loss()):
        losses, got = output_gradient(loss_fn, f, y)
        x = f.clone().requires_grad_(True)
        want_losses = loss_fn(x, y)
        (want,) = torch.autograd.grad(want_losses.sum(), x)
        assert torch.allclose(losses, want_losses.detach(), rtol=1e-12, atol=1e-14)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
