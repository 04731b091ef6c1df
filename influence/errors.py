"""Errors raised on input the estimators cannot score correctly. Each message names the module and the cause."""

import contextlib
from collections.abc import Iterator


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


class UndefinedGradientError(UnsupportedLayerError):
    """A layer's per-sample gradients are undefined, or scoring it would change the model (refused whatever the
    ``fallback``): e.g. ``nn.Embedding`` with ``max_norm`` or ``scale_grad_by_freq``."""


class VerificationError(UnsupportedLayerError):
    """With ``fallback='error'``: the factored per-sample gradients of some parameters do not match autograd
    (a weight used outside its module, a layer whose leading dimension is not the batch, ...)."""


class StochasticModuleError(InfluenceError):
    """A stochastic module (Dropout and the like) is in train mode: every call would give different scores."""


class RoutedToExactWarning(UserWarning):
    """Some parameters could not be factored and were scored by Exact (Ghost) or skipped (LAI)."""


class EmptyBatchError(BatchSizeError):
    """A training or reference batch holds no sample."""


class InvalidArgumentError(InfluenceError):
    """An argument has a value no estimator can use (``lr`` not a finite real number, ``chunk_size`` <= 0, ...)."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has a type the function cannot use (also a ``TypeError``, what was raised before)."""


class MissingOptimizerStateError(InfluenceError):
    """The optimizer has not taken a step yet, so its second moment (and the preconditioner) does not exist."""


class NonFiniteInputError(InfluenceError):
    """An input or target holds NaN or infinite values (scores would be NaN, or silently dominated by them)."""


class NoTrainableParameterError(InfluenceError):
    """No parameter has ``requires_grad=True`` (or none of those selected): there is nothing to score."""


class UnknownParameterError(InfluenceError):
    """``exact(params=...)`` names a parameter the model does not have, or one that is frozen."""


class ModelOutputError(InfluenceError):
    """The tensor the loss takes cannot be found in the model output, or the output is ambiguous (a tuple of
    several tensors): name it with ``influence.select_output(model, which)``."""


class TargetShapeError(InfluenceError):
    """Outputs and targets of a loss do not have matching shapes (a broadcast would pair every sample with every
    target)."""


class CheckpointingError(InfluenceError):
    """The model uses reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``),
    which autograd refuses to differentiate with ``torch.autograd.grad`` (``use_reentrant=False`` is supported)."""


REENTRANT = "use_reentrant=True"  # in torch's message when a reentrant checkpoint meets autograd.grad


@contextlib.contextmanager
def named_checkpointing_errors(who: str) -> Iterator[None]:
    """Around ``torch.autograd.grad`` calls: torch's refusal of a reentrant checkpoint becomes the named
    ``CheckpointingError`` (``who`` says which computation); every other error passes unchanged."""
    try:
        yield
    except RuntimeError as e:
        if REENTRANT in str(e) and "checkpoint" in str(e):
            raise CheckpointingError(
                f"{who}: the model uses torch.utils.checkpoint with use_reentrant=True, which autograd cannot "
                "differentiate with torch.autograd.grad. Scores do not depend on checkpointing: turn it off while "
                "scoring (model.gradient_checkpointing_disable() for transformers models) or pass "
                "use_reentrant=False.") from e
        raise


class BatchCouplingError(InfluenceError):
    """One sample's output (or loss) depends on the other samples of the batch (batch-mean subtraction, in-batch
    negatives, attention across samples, ...): per-sample gradients, hence per-sample influence, are undefined.
    The message names the module where the coupling first appears (``influence.coupling``)."""


class TheoryScopeError(InfluenceError, NotImplementedError):
    """``theory`` (decomposition, bounds) does not cover this model: a layer it cannot split per sample, a
    parameter the capture's verification does not vouch for, weights shared between layers, a layer called
    several times. (Also a ``NotImplementedError``, what ``theory`` raised before.)"""


class MemoryBudgetError(InfluenceError):
    """A tensor the estimator needs does not fit ``memory_budget`` and cannot be split into chunks that do; raised
    before it is allocated."""


class UnknownEstimatorError(InvalidArgumentError, KeyError):
    """An estimator name that is not registered (``influence.estimators``)."""

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointMismatchError(InvalidArgumentError, KeyError):
    """A checkpoint (a state dict to evaluate at) lacks entries the model has."""

    def __str__(self) -> str:
        return str(self.args[0])


class NotPairwiseError(InfluenceError):
    """A per-sample ranking (loss, EL2N, gradient norm) was asked for pairwise train-reference products."""


class CurationError(InvalidArgumentError):
    """Curated training cannot go on with this input without doing something silently different."""


class EmptySelectionError(CurationError):
    """The selection policy kept no sample and no fallback was asked for (``on_empty='error'``)."""


class EmptyReferenceError(CurationError):
    """The reference batch holds no sample, so there is nothing to score against."""


class LossNotDerivableError(InfluenceError):
    """No ``loss_fn`` was given and the model's own per-sample loss cannot be derived from its class."""


class OptimizerWarning(UserWarning):
    """The optimizer's update is preconditioned, but the estimator scores the plain SGD formula."""


class VmapFallbackWarning(UserWarning):
    """``torch.func.vmap`` could not run the model; Exact used a per-sample autograd loop (same numbers)."""

