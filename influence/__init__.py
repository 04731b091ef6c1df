"""Online training-data influence estimators behind one API.

Convention for every estimator: per-sample loss l_i from ``loss_fn(outputs, targets) -> [n]`` (a token-level
LM loss is the mean over the sample's counted tokens), reference loss L_ref = mean over the reference batch,
score_i = lr * <grad l_i, grad L_ref>; positive means one SGD step on sample i lowers the reference loss.
Only parameters with ``requires_grad=True`` count.

    r = influence.ghost(model, loss_fn, train=(x, y), ref=(xv, yv), lr=0.1)
    r.scores, r.per_layer            # [n_train], {module name: [n_train]}

    s = influence.Session(model, loss_fn, ref_loader, estimator="lai", lr=0.1)   # reference side computed once
    s.score(batch); s.self_influence(batch); influence.score_dataset(s, train_set)
"""

from . import (
    estimators,
    hf,  # transformers is imported only inside its functions
)
from ._version import __version__
from .batch import select_output
from .caches import clear_caches
from .dataset import DatasetScores, score_dataset
from .errors import (
    BatchCouplingError,
    BatchSizeError,
    CheckpointingError,
    CheckpointMismatchError,
    EmptyBatchError,
    InfluenceError,
    InPlaceModificationError,
    InvalidArgumentError,
    LossShapeError,
    MemoryBudgetError,
    ModelOutputError,
    NonFiniteInputError,
    NonFiniteLossError,
    NotPairwiseError,
    NoTrainableParameterError,
    OptimizerWarning,
    RoutedToExactWarning,
    SharedParameterError,
    StochasticModuleError,
    TargetShapeError,
    TheoryScopeError,
    TrainModeBatchNormError,
    UndefinedGradientError,
    UnknownEstimatorError,
    UnknownParameterError,
    UnsupportedLayerError,
    VerificationError,
    VmapFallbackWarning,
)
from .estimators import Capabilities, Estimator, register_estimator
from .functions import estimate, exact, ghost, lai, tracin
from .layers import LayerRule, register_layer
from .losses import cross_entropy, mse
from .optim import adam_preconditioner
from .result import InfluenceResult
from .session import Session

__all__ = [
    "__version__", "hf", "Session", "estimate", "estimators", "Estimator", "Capabilities", "register_estimator",
    "score_dataset", "DatasetScores", "exact", "ghost", "lai", "tracin", "InfluenceResult", "cross_entropy", "mse",
    "adam_preconditioner", "clear_caches", "select_output", "LayerRule", "register_layer",
    "InfluenceError", "UnsupportedLayerError", "TrainModeBatchNormError", "SharedParameterError", "LossShapeError",
    "BatchSizeError", "NonFiniteLossError", "InPlaceModificationError", "StochasticModuleError",
    "UndefinedGradientError", "VerificationError", "EmptyBatchError", "InvalidArgumentError", "ModelOutputError",
    "NonFiniteInputError", "NoTrainableParameterError", "TargetShapeError", "UnknownParameterError",
    "CheckpointingError", "MemoryBudgetError", "BatchCouplingError", "TheoryScopeError", "CheckpointMismatchError",
    "NotPairwiseError", "UnknownEstimatorError",
    "RoutedToExactWarning", "OptimizerWarning", "VmapFallbackWarning",
]
