"""One-call estimators: a session over one reference batch scoring one training batch."""

from __future__ import annotations

from typing import Any

from .batch import Batch, LossFn
from .checks import size_hint
from .result import InfluenceResult


def estimate(estimator: str, model: Any, loss_fn: LossFn, train: Batch, ref: Batch, lr: float | None = None, *,
             checkpoints: Any = None, **options: Any) -> InfluenceResult:
    """Scores of ``train`` against ``ref`` with the registered ``estimator`` (``influence.estimators``):
    ``Session(model, loss_fn, ref, estimator=estimator, lr=lr, **options).score(train)``. An estimator that scores
    over checkpoints takes ``checkpoints=[(state or path, lr), ...]``; without them, the current weights at ``lr``."""
    from .estimators import get_estimator
    from .session import Session
    entry = get_estimator(estimator)
    if entry.caps.checkpoints:
        options["checkpoints"] = checkpoints if checkpoints is not None else [(model.state_dict(), lr)]
        lr = None
    return Session(model, loss_fn, ref, estimator=estimator, lr=lr, n_train=size_hint(train), **options).score(train)
