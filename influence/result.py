"""The result every estimator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn


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
