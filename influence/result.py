"""The result every estimator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from .errors import InvalidArgumentError
from .factors import add_all


class Ranking(NamedTuple):
    """The top samples of a ranking: ``indices`` [k] (batch positions, or data-set indices) and their ``scores`` [k],
    best first. Unpacks as ``indices, scores = result.proponents(k)``."""

    indices: Tensor
    scores: Tensor


def rank(indices: Tensor, scores: Tensor, k: int, largest: bool) -> Ranking:
    """The ``k`` largest (or smallest) of ``scores`` [N] with their ``indices`` [N], best first."""
    if not isinstance(k, int) or k < 0:
        raise InvalidArgumentError(f"k must be a non-negative integer, got {k!r}")
    top = scores.topk(min(k, len(scores)), largest=largest)
    return Ranking(indices[top.indices.to(indices.device)], top.values)


def column(pairwise: Tensor | None, reference: int | None, what: str) -> Tensor | None:
    """Column ``reference`` of the [N, n_ref] score matrix (None: no column asked for)."""
    if reference is None:
        return None
    if pairwise is None:
        raise InvalidArgumentError(f"scores against one reference sample need the per-reference matrix: {what}")
    return pairwise[:, reference]


@dataclass
class InfluenceResult:
    """Scores of training samples against a reference batch.

    ``scores`` [n_train]: lr * <grad l_i, grad L_ref> (positive = a step on sample i lowers the reference loss).
    ``per_layer``: module name -> [n_train], summing to ``scores``. With ``pairwise=True`` also ``pairwise``
    [n_train, n_ref] = lr * <grad l_i, grad l_v> (``scores`` is its row mean) and ``per_layer_pairwise``.
    ``train_losses`` [n_train] and ``train_outputs`` (the model output on the train batch, when the
    estimator computed it) let a training loop reuse the scoring pass. ``routed_to_exact`` (Ghost): parameter
    names the factorisation could not cover, scored by Exact instead; ``skipped`` (LAI): trainable parameters
    that contribute nothing to LAI's scores (no LAI term, e.g. norms, or routed away from the factorisation).
    From the factors of a training batch scored in one chunk (Ghost, LAI): ``weighted_gradient(w)`` = [(param,
    sum_i w_i grad l_i)] (Ghost: from the factors; LAI scored with ``keep_graph``: one backward of the scoring
    forward, usable once; its per-sample losses still on that graph are ``graph_losses``), ``pairwise_within()`` [n, n] = lr * <grad l_i, grad l_j> and ``self_products()`` [n] =
    lr * <grad l_i, grad l_i> (LAI: of its pseudo-gradients).
    """

    estimator: str
    lr: float
    scores: Tensor
    per_layer: dict[str, Tensor]
    pairwise: Tensor | None = None
    per_layer_pairwise: dict[str, Tensor] | None = None
    train_losses: Tensor | None = None
    train_outputs: Tensor | None = None
    weighted_gradient: Callable[[Tensor], list[tuple[nn.Parameter, Tensor]]] | None = field(default=None, repr=False)
    routed_to_exact: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    graph_losses: Tensor | None = field(default=None, repr=False)
    pairwise_within: Callable[[], Tensor] | None = field(default=None, repr=False)
    self_products: Callable[[], Tensor] | None = field(default=None, repr=False)

    def proponents(self, k: int, reference: int | None = None) -> Ranking:
        """The ``k`` training samples (batch positions) with the largest scores — those whose step lowers the
        reference loss most — and their scores, best first. ``reference=v``: against reference sample v alone
        (needs ``pairwise=True``)."""
        scores = column(self.pairwise, reference, "score with pairwise=True")
        scores = self.scores if scores is None else scores
        return rank(torch.arange(len(scores), device=scores.device), scores, k, largest=True)

    def opponents(self, k: int, reference: int | None = None) -> Ranking:
        """The ``k`` training samples with the smallest scores (those that raise the reference loss most), worst
        first, with their scores; ``reference`` as in :meth:`proponents`."""
        scores = column(self.pairwise, reference, "score with pairwise=True")
        scores = self.scores if scores is None else scores
        return rank(torch.arange(len(scores), device=scores.device), scores, k, largest=False)


def assemble(estimator: str, lr: float, named: dict[str, Tensor], losses: Tensor, pairwise: bool,
             n_ref: int) -> InfluenceResult:
    """An :class:`InfluenceResult` from per-layer products ``named`` (already scaled by lr): [n] each, or
    [n, n_ref] when ``pairwise`` (``scores`` is then the row mean)."""
    if not named:
        n = losses.shape[0]
        zero = losses.new_zeros((n, n_ref) if pairwise else (n,))
        return InfluenceResult(estimator, lr, zero.mean(1) if pairwise else zero, {}, zero if pairwise else None,
                               {} if pairwise else None, losses)
    if pairwise:
        total = _fresh_sum(named.values())
        return InfluenceResult(estimator, lr, total.mean(1), {k: v.mean(1) for k, v in named.items()}, total,
                               named, losses)
    return InfluenceResult(estimator, lr, _fresh_sum(named.values()), named, train_losses=losses)


def _fresh_sum(parts: Any) -> Tensor:
    """The sum of the tensors as a new tensor (never one of them: a caller may modify ``scores`` in place)."""
    parts = list(parts)
    return parts[0].clone() if len(parts) == 1 else add_all(parts)


@dataclass
class Chunk:
    """One training chunk scored by an estimator's backend: ``named`` per-layer products (scaled by lr), [n] or
    [n, n_ref]; ``losses`` [n]; ``outputs`` the model output when the backend computed it; ``blocks`` the factored
    per-sample gradients (Ghost) or pseudo-gradients (LAI, a mapping built on access); ``graph_losses`` [n] losses
    attached to the scoring forward's graph (LAI with ``keep_graph``); ``reroute`` instead of scores: parameters the
    chunk revealed as unfactorable ({param id: (kind, reason)}; the session routes them and scores again)."""

    named: dict[str, Tensor]
    losses: Tensor | None
    outputs: Tensor | None = None
    blocks: Any = None
    graph_losses: Tensor | None = None
    reroute: dict[int, tuple[str, str]] | None = None
