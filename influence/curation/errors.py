"""Errors of curated training: ``CurationError`` (a ``ValueError``) and its subclasses for what the step cannot
do with its input; ``LossNotDerivableError`` (an ``influence.InfluenceError``) when no per-sample loss is known."""

from influence.errors import InfluenceError


class CurationError(ValueError):
    """Curated training cannot go on with this input without doing something silently different."""


class EmptySelectionError(CurationError):
    """The selection policy kept no sample and no fallback was asked for (``on_empty='error'``)."""


class EmptyReferenceError(CurationError):
    """The reference batch holds no sample, so there is nothing to score against."""


class LossNotDerivableError(InfluenceError):
    """No ``loss_fn`` was given and the model's own per-sample loss cannot be derived from its class."""
