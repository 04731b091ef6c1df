"""The one-call estimators: a session over one reference batch scoring one training batch.

    r = influence.ghost(model, loss_fn, train=(x, y), ref=(xv, yv), lr=0.1)
    r = influence.estimate("lai-last", model, loss_fn, train, ref, lr=0.1)    # any registered estimator by name
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from torch import Tensor, nn

from .batch import Batch, LossFn
from .checks import check_batch, size_hint
from .errors import InvalidArgumentError
from .estimators.tracin import Checkpoint
from .gradients import DEFAULT_CHUNK
from .result import InfluenceResult
from .scoring import DEFAULT_BUDGET
from .session import Session


def estimate(estimator: str, model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float | None = None, *,
             checkpoints: Iterable[Checkpoint] | None = None, **options: Any) -> InfluenceResult:
    """Scores of ``train`` against ``ref`` with the registered ``estimator`` (``influence.estimators``):
    ``Session(model, loss_fn, ref, estimator=estimator, lr=lr, **options).score(train)``. An estimator that scores
    over checkpoints takes ``checkpoints=[(state or path, lr), ...]``; without them, the current weights at ``lr``."""
    from .estimators import get_estimator
    if get_estimator(estimator).caps.checkpoints:
        options["checkpoints"] = checkpoints if checkpoints is not None else [(model.state_dict(), lr)]
        lr = None
    return Session(model, loss_fn, ref, estimator=estimator, lr=lr, n_train=size_hint(train), **options).score(train)


def exact(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          params: Iterable[str] | None = None, state: dict[str, Tensor] | None = None,
          chunk_size: int = DEFAULT_CHUNK, preconditioner: Mapping[str, Tensor] | None = None,
          memory_budget: int | None = None) -> InfluenceResult:
    """Exact first-order influence lr * <grad l_i, grad L_ref> from per-sample gradients.

    ``params``: restrict to these parameter names (default: all with requires_grad). ``state``: evaluate at
    these parameter/buffer values (a state dict) instead of the model's own. Training samples are processed
    in chunks of ``chunk_size`` (memory ~ chunk_size x number of parameters), fewer where that exceeds
    ``memory_budget`` (bytes, default half the free memory; one sample's gradient over it raises
    ``MemoryBudgetError`` before anything is allocated). ``per_layer`` is keyed by the
    owning module's name.
    ``preconditioner``: {parameter name: P} (same shapes as the parameters), scoring lr * <P (.) grad l_i,
    grad L_ref> instead, the first-order effect of a diagonally preconditioned update such as Adam's (see
    :func:`influence.optim.adam_preconditioner`); parameters without an entry keep P = 1.
    """
    check_batch(train, "train")
    return Session(model, loss_fn, ref, estimator="exact", lr=lr, pairwise=pairwise, params=params, state=state,
                   chunk_size=chunk_size, preconditioner=preconditioner, memory_budget=memory_budget).score(train)


def ghost(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          mode: str = "auto", fallback: str | None = "auto", chunk_size: int | None = None,
          memory_budget: int | None = DEFAULT_BUDGET, preconditioner: Mapping[str, Tensor] | None = None,
          verify: str = "paths") -> InfluenceResult:
    """Ghost influence: lr * sum_l <a_i (x) b_i, mean_v a_v (x) b_v>, equal to Exact on what the registry covers.

    One forward/backward over the reference batch, then over the training batch in chunks of ``chunk_size``
    samples (default: all at once). Per block, ``mode`` picks the Gram form or the materialised form
    (see ``influence.scoring``). The capture verifies itself against autograd (``influence.verify``): the first
    capture of each input signature is sum-checked against autograd's weight gradients and probed per sample;
    after that, ``verify="paths"`` (default) checks every capture (reference and training) on autograd's graph,
    that every path from the loss to a factored parameter runs through one of its layer calls
    (``influence.paths``), and sum-checks numerically only the parameters it finds otherwise; ``"every"``
    sum-checks every capture numerically; ``"reference"`` only the reference captures, at the price of not
    seeing a weight used outside its module only for some training inputs (costs: ``python -m
    validation.bench.verify_cost``).
    Parameters that cannot be factored (no layer rule, used outside their module, a layer whose leading
    dimension is not the batch, ...) are scored by ``influence.exact``: ``fallback="auto"`` (default) warns once
    naming them, ``"exact"`` does the same silently, ``"error"`` raises the named error instead; they are listed
    in ``result.routed_to_exact``. When the training batch is captured in one chunk and nothing is routed,
    ``result.weighted_gradient(w)`` returns sum_i w_i grad l_i for every parameter from the recorded factors.
    ``preconditioner``: {parameter name: P}, scores lr * <P (.) grad l_i, grad L_ref> (Adam's update, see
    ``influence.optim``; the contracted form carries P exactly, so the Gram form is not used).
    """
    n_train = check_batch(train, "train")
    return Session(model, loss_fn, ref, estimator="ghost", lr=lr, pairwise=pairwise, mode=mode, fallback=fallback,
                   chunk_size=chunk_size, memory_budget=memory_budget, preconditioner=preconditioner,
                   n_train=n_train, verify=verify).score(train)


def lai(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, layers: str = "all",
        token_pairing: str = "all_pairs", pairwise: bool = False, mode: str = "auto", fallback: str | None = "auto",
        chunk_size: int | None = None, memory_budget: int | None = DEFAULT_BUDGET) -> InfluenceResult:
    """Layer-aware influence from one forward pass over train and reference samples.

    ``layers``: ``"all"`` (every layer with an LAI term and trainable parameters) or ``"last"`` (the layer
    whose output is the model output, exact; nothing else about the model matters). ``fallback`` has Ghost's
    meaning for parameters the layer registry does not cover or the verification (``influence.verify``) rejects:
    they are skipped with one warning (``"auto"``), silently (``"exact"``) or refused (``"error"``).
    ``result.skipped`` lists the trainable parameters that contribute nothing (for ``"last"``: only the output
    layer's). ``result.train_outputs`` holds the model output on the training batch when it was scored in one
    chunk. Under an adaptive optimizer LAI still scores the SGD formula (it has no per-parameter gradient to
    precondition): see ``influence.optim``.
    """
    n_train = size_hint(train)  # the session's score checks the batch
    return Session(model, loss_fn, ref, estimator=lai_entry(layers, token_pairing), lr=lr, pairwise=pairwise,
                   mode=mode, fallback=fallback, chunk_size=chunk_size, memory_budget=memory_budget,
                   n_train=n_train).score(train)


def lai_entry(layers: str, token_pairing: str) -> str:
    """The registered LAI entry with these options (``lai``, ``lai-last``, ``lai-aligned``, ``lai-last-aligned``)."""
    from .estimators.lai import PAIRINGS
    if layers not in ("all", "last"):
        raise InvalidArgumentError(f"layers must be 'all' or 'last', got {layers!r}")
    if token_pairing not in PAIRINGS:
        raise InvalidArgumentError(f"token_pairing must be one of {PAIRINGS}, got {token_pairing!r}")
    return "lai" + ("-last" if layers == "last" else "") + ("-aligned" if token_pairing == "aligned" else "")


def tracin(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, checkpoints: Iterable[Checkpoint], *,
           last_layer: bool = False, pairwise: bool = False, chunk_size: int = DEFAULT_CHUNK,
           memory_budget: int | None = None) -> InfluenceResult:
    """TracIn over ``checkpoints`` = [(state_dict or path, lr), ...]; ``last_layer=True`` restricts every
    checkpoint's gradients to the output layer (the cheap variant). ``lr`` of the result is the sum of lrs;
    ``train_losses`` are the losses at the last checkpoint. ``memory_budget``: as for ``influence.exact`` (the
    kept checkpoints and their reference gradients count too)."""
    check_batch(train, "train")
    return Session(model, loss_fn, ref, estimator="tracin-last" if last_layer else "tracin", checkpoints=checkpoints,
                   pairwise=pairwise, chunk_size=chunk_size, memory_budget=memory_budget).score(train)
