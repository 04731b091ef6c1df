"""The one home of caches keyed by model: each is a :class:`ModelCache` (a dict per model, held weakly, so a
model's entries go when the model does), registered in :data:`CACHES`; :func:`clear_caches` forgets what all of
them hold, of one model or of all.

A cache holds what depends on a model's structure or its inputs' signature and is costly to rebuild: the plans
(``influence.capture.planning``), the signatures whose batch independence was checked (``influence.coupling``).
Its owner decides when an entry is stale (a plan keeps the key it was built under); clearing is always safe.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from torch import nn

CACHES: list["ModelCache"] = []  # every ModelCache made, in order of creation


class ModelCache:
    """Per-model values held weakly by the model (``weakref.WeakKeyDictionary``). ``name`` says what it holds;
    ``make`` builds a model's value on first use (:meth:`entry`)."""

    def __init__(self, name: str, make: Callable[[], Any] = dict) -> None:
        self.name, self.make = name, make
        self._data: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()
        CACHES.append(self)

    def entry(self, model: nn.Module) -> Any:
        """The model's value, made with ``make`` (and kept) when it has none."""
        got = self._data.get(model)
        if got is None:
            got = self._data[model] = self.make()
        return got

    def get(self, model: nn.Module, default: Any = None) -> Any:
        """The model's value, or ``default`` (nothing is made or kept)."""
        return self._data.get(model, default)

    def clear(self, model: nn.Module | None = None) -> None:
        """Forget the value of ``model``, or of every model."""
        if model is None:
            self._data.clear()
        else:
            self._data.pop(model, None)

    def __contains__(self, model: object) -> bool:
        return model in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ModelCache({self.name!r}, {len(self)} models)"


def clear_caches(model: nn.Module | None = None) -> None:
    """Forget what every model-keyed cache holds for ``model`` (or for every model)."""
    for cache in CACHES:
        cache.clear(model)


__all__ = ["CACHES", "ModelCache", "clear_caches"]
