"""What each method scores a batch with, and which part of that scoring pass its update reuses.

Every registered estimator (``influence.estimators``) is a signal, plus the baselines ``loss``, ``gradnorm``,
``random`` and ``none``. Every influence signal goes through the package's public scoring API (``influence.Session``,
``influence.estimate``): ``score_batch`` returns a :class:`Scored`: per-sample values (influence scores, losses or
gradient norms), the per-sample losses, and ``gradient(weights)`` = [(param, sum_i w_i grad l_i)] for the update.
Reuse:

* estimators that factor the gradient (no per-sample gradients, no checkpoints: ``lai``, ``lai-last``, ``ghost``,
  ...; :func:`keeps_session`) score through a session. Without a backward pass (LAI): ONE forward with autograd
  (``Session.score(batch, keep_graph=True)``), with hooks recording every layer's input; the update
  (``result.weighted_gradient``) is one backward of sum_i w_i l_i through that same graph (no second forward).
  With one (Ghost, and ``gradnorm``): one forward and one truncated backward, which never writes ``.grad``; the
  update is sum_i w_i a_i (x) b_i assembled from the recorded factors: no second backward.
* ``loss`` / ``random`` / ``none``: one forward with autograd; the update backpropagates that graph.
* the others (``exact``; ``tracin`` at the current weights, which is Exact): ``influence.estimate`` scores with
  per-sample gradients; nothing is reused, the update is a second forward and backward on the kept samples only.

Sessions run with ``fallback='error'``: curation refuses, with the named error, whatever the factorisation does not
cover (its updates reuse the factors). The reference side is one extra pass over the reference batch (forward only
for LAI, forward + truncated backward for Ghost), at every step, or every k steps when the caller keeps the session
(``influence.curation.cadence``); ``ref=None`` scores against the batch itself from the batch's own capture.
``pairwise()`` (greedy selection) is ``result.pairwise_within()``, from the same factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

import influence
from influence.batch import Batch, LossFn, call_model, check_batch, output_tensor, take
from influence.errors import EmptyBatchError, InvalidArgumentError
from influence.estimators import Estimator, estimator_names, get_estimator, graph_gradient
from influence.losses import per_sample_losses

from .errors import EmptyReferenceError

BASELINE_SIGNALS = ("loss", "gradnorm", "random", "none")

Gradient = list[tuple[nn.Parameter, Tensor]]


def estimator_entry(signal: str) -> Estimator | None:
    """The registry entry of an estimator signal, None for a baseline signal."""
    return None if signal in BASELINE_SIGNALS else get_estimator(signal)


def signals() -> tuple[str, ...]:
    """Every signal: the registered estimators (registration order), then the baselines."""
    return (*(n for n in estimator_names() if n not in BASELINE_SIGNALS), *BASELINE_SIGNALS)


def keeps_session(signal: str) -> bool:
    """Whether ``signal`` scores through a session whose reference statistics can be kept across steps and whose
    update reuses the scoring pass: registered estimators that neither materialise per-sample gradients nor score
    over checkpoints (LAI, Ghost)."""
    entry = estimator_entry(signal)
    return entry is not None and not entry.caps.per_sample_gradients and not entry.caps.checkpoints


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
    """The parameters with ``requires_grad``, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


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


def reference_size(ref: Batch | None) -> int | None:
    """Samples in ``ref`` (None for ``ref=None``); ``EmptyReferenceError`` for an empty reference batch."""
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


def session_for(model: nn.Module, loss_fn: LossFn, ref: Any, estimator: str, lr: float, mode: str,
                refresh_every: int | None = None) -> influence.Session:
    """The public scoring session; curation refuses what the factorisation does not cover (``fallback='error'``:
    its updates reuse the factors or the scoring forward). ``ref=None`` scores the batch against itself;
    ``refresh_every=k``: the session recomputes its reference statistics every k calls of ``score``."""
    return influence.Session(model, loss_fn, ref, estimator=estimator, lr=lr, mode=mode, fallback="error",
                             refresh_every=refresh_every)


_REUSED = {False: "the scoring forward pass (activations and logits): the update backpropagates its graph",
           True: "the scoring backward pass: the update is sum_i w_i a_i (x) b_i from its recorded factors"}


