"""The per-sample loss a ``transformers`` model computes itself, for curated training without a ``loss_fn``.

``model_loss_fn(model) -> loss_fn(outputs, targets) -> [n]`` (one loss per sample, in the model's dtype). Needs
``transformers`` only when called.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from influence.batch import LossFn
from influence.losses import cross_entropy, mse

from .errors import LossNotDerivableError


def _auto_classes(kind: str) -> set[str]:
    """Class names of ``transformers``' auto mapping ``MODEL_FOR_<kind>_MAPPING_NAMES`` (empty if absent)."""
    from transformers.models.auto import modeling_auto
    names: set[str] = set()
    for value in getattr(modeling_auto, f"MODEL_FOR_{kind}_MAPPING_NAMES", {}).values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _classification_loss(config: Any) -> LossFn:
    """``transformers``' classification loss per sample: regression (one label) -> squared error, integer labels ->
    cross-entropy, float labels (multi-label) -> binary cross-entropy averaged over the labels."""
    problem = getattr(config, "problem_type", None)

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        kind = problem or ("regression" if getattr(config, "num_labels", 2) == 1 else
                           "single_label_classification" if not labels.is_floating_point() else
                           "multi_label_classification")
        if kind == "regression":
            return mse(logits, labels.to(logits.dtype))
        if kind == "single_label_classification":
            return cross_entropy(logits, labels)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        return bce.reshape(len(bce), -1).mean(1)
    loss_fn.__name__ = "classification_loss"
    return loss_fn


def model_loss_fn(model: nn.Module) -> LossFn:
    """The per-sample form of the loss a ``transformers`` model computes itself: next-token cross-entropy for a
    causal LM (mean over each sample's counted tokens), the classification loss of a sequence or image classifier
    (by ``config.problem_type``, as ``transformers`` decides it), per-token cross-entropy averaged per sample for a
    token classifier. Raises :class:`LossNotDerivableError` for any other model."""
    from influence.hf import causal_lm_loss
    inner = getattr(model, "module", model)
    name = type(inner).__name__
    if name in _auto_classes("CAUSAL_LM") or name.endswith("ForCausalLM"):
        return causal_lm_loss()
    if name in _auto_classes("SEQUENCE_CLASSIFICATION") | _auto_classes("IMAGE_CLASSIFICATION") or \
            name.endswith(("ForSequenceClassification", "ForImageClassification")):
        return _classification_loss(getattr(inner, "config", None))
    if name in _auto_classes("TOKEN_CLASSIFICATION") or name.endswith("ForTokenClassification"):
        return cross_entropy
    raise LossNotDerivableError(
        f"no loss_fn given and the per-sample loss of a {name} cannot be derived (derived for causal LMs and "
        "sequence, token and image classifiers): pass loss_fn=f(outputs, targets) -> per-sample losses [n]")
