"""The reference-refresh cadence of curated training: one kept ``influence.Session`` per estimator, refreshed by the
session itself every k calls of ``score`` (``Session(refresh_every=k)``).

    kept = KeptSession(refresh_every=4)
    for batch in batches:
        scores = kept.get(model, loss_fn, ref, "lai", lr).score(batch).scores

The session is built at the first ``get`` (its statistics: fresh at that step) and its counter refreshes them at
the k-th, 2k-th, ... later scored batch, so scored batch t (0-based, from the build) uses statistics t mod k steps
old. ``ref`` may be a ``ReferencePolicy.stream()``: the session then draws a new reference batch at every build and
refresh. A change of the model, the estimator, the lr or the session options builds a new session (fresh
statistics, counter restarted), as a learning-rate schedule does at every step.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import influence
from influence.batch import LossFn
from influence.errors import InvalidArgumentError


def check_refresh_every(refresh_every: int | None) -> int | None:
    """``refresh_every`` as given: a positive int, or None; ValueError otherwise (booleans included)."""
    if refresh_every is not None and (isinstance(refresh_every, bool) or not isinstance(refresh_every, int)
                                      or refresh_every <= 0):
        raise InvalidArgumentError(f"refresh_every must be a positive integer or None, got {refresh_every!r}")
    return refresh_every


class KeptSession:
    """One ``influence.Session`` kept across training steps, refreshing its reference statistics every
    ``refresh_every`` calls of its ``score`` (None: never by itself)."""

    def __init__(self, refresh_every: int | None = 1) -> None:
        self.refresh_every = check_refresh_every(refresh_every)
        self.session: influence.Session | None = None
        self._key: tuple | None = None

    def get(self, model: nn.Module, loss_fn: LossFn, ref: Any, estimator: str, lr: float,
            **options: Any) -> influence.Session:
        """The kept session of (``model``, ``estimator``, ``lr``, ``options``), built from ``ref`` when there is none
        or any of them changed (``ref`` is read only then); ``options``: further ``influence.Session`` keywords."""
        key = (id(model), estimator, lr, tuple(sorted(options.items())))
        if self.session is None or key != self._key:
            self.session = influence.Session(model, loss_fn, ref, estimator=estimator, lr=lr,
                                             refresh_every=self.refresh_every, **options)
            self._key = key
        return self.session
