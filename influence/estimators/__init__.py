"""The estimators, one module each, and the registry every consumer reads (``influence.estimators.registry``).

Adding an estimator is one module here that defines its backend and its :class:`Estimator` entries (``ENTRIES``),
plus its line in ``BUILTIN`` below; or, from outside the package, one call of :func:`register_estimator`. It then
appears in ``Session(estimator=...)``, ``influence.estimate``, ``lai run --estimators``, ``lai curate --methods``,
``lai bench``, the report and the figures.
"""

from __future__ import annotations

import importlib

from .factored import graph_gradient
from .protocol import Backend, BaseBackend, Settings
from .registry import (
    Capabilities,
    Estimator,
    UnknownEstimatorError,
    estimator_names,
    estimators,
    get_estimator,
    register_estimator,
    unregister_estimator,
)

BUILTIN = (
    "exact",   # per-sample gradients (torch.func)
    "ghost",   # Gram products of layer inputs and output gradients
    "lai",     # layer-aware influence and its variants (forward only)
    "tracin",  # sums over checkpoints
    "top_layers",  # exact terms of the top k layers (truncated backward), with or without LAI below
    "baselines",  # loss, EL2N, gradient norm: per-sample rankings that ignore the reference
)

for _module in BUILTIN:
    for _entry in importlib.import_module(f"{__name__}.{_module}").ENTRIES:
        register_estimator(_entry)

__all__ = ["Backend", "BaseBackend", "Capabilities", "Estimator", "Settings", "UnknownEstimatorError", "estimator_names",
           "estimators", "get_estimator", "register_estimator", "unregister_estimator", "graph_gradient"]
