"""Error theory of layer-aware influence (LAI) against Ghost (= Exact) influence.

    theory.decomposition(model, loss_fn, train, ref, lr)   # {layer: [n_train]}, sums to Ghost - LAI exactly
    theory.data_bound(model, loss_fn, train, ref, lr)      # [n_train] >= |Ghost - LAI| (per-sample Jacobians)
    theory.apriori_bound(model, loss_fn, train, ref, lr)   # [n_train] >= data_bound (no backward pass)
    theory.kendall_lower_bound(ghost_scores, bounds)       # guaranteed Kendall tau(LAI, Ghost)
    theory.guaranteed_filter_accuracy(ghost_scores, bounds)

Batches and ``loss_fn`` as in ``influence``. ``python -m theory.symbolic`` runs the sympy check and prints the
statements as LaTeX; ``lai tightness`` (validation/suites/tightness.py) measures how tight the bounds are on trained
models. This package imports nothing from ``validation``.
"""

from .analysis import Analysis, analyse
from .bounds import (
    apriori_bound,
    apriori_bound_pairwise,
    cross_entropy_gradient_norm_bound,
    data_bound,
    data_bound_pairwise,
)
from .decomposition import decomposition, decomposition_pairwise
from .jacobians import jacobians
from .lipschitz import jacobian_norm_bounds
from .ranking import filter_agreement, guaranteed_concordant, guaranteed_filter_accuracy, kendall_lower_bound

__all__ = [
    "decomposition", "decomposition_pairwise", "data_bound", "data_bound_pairwise", "apriori_bound",
    "apriori_bound_pairwise", "kendall_lower_bound", "guaranteed_filter_accuracy", "guaranteed_concordant",
    "filter_agreement", "analyse", "Analysis", "jacobians", "jacobian_norm_bounds",
    "cross_entropy_gradient_norm_bound",
]
