"""Where the reference batch comes from at each step.

* ``fixed``: ``size`` samples drawn once from a held-out set (all of it when ``size`` is None);
* ``resample``: a fresh random ``size`` samples of the held-out set at every step;
* ``batch``: no held-out set: each batch is scored against itself (``sample()`` returns None, which the
  curation step reads as "the incoming batch"; under DDP that is the global batch).
"""

from __future__ import annotations

import torch

from influence.batch import Batch, check_batch, take
from influence.errors import EmptyBatchError

from .errors import EmptyReferenceError

KINDS = ("fixed", "resample", "batch")


class ReferencePolicy:
    """Reference batches for curated training. ``sample()`` -> a batch, or None for the incoming batch."""

    def __init__(self, kind: str = "fixed", data: Batch | None = None, size: int | None = None,
                 seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"reference kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.data, self.size = kind, data, size
        self.generator = torch.Generator().manual_seed(seed)
        self._fixed: Batch | None = None
        if kind == "batch":
            return
        if data is None:
            raise ValueError(f"reference kind {kind!r} needs a held-out data set (data=(x, y)); "
                             "use kind='batch' when there is none")
        try:
            self.n = check_batch(data, "reference data")
        except EmptyBatchError:
            self.n = 0
        if self.n == 0:
            raise EmptyReferenceError("the reference data set is empty")
        if size is not None and not 0 < size <= self.n:
            raise ValueError(f"reference size must be in 1..{self.n}, got {size}")
        if kind == "fixed":
            self._fixed = data if size is None else self._draw()

    def _draw(self) -> Batch:
        idx = torch.randperm(self.n, generator=self.generator)[:self.size].sort().values
        return take(self.data, idx)

    def sample(self) -> Batch | None:
        """The reference batch for the next step."""
        if self.kind == "batch":
            return None
        if self.kind == "fixed":
            return self._fixed
        return self.data if self.size is None else self._draw()