def _score_session(session: influence.Session, model: nn.Module, loss_fn: LossFn, batch: Batch,
                   signal: str) -> Scored:
    """A factoring estimator through ``session``: without a backward (LAI) one forward kept with its graph, with
    one (Ghost) the recorded factors; an estimator whose result offers neither is updated by a second pass."""
    backward = get_estimator(signal).caps.needs_backward
    r = session.score(batch, keep_graph=not backward)
    if r.weighted_gradient is None:
        return Scored(signal, r.scores, r.train_losses, _subset_gradient(model, loss_fn, batch),
                      r.pairwise_within or (lambda: session.pairwise_within(batch)),
                      "nothing: the update is a second forward and backward on the kept samples")
    return Scored(signal, r.scores, r.train_losses, r.weighted_gradient, r.pairwise_within, _REUSED[backward])


def _score_gradnorm(model, loss_fn, batch, n, lr, mode) -> Scored:
    r = session_for(model, loss_fn, None, "ghost", 1.0, mode).score(batch)
    return Scored("gradnorm", r.self_products().clamp(min=0).sqrt(), r.train_losses, r.weighted_gradient,
                  lambda: lr * r.pairwise_within(),
                  "the backward pass that gave the gradient norms (Ghost factors)")


def _score_estimate(model, loss_fn, batch, ref, lr, signal) -> Scored:
    """Estimators with per-sample gradients or checkpoints, one call each (``influence.estimate``; an estimator
    over checkpoints scores the current weights at ``lr``: online TracIn is Exact)."""
    reference_size(ref)
    r = influence.estimate(signal, model, loss_fn, batch, batch if ref is None else ref, lr)
    return Scored(signal, r.scores, r.train_losses, _subset_gradient(model, loss_fn, batch),
                  lambda: influence.estimate(signal, model, loss_fn, batch, batch, lr, pairwise=True).pairwise,
                  "nothing: the update is a second forward and backward on the kept samples")


def score_batch(model: nn.Module, loss_fn: LossFn, batch: Batch, ref: Batch | None, signal: str, lr: float,
                mode: str = "auto", session: influence.Session | None = None) -> Scored:
    """Score ``batch`` ([n] samples) against ``ref`` (None: the batch itself) with ``signal``; see module doc.

    ``session``: a persistent ``influence.Session`` of ``signal`` (one that :func:`keeps_session`) whose
    reference statistics the caller keeps (``Curator`` with ``refresh_every``); ``ref`` is then not read.

    ``model`` must be the plain module (unwrap DDP first). Raises ``influence.UnsupportedLayerError`` (and the
    other ``influence`` errors) when the estimator cannot score the model, ``EmptyReferenceError`` for an empty
    reference batch.
    """
    if signal not in signals():
        raise InvalidArgumentError(f"unknown signal {signal!r}; choose from {signals()}")
    n = check_batch(batch, "train")
    if keeps_session(signal):
        if session is None:
            reference_size(ref)
            session = session_for(model, loss_fn, ref, signal, lr, mode)
        return _score_session(session, model, loss_fn, batch, signal)
    if signal == "gradnorm":
        return _score_gradnorm(model, loss_fn, batch, n, lr, mode)
    if estimator_entry(signal) is not None:
        return _score_estimate(model, loss_fn, batch, ref, lr, signal)
    _, losses = _graph_forward(model, loss_fn, batch, n)
    values = losses.detach() if signal == "loss" else None
    return Scored(signal, values, losses.detach(), graph_gradient(model, losses), None,
                  "the forward pass: the update backpropagates its graph")


def global_pairwise(model: nn.Module, loss_fn: LossFn, batch: Batch, signal: str, lr: float) -> Tensor:
    """[n, n] lr * <grad l_i, grad l_j> over ``batch`` from the public estimator of ``signal`` (train = ref =
    batch, ``pairwise=True``; ``gradnorm``: Ghost's); used when the batch was scored in shards (DDP)."""
    name = "ghost" if signal == "gradnorm" else signal
    if estimator_entry(name) is None:
        raise InvalidArgumentError(f"signal {signal!r} has no pairwise form; GREATS needs an influence estimator")
    return influence.estimate(name, model, loss_fn, batch, batch, lr, pairwise=True).pairwise
