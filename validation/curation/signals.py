"""What each method scores a batch with, and which part of that scoring pass its update reuses.

Every influence signal goes through the package's public scoring API (``influence.Session``, ``influence.exact``):
``score_batch`` returns a :class:`Scored`: per-sample values (influence scores, losses or gradient norms),
the per-sample losses, and ``gradient(weights)`` = [(param, sum_i w_i grad l_i)] for the update. Reuse:

* ``lai`` / ``lai-last``: ONE forward pass with autograd on the batch (``Session.score(batch, keep_graph=True)``),
  with hooks recording every layer's input. The LAI scores come from those recorded activations and g = dl/df of
  the same logits; the update (``result.weighted_gradient``) is one backward of sum_i w_i l_i through that same
  graph (no second forward).
* ``ghost`` (and ``gradnorm``): one forward and one truncated backward, which never writes ``.grad``; the update is
  sum_i w_i a_i (x) b_i assembled from the recorded factors (``result.weighted_gradient``): no second backward.
* ``loss`` / ``random`` / ``none``: one forward with autograd; the update backpropagates that graph.
* ``exact`` (= ``tracin``: online TracIn at the current checkpoint is Exact): ``influence.exact`` scores with
  per-sample gradients from torch.func; nothing is reused, the update is a second forward and backward on
  the kept samples only.

Sessions run with ``fallback='error'``: curation refuses, with the named error, whatever the factorisation does not
cover (its updates reuse the factors). The reference side of LAI/Ghost/Exact is one extra pass over the reference
batch (forward only for LAI, forward + truncated backward for Ghost), at every step, or every k steps for LAI and
Ghost when the caller keeps the session (``Curator(refresh_every=k)``); ``ref=None`` scores against the batch itself
from the batch's own capture. ``pairwise()`` (greedy selection) is ``result.pairwise_within()``, from the same
factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

import influence
from influence.batch import Batch, LossFn, call_model, check_batch, output_tensor, take
from influence.errors import EmptyBatchError
from influence.losses import per_sample_losses

from .errors import EmptyReferenceError

ESTIMATORS = ("lai", "lai-last", "ghost", "exact", "tracin")
SIGNALS = (*ESTIMATORS, "loss", "gradnorm", "random", "none")

Gradient = list[tuple[nn.Parameter, Tensor]]


@dataclass
class Scored:
    """One scoring pass over a batch of n samples.

    ``values`` [n]: the signal (lr * <grad l_i, grad L_ref> for estimators, l_i for ``loss``,
    ||grad l_i|| for ``gradnorm``; None for ``random``/``none``). ``losses`` [n] detached.
    ``gradient(w)``: [(param, sum_i w_i grad l_i)] for the update (single use for graph-based signals).
    ``pairwise()``: [n, n] lr * <grad l_i, grad l_j> between the batch's samples from the same estimator.
    ``reused``: what the update reuses from the scoring pass, in words.
    """

    signal: str
    values: Tensor | None
    losses: Tensor
    gradient: Callable[[Tensor], Gradient]
    pairwise: Callable[[], Tensor] | None = None
    reused: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _graph_gradient(model: nn.Module, losses: Tensor) -> Callable[[Tensor], Gradient]:
    """sum_i w_i grad l_i by one backward through the graph the scoring forward built (usable once)."""
    params = trainable_params(model)
    state = {"used": False}

    def gradient(weights: Tensor) -> Gradient:
        if state["used"]:
            raise RuntimeError("the scoring pass's graph was already used for an update; score the batch again")
        state["used"] = True
        objective = (weights.to(losses.dtype) * losses).sum()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        return [(p, g) for p, g in zip(params, grads) if g is not None]
    return gradient


def _subset_gradient(model: nn.Module, loss_fn: LossFn, batch: Batch) -> Callable[[Tensor], Gradient]:
    """sum_i w_i grad l_i by a fresh forward and backward over the samples with w_i != 0 only."""
    params = trainable_params(model)

    def gradient(weights: Tensor) -> Gradient:
        idx = weights.nonzero().flatten()
        if len(idx) == 0:
            return [(p, torch.zeros_like(p)) for p in params]
        sub = take(batch, idx.to(weights.device))
        with torch.enable_grad():
            f = output_tensor(call_model(model, sub[0]))
            losses = per_sample_losses(loss_fn, f, sub[1], len(idx), "train")
            objective = (weights[idx].to(losses.dtype) * losses).sum()
            grads = torch.autograd.grad(objective, params, allow_unused=True)
        return [(p, g) for p, g in zip(params, grads) if g is not None]
    return gradient


def _reference_size(ref: Batch | None) -> int | None:
    if ref is None:
        return None
    try:
        n_v = check_batch(ref, "ref")
    except EmptyBatchError:
        n_v = 0
    if n_v == 0:
        raise EmptyReferenceError("the reference batch is empty; pass at least one reference sample, or "
                                  "ref=None to score against the batch itself")
    return n_v


def _graph_forward(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int) -> tuple[Tensor, Tensor]:
    """Forward with autograd. Returns (f, losses attached to the graph)."""
    x, y = batch
    with torch.enable_grad():
        f = output_tensor(call_model(model, x))
        losses = per_sample_losses(loss_fn, f, y, n, "train")
    return f, losses


SESSION_SIGNALS = ("lai", "lai-last", "ghost")  # signals whose reference statistics a session can keep


def session_for(model: nn.Module, loss_fn: LossFn, ref: Batch | None, estimator: str, lr: float,
                mode: str) -> influence.Session:
    """The public scoring session; curation refuses what the factorisation does not cover (``fallback='error'``:
    its updates reuse the factors or the scoring forward). ``ref=None`` scores the batch against itself."""
    return influence.Session(model, loss_fn, ref, estimator=estimator, lr=lr, mode=mode, fallback="error")


_REUSED = {"lai": "the scoring forward pass (activations and logits): the update backpropagates its graph",
           "ghost": "the scoring backward pass: the update is sum_i w_i a_i (x) b_i from its recorded factors"}


def _score_session(session: influence.Session, batch: Batch, signal: str) -> Scored:
    """LAI (one forward kept with its graph) or Ghost (the recorded factors) through ``session``."""
    lai = signal != "ghost"
    r = session.score(batch, keep_graph=lai)
    return Scored(signal, r.scores, r.train_losses, r.weighted_gradient, r.pairwise_within,
                  _REUSED["lai" if lai else "ghost"])


def _score_gradnorm(model, loss_fn, batch, n, lr, mode) -> Scored:
    r = session_for(model, loss_fn, None, "ghost", 1.0, mode).score(batch)
    return Scored("gradnorm", r.self_products().clamp(min=0).sqrt(), r.train_losses, r.weighted_gradient,
                  lambda: lr * r.pairwise_within(),
                  "the backward pass that gave the gradient norms (Ghost factors)")


def _score_exact(model, loss_fn, batch, ref, lr, n, name) -> Scored:
    _reference_size(ref)
    r = influence.exact(model, loss_fn, batch, batch if ref is None else ref, lr)
    return Scored(name, r.scores, r.train_losses, _subset_gradient(model, loss_fn, batch),
                  lambda: influence.exact(model, loss_fn, batch, batch, lr, pairwise=True).pairwise,
                  "nothing: the update is a second forward and backward on the kept samples")


def score_batch(model: nn.Module, loss_fn: LossFn, batch: Batch, ref: Batch | None, signal: str, lr: float,
                mode: str = "auto", session: influence.Session | None = None) -> Scored:
    """Score ``batch`` ([n] samples) against ``ref`` (None: the batch itself) with ``signal``; see module doc.

    ``session``: a persistent ``influence.Session`` of ``signal`` (``lai``, ``lai-last`` or ``ghost``) whose
    reference statistics the caller keeps (``Curator`` with ``refresh_every``); ``ref`` is then not read.

    ``model`` must be the plain module (unwrap DDP first). Raises ``influence.UnsupportedLayerError`` (and the
    other ``influence`` errors) when the estimator cannot score the model, ``EmptyReferenceError`` for an empty
    reference batch.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose from {SIGNALS}")
    n = check_batch(batch, "train")
    if signal in SESSION_SIGNALS:
        if session is None:
            _reference_size(ref)
            session = session_for(model, loss_fn, ref, signal, lr, mode)
        return _score_session(session, batch, signal)
    if signal == "gradnorm":
        return _score_gradnorm(model, loss_fn, batch, n, lr, mode)
    if signal in ("exact", "tracin"):
        return _score_exact(model, loss_fn, batch, ref, lr, n, signal)
    _, losses = _graph_forward(model, loss_fn, batch, n)
    values = losses.detach() if signal == "loss" else None
    return Scored(signal, values, losses.detach(), _graph_gradient(model, losses), None,
                  "the forward pass: the update backpropagates its graph")


def global_pairwise(model: nn.Module, loss_fn: LossFn, batch: Batch, signal: str, lr: float) -> Tensor:
    """[n, n] lr * <grad l_i, grad l_j> over ``batch`` from the public estimator of ``signal`` (train = ref =
    batch, ``pairwise=True``); used when the batch was scored in shards (DDP)."""
    if signal in ("lai", "lai-last"):
        r = influence.lai(model, loss_fn, batch, batch, lr, layers="all" if signal == "lai" else "last",
                          pairwise=True)
    elif signal in ("ghost", "gradnorm"):
        r = influence.ghost(model, loss_fn, batch, batch, lr, pairwise=True)
    elif signal in ("exact", "tracin"):
        r = influence.exact(model, loss_fn, batch, batch, lr, pairwise=True)
    else:
        raise ValueError(f"signal {signal!r} has no pairwise form; GREATS needs an influence estimator")
    return r.pairwise
