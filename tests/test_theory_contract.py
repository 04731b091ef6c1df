"""``theory`` under the estimators' contract (issue 26): the decomposition sums to Ghost - LAI and the data bound
holds on the models it covers, and every other model gets a named error (``influence.TheoryScopeError``,
``BatchCouplingError``), never a raw one (``jacobians.py``'s reshape on a position embedding without a batch
dimension, ``torch.func`` on a custom ``autograd.Function``) and never numbers the verification did not vouch for."""

from __future__ import annotations

import warnings

import pytest
import torch
from adversarial_models import Context, Coupled, Gated
from adversarial_setup import NanoPositions, mlp_setup, token_setup
from torch import nn

import influence
import theory

LR = 0.1


class Cube(torch.autograd.Function):
    """A custom autograd.Function without ``setup_context`` (torch.func cannot transform it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x + x ** 3 / 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 + x ** 2)


class CustomFn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(Cube.apply(self.a(x))))


def _both(s) -> None:
    theory.decomposition(s.model, s.loss_fn, s.train, s.ref, LR)
    theory.data_bound(s.model, s.loss_fn, s.train, s.ref, LR)


REFUSED = {
    "nanogpt_positions_T_ne_n": (lambda: token_setup(NanoPositions(), n_train=3, n_ref=2, t=5),
                                 influence.TheoryScopeError),
    "nanogpt_positions_T_eq_n": (lambda: token_setup(NanoPositions(), n_train=4, n_ref=4, t=4),
                                 influence.TheoryScopeError),
    "custom_autograd_function": (lambda: mlp_setup(CustomFn()), influence.TheoryScopeError),
    "context_reduced": (lambda: mlp_setup(Context("reduce")), influence.TheoryScopeError),
    "context_multiplied": (lambda: mlp_setup(Context("mul")), influence.TheoryScopeError),
    "zero_dim_parameters": (lambda: mlp_setup(Gated()), influence.TheoryScopeError),
    "batch_mean": (lambda: mlp_setup(Coupled("mean")), influence.BatchCouplingError),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_theory_refuses_by_name(f64, name: str) -> None:
    build, err = REFUSED[name]
    s = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(err):
            theory.decomposition(s.model, s.loss_fn, s.train, s.ref, LR)
        with pytest.raises(err):
            theory.data_bound(s.model, s.loss_fn, s.train, s.ref, LR)


def test_theory_scope_error_is_both_named_and_not_implemented() -> None:
    """Callers that caught theory's NotImplementedError (``validation.suites.bound``, ``theory.analysis``) still do."""
    assert issubclass(influence.TheoryScopeError, influence.InfluenceError)
    assert issubclass(influence.TheoryScopeError, NotImplementedError)


@pytest.mark.parametrize("how", ["add", "expand"])
def test_theory_holds_with_a_context_call_broadcast_to_the_batch(f64, how: str) -> None:
    """A Linear on a [1, d] context broadcast against the batch is covered: decomposition = Ghost - LAI, bound
    holds."""
    s = mlp_setup(Context(how))
    g = influence.ghost(s.model, s.loss_fn, s.train, s.ref, LR)
    lai = influence.lai(s.model, s.loss_fn, s.train, s.ref, LR)
    assert not g.routed_to_exact
    d = theory.decomposition(s.model, s.loss_fn, s.train, s.ref, LR)
    diff = g.scores - lai.scores
    assert (sum(d.values()) - diff).abs().max() <= 1e-9 * diff.abs().max()
    bound = theory.data_bound(s.model, s.loss_fn, s.train, s.ref, LR)
    assert bool((diff.abs() <= bound * (1 + 1e-9) + 1e-15).all())


def test_non_module_and_string_loss_are_named(f64) -> None:
    s = mlp_setup(Coupled("none"))
    with pytest.raises(influence.InvalidArgumentError):
        theory.decomposition(lambda x: x, s.loss_fn, s.train, s.ref, LR)
    with pytest.raises(influence.InvalidArgumentError):
        theory.data_bound(s.model, "ce", s.train, s.ref, LR)
