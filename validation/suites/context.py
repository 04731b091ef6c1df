"""One scored step: the model at that step (float64 copy), the scored and reference batches, and a memo of
every estimator's result, so the bound and fidelity suites computing the same estimator share one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

import influence
from influence import InfluenceResult
from influence.batch import Batch, LossFn
from validation.settings import estimators as chosen
from validation.suites.lai_variants import fit_layer_weights, weighted_lai

from .counterfactual import one_step_counterfactual

#: lr factor of ``counterfactual_small_lr``: the counterfactual of a step at lr * SMALL_LR_FACTOR, divided by the
#: factor (same scale as the scores). It tends to Exact as the factor -> 0, so comparing both targets separates
#: the estimators' error from the curvature of the actual step at the training lr.
SMALL_LR_FACTOR = 0.1


def fidelity_estimators(selected: Sequence[str] | None = None, sequence: bool = True,
                        fit: bool = True) -> list[str]:
    """The names the fidelity suite scores, in table order: Exact (the first target) and the ``selected``
    estimators (default: every registered one and the research variants, ``validation.settings.estimators.scored``;
    the token-sequence-only ones when ``sequence``; ``lai-fit`` when ``fit``), then the baselines ``loss``,
    ``counterfactual`` and ``counterfactual_small_lr``."""
    names = chosen.scored(sequence)
    if selected is not None:
        names = [n for n in names if n == "exact" or n in set(selected)]
    if not fit:
        names = [n for n in names if n != "lai-fit"]
    return names + list(chosen.BASELINES)


@dataclass
class StepContext:
    """model: float64 eval-mode copy at ``step``; train: the scored batch (float64 inputs); ids: its training-set
    indices [n]; is_noisy: bool [n]; checkpoints: [(state_dict, lr)] of the scored steps <= step (TracIn)."""

    model_name: str
    seed: int
    step: int
    model: nn.Module
    loss_fn: LossFn
    train: Batch
    ref: Batch
    lr: float
    ids: Tensor
    is_noisy: Tensor
    checkpoints: list[tuple[dict[str, Tensor], float]] = field(default_factory=list)
    fit_probe: Batch | None = None
    fit_ref_chunks: int = 8
    selected: Sequence[str] | None = None
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def is_sequence(self) -> bool:
        """Whether the model's output has a token dimension ([n, T, C])."""
        if "_seq" not in self._memo:
            with torch.no_grad():
                self._memo["_seq"] = self.model(self.ref[0][:1]).dim() == 3
        return self._memo["_seq"]

    def estimators(self) -> list[str]:
        """The estimators the fidelity suite scores at this step (``fidelity_estimators``)."""
        return fidelity_estimators(self.selected, self.is_sequence, self.fit_probe is not None)

    def result(self, name: str) -> InfluenceResult:
        """The influence result of the registered estimator ``name`` (``influence.estimate``; computed once per
        step; TracIn entries over the step's checkpoints)."""
        if name not in self._memo:
            self._memo[name] = influence.estimate(name, self.model, self.loss_fn, self.train, self.ref, self.lr,
                                                  checkpoints=self.checkpoints)
        return self._memo[name]

    def scores(self, name: str) -> Tensor:
        """Scores [n] of ``name``: an influence estimator, ``loss`` (= -loss_i, the loss-only baseline) or
        ``counterfactual`` (the actual one-step effect, see counterfactual.py) or ``counterfactual_small_lr``
        (the same for a step at lr * SMALL_LR_FACTOR, divided by the factor)."""
        if name == "loss":
            return -self.result("exact").train_losses
        if name == "lai-fit":
            return weighted_lai(self.result("lai"), self.fit_weights())
        if name in ("counterfactual", "counterfactual_small_lr"):
            if name not in self._memo:
                f = 1.0 if name == "counterfactual" else SMALL_LR_FACTOR
                cf = one_step_counterfactual(self.model, self.loss_fn, self.train, self.ref, self.lr * f)
                self._memo[name] = cf / f
            return self._memo[name]
        return self.result(name).scores

    def fit_weights(self) -> dict[str, float]:
        """{layer: w_l} of the ``lai-fit`` variant at this step (fitted once on ``fit_probe``)."""
        if self.fit_probe is None:
            raise ValueError("lai-fit needs a fit_probe batch")
        if "_fit_weights" not in self._memo:
            self._memo["_fit_weights"] = fit_layer_weights(self.model, self.loss_fn, self.fit_probe, self.ref,
                                                           self.lr, ref_chunks=self.fit_ref_chunks)
        return self._memo["_fit_weights"]

    def theory_value(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Memoised call of a theory function under ``key`` (shared between suites)."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]


__all__ = ["StepContext", "fidelity_estimators", "SMALL_LR_FACTOR"]
