"""Where the reference batch comes from at each step.

* ``fixed``: ``size`` samples drawn once from a held-out set (all of it when ``size`` is None);
* ``resample``: a fresh random ``size`` samples of the held-out set at every step;
* ``batch``: no held-out set: each batch is scored against itself (``sample()`` returns None, which the
  curation step reads as "the incoming batch"; under DDP that is the global batch).

``stream()`` is the policy as ``influence.Session`` takes a reference: a re-iterable holding one batch, drawn by
``sample()`` each time the session (re)builds its statistics, so a ``resample`` reference changes at every refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from influence.batch import Batch, check_batch, take
from influence.errors import EmptyBatchError, InfluenceError, InvalidArgumentError

from .errors import EmptyReferenceError

KINDS = ("fixed", "resample", "batch")


class ReferencePolicy:
    """Reference batches for curated training. ``sample()`` -> a batch, or None for the incoming batch."""

    def __init__(self, kind: str = "fixed", data: Batch | None = None, size: int | None = None,
                 seed: int = 0) -> None:
        if kind not in KINDS:
            raise InvalidArgumentError(f"reference kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.data, self.size = kind, data, size
        self.generator = torch.Generator().manual_seed(seed)
        self._fixed: Batch | None = None
        if kind == "batch":
            return
        if data is None:
            raise InvalidArgumentError(f"reference kind {kind!r} needs a held-out data set (data=(x, y)); "
                             "use kind='batch' when there is none")
        try:
            self.n = check_batch(data, "reference data")
        except EmptyBatchError:
            self.n = 0
        if self.n == 0:
            raise EmptyReferenceError("the reference data set is empty")
        if size is not None and not 0 < size <= self.n:
            raise InvalidArgumentError(f"reference size must be in 1..{self.n}, got {size}")
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

    def stream(self) -> "ReferenceStream":
        """This policy as a re-iterable reference for ``influence.Session`` (one ``sample()`` per iteration)."""
        if self.kind == "batch":
            raise InvalidArgumentError("a 'batch' reference is the incoming batch itself; score with ref=None instead")
        return ReferenceStream(self)


class ReferenceStream:
    """A re-iterable of one reference batch, drawn from ``policy.sample()`` at every iteration: what a kept
    ``influence.Session`` iterates when it builds or refreshes its reference statistics."""

    def __init__(self, policy: ReferencePolicy) -> None:
        self.policy = policy

    def __iter__(self) -> Iterator[Batch]:
        yield self.policy.sample()


class _Mapped:
    """A re-iterable of ``fn(batch)`` over a re-iterable of batches (a ``DataLoader`` of dict batches)."""

    def __init__(self, batches: Iterable[Any], fn: Callable[[Any], Batch]) -> None:
        self.batches, self.fn = batches, fn

    def __iter__(self) -> Iterator[Batch]:
        return (self.fn(b) for b in self.batches)


def map_reference(ref: Any, one: Callable[[Any], Batch]) -> Any:
    """``ref`` as ``influence.Session`` takes a reference, every batch converted by ``one`` (e.g. a dict batch split
    into (inputs, targets)): one batch (a dict, or a pair whose second element is a tensor) -> one batch; a list or
    tuple of batches -> a list; any other re-iterable (a ``DataLoader``) -> a lazy re-iterable. ``InfluenceError``
    for anything else."""
    if isinstance(ref, dict) or (isinstance(ref, (tuple, list)) and len(ref) == 2 and isinstance(ref[1], Tensor)):
        return one(ref)
    if isinstance(ref, (tuple, list)):
        return [one(b) for b in ref]
    if isinstance(ref, Iterable) and not isinstance(ref, (Tensor, str)):
        return _Mapped(ref, one)
    raise InfluenceError(f"reference must be a batch (a dict, or (inputs, targets)), a list of batches, a DataLoader, "
                         f"or a callable returning one; got {type(ref).__name__}")
