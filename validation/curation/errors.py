"""Errors of curated training. All subclass ``CurationError`` (a ``ValueError``)."""


class CurationError(ValueError):
    """Curated training cannot go on with this input without doing something silently different."""


class EmptySelectionError(CurationError):
    """The selection policy kept no sample and no fallback was asked for (``on_empty='error'``)."""


class EmptyReferenceError(CurationError):
    """The reference batch holds no sample, so there is nothing to score against."""
