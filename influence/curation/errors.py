"""Errors of curated training, defined with the package's others in ``influence.errors``: ``CurationError`` (an
``InvalidArgumentError``) and its subclasses for what the step cannot do with its input; ``LossNotDerivableError``
when no per-sample loss is known."""

from influence.errors import CurationError, EmptyReferenceError, EmptySelectionError, LossNotDerivableError

__all__ = ["CurationError", "EmptyReferenceError", "EmptySelectionError", "LossNotDerivableError"]
