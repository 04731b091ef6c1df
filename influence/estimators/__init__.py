"""The estimators, one module each, and the registry every consumer reads (``influence.estimators.registry``).

Adding an estimator is one module here that defines its backend and its :class:`Estimator` entries, plus its line
in ``BUILTIN`` below; or, from outside the package, one call of :func:`register_estimator`.
"""

from __future__ import annotations

from .registry import (Capabilities, Estimator, UnknownEstimatorError, estimator_names, estimators, get_estimator,
                       register_estimator, unregister_estimator)
from . import builtin  # noqa: F401  (registers the built-in entries)

__all__ = ["Capabilities", "Estimator", "UnknownEstimatorError", "estimator_names", "estimators", "get_estimator",
           "register_estimator", "unregister_estimator"]
