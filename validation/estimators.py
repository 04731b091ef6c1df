"""The influence estimators by name: the one table the suites, cost, bench, curation and the report share.

One spelling per estimator (lower case, words joined by ``-``, as on the command line):

=================  ==============================================================================
exact              ``influence.exact``: per-sample gradients dotted with the reference gradient
ghost              ``influence.ghost``: per-layer Gram products, equal to exact on supported layers
lai                ``influence.lai`` over every layer (tokens paired all against all)
lai-last           ``influence.lai`` on the output layer only (exact there)
lai-aligned        ``influence.lai``, token t paired with token t only (token sequences)
lai-last-aligned   the same on the output layer only
tracin             ``influence.tracin`` over the checkpoints given (default: the current weights at lr)
tracin-last        the same on the output layer's parameters only
=================  ==============================================================================

``ESTIMATORS[name](model, loss_fn, train, ref, lr, checkpoints=None, **kw)`` returns the
``InfluenceResult``; ``kw`` (e.g. ``chunk_size``) goes to the influence function. Names of other scores
in the results (``loss``, ``counterfactual``, ``counterfactual_small_lr``) and of the cost baselines
(``forward``, ``forward_backward``, ``train_step``) are not estimators and are defined where computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

import influence
from influence import InfluenceResult
from influence.batch import Batch, LossFn

Checkpoints = list[tuple[dict[str, Tensor], float]]


@dataclass(frozen=True)
class Estimator:
    """``fn`` (an ``influence`` function) with fixed ``options``; ``label`` for tables and figures;
    ``sequence_only``: meaningful only for token-sequence outputs; ``checkpoints``: takes TracIn checkpoints."""

    name: str
    label: str
    fn: Callable[..., InfluenceResult]
    options: dict[str, Any] = field(default_factory=dict)
    sequence_only: bool = False
    checkpoints: bool = False

    def session_options(self) -> dict[str, Any]:
        """Keyword arguments of ``influence.Session`` for this estimator (its registered name)."""
        return {"estimator": self.name}

    def __call__(self, model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
                 checkpoints: Checkpoints | None = None, **kw: Any) -> InfluenceResult:
        if self.checkpoints:
            ckpts = checkpoints if checkpoints is not None else [(model.state_dict(), lr)]
            return self.fn(model, loss_fn, train, ref, ckpts, **self.options, **kw)
        return self.fn(model, loss_fn, train, ref, lr, **self.options, **kw)


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("exact", "Exact", influence.exact),
    Estimator("ghost", "Ghost", influence.ghost),
    Estimator("lai", "LAI", influence.lai, {"layers": "all", "token_pairing": "all_pairs"}),
    Estimator("lai-last", "LAI (last layer)", influence.lai, {"layers": "last", "token_pairing": "all_pairs"}),
    Estimator("lai-aligned", "LAI (aligned tokens)", influence.lai, {"layers": "all", "token_pairing": "aligned"},
              sequence_only=True),
    Estimator("lai-last-aligned", "LAI last (aligned)", influence.lai,
              {"layers": "last", "token_pairing": "aligned"}, sequence_only=True),
    Estimator("tracin", "TracIn", influence.tracin, checkpoints=True),
    Estimator("tracin-last", "TracIn (last layer)", influence.tracin, {"last_layer": True}, checkpoints=True),
)}


class UnknownEstimatorError(KeyError):
    """A name that is not in ``ESTIMATORS``."""

    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> Estimator:
    """The estimator called ``name``; UnknownEstimatorError naming the choices (and the spelling) otherwise."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    hint = f" (spelled {name.replace('_', '-')!r})" if name.replace("_", "-") in ESTIMATORS else ""
    raise UnknownEstimatorError(f"unknown estimator {name!r}{hint}; choose from {', '.join(ESTIMATORS)}")


def names(sequence: bool = True) -> list[str]:
    """Every estimator name, in table order (``sequence=False`` leaves out the token-sequence-only ones)."""
    return [n for n, e in ESTIMATORS.items() if sequence or not e.sequence_only]


def score(name: str, model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
          checkpoints: Checkpoints | None = None, **kw: Any) -> InfluenceResult:
    """``get(name)(model, loss_fn, train, ref, lr, checkpoints, **kw)``."""
    return get(name)(model, loss_fn, train, ref, lr, checkpoints, **kw)


__all__ = ["Estimator", "ESTIMATORS", "UnknownEstimatorError", "get", "names", "score"]
