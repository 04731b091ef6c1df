"""Decomposition and both bounds from one pass of Jacobians (for reports and tests).

``analyse`` computes the train and reference sides once and returns every pair table, so the measured error,
the data-dependent and the a-priori bound of the same step can be compared without recomputing Jacobians.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from influence.batch import Batch, LossFn

from .bounds import apriori_pairs, data_pair_bound
from .decomposition import pair_error, pairwise_terms, sides


@dataclass
class Analysis:
    """Pair tables {layer: [n_train, n_ref]} (already scaled by lr, bounds by |lr|).

    ``apriori_pairwise`` is None when the a-priori bound does not apply (``apriori_reason`` says why)."""

    error_pairwise: dict[str, Tensor]
    data_pairwise: dict[str, Tensor]
    apriori_pairwise: dict[str, Tensor] | None
    apriori_reason: str | None

    @staticmethod
    def _per_sample(pairs: dict[str, Tensor]) -> Tensor:
        return sum(v.mean(1) for v in pairs.values())

    def decomposition(self) -> dict[str, Tensor]:
        """{layer: [n_train]} Ghost - LAI per layer."""
        return {k: v.mean(1) for k, v in self.error_pairwise.items()}

    def error(self) -> Tensor:
        """Ghost_i - LAI_i, [n_train]."""
        return self._per_sample(self.error_pairwise)

    def data_bound(self) -> Tensor:
        return self._per_sample(self.data_pairwise)

    def apriori_bound(self) -> Tensor | None:
        return None if self.apriori_pairwise is None else self._per_sample(self.apriori_pairwise)


def analyse(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
            token_pairing: str = "all_pairs", chunk_size: int | None = None, apriori: bool = True,
            worst_case_output_gradient: bool = False) -> Analysis:
    """Decomposition, data-dependent and (where it applies) a-priori bound of one step, sharing the Jacobians."""
    s_tr, s_rf = sides(model, loss_fn, train, ref, token_pairing, chunk_size)
    err = {k: lr * v for k, v in pairwise_terms(s_tr, s_rf, pair_error, chunk_size).items()}
    data = {k: abs(lr) * v for k, v in pairwise_terms(s_tr, s_rf, data_pair_bound, chunk_size).items()}
    prior, reason = None, None
    if apriori:
        try:
            prior = apriori_pairs(model, loss_fn, s_tr, s_rf, train, ref, lr, worst_case_output_gradient)
        except NotImplementedError as e:
            reason = str(e)
    else:
        reason = "not requested"
    return Analysis(err, data, prior, reason)


__all__ = ["Analysis", "analyse"]
