"""Optimizer-aware scores: which update the score is the first-order effect of.

The score of sample i is the first-order decrease of the reference loss caused by the part of the next update
that sample i contributes: score_i = <Delta w_i, grad L_ref> with Delta w_i that contribution.

* SGD (with or without momentum, dampening 0): the sample's part of the update is lr * grad l_i / n; the
  momentum buffer's carried-over part is the same for every sample and is not scored. The package scores
  lr * <grad l_i, grad L_ref> (the 1/n of the batch mean is left out; it scales every score alike).
* Adam / AdamW: the update is lr * mhat / (sqrt(vhat) + eps) with m, v the running moments. Linearised in the
  sample's gradient with the second moment held at its current value, the sample's part is
  lr * P (.) grad l_i with the diagonal preconditioner

      P = (1 - beta1) / (1 - beta1^(t+1)) / (sqrt(v_t / (1 - beta2^t)) + eps)         (t = steps taken so far)

  so the score is lr * <P (.) grad l_i, grad L_ref>. What this leaves out: the change of v caused by the sample
  itself (second order in its gradient at the current v), the momentum carried over and decoupled weight decay
  (the same for every sample). :func:`adam_preconditioner` reads P from a ``torch.optim.Adam``/``AdamW`` state.

How each estimator uses P (``preconditioner=`` of :func:`influence.exact` and of Ghost's materialised form):
Exact and Ghost in contracted form apply P to the reference gradient (<P (.) G_i, M> = <G_i, P (.) M>), exactly;
the Gram forms of Ghost and LAI cannot carry an elementwise P, and LAI additionally replaces each layer's output
gradient by g, so under Adam they rank by the SGD score (an approximation that ignores P).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .errors import ArgumentTypeError, MissingOptimizerStateError, OptimizerWarning  # noqa: F401 (re-exported)


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Tensor]:
    """{parameter name in ``model``: P} for every parameter of ``model`` that ``optimizer`` (Adam or AdamW) holds
    state for. Raises :class:`MissingOptimizerStateError` before the first step (v does not exist yet)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise ArgumentTypeError(f"adam_preconditioner needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise NotImplementedError("amsgrad keeps the running maximum of v; its preconditioner is not supported")
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        for p in group["params"]:
            if id(p) not in names or not p.requires_grad:
                continue
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise MissingOptimizerStateError(
                    f"{names[id(p)]}: the optimizer holds no second moment yet (take at least one step before "
                    "scoring with the Adam preconditioner)")
            t = float(state["step"])
            vhat = state["exp_avg_sq"] / (1 - beta2 ** t)
            out[names[id(p)]] = (1 - beta1) / (1 - beta1 ** (t + 1)) / (vhat.sqrt() + eps)
    return out


def is_adaptive(optimizer: torch.optim.Optimizer | None) -> bool:
    """True for optimizers whose update is preconditioned per coordinate (Adam family, RMSprop, Adagrad...)."""
    if optimizer is None:
        return False
    adaptive = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
                torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta)
    return isinstance(optimizer, adaptive) or "adam" in type(optimizer).__name__.lower()


def optimizer_preconditioner(optimizer: torch.optim.Optimizer | None, model: nn.Module, applies: bool
                             ) -> dict[str, Tensor] | None:
    """Adam's P from ``optimizer``'s current state where the estimator ``applies`` a preconditioner (its
    ``Capabilities.preconditioner``), else None (the SGD formula)."""
    if applies and isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return adam_preconditioner(optimizer, model)
    return None


def warn_sgd_formula(optimizer: torch.optim.Optimizer, estimator: str, applies: bool) -> None:
    """Warn once (``OptimizerWarning``) when ``optimizer`` preconditions its update but ``estimator`` will score the
    SGD formula: an adaptive optimizer, and not Adam under an estimator that ``applies`` a preconditioner."""
    adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    if is_adaptive(optimizer) and not (adam and applies):
        warnings.warn(f"influence.Session: the optimizer ({type(optimizer).__name__}) preconditions its update, but "
                      f"{estimator} scores the SGD formula lr * <grad l_i, grad L_ref>; the scores approximate the "
                      "optimizer's effect (see influence.optim)", OptimizerWarning, stacklevel=3)
