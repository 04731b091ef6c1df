"""Errors raised on input the estimators cannot score correctly. Each message names the module and the cause."""


class InfluenceError(ValueError):
    """Base class: the input cannot be scored without giving a wrong number."""


class UnsupportedLayerError(InfluenceError):
    """A trainable module has no exact factorisation in the fast path (Ghost/LAI)."""


class TrainModeBatchNormError(InfluenceError):
    """BatchNorm in train mode couples the samples of a batch: per-sample influence is undefined."""


class SharedParameterError(InfluenceError):
    """A parameter is shared between modules in a way the fast path cannot handle exactly."""


class LossShapeError(InfluenceError):
    """``loss_fn`` did not return one loss per sample (e.g. it reduced to a scalar)."""


class BatchSizeError(InfluenceError):
    """Inputs and targets (or the pieces of a batch) disagree on the number of samples."""


class NonFiniteLossError(InfluenceError):
    """A per-sample loss is NaN or infinite."""


class InPlaceModificationError(InfluenceError):
    """A captured layer input or output was modified in place before its gradient was read."""
