"""Batches as (inputs, targets) where inputs are a tensor, a tuple/list of tensors or a dict of tensors.

Every leaf carries the sample dimension first. Models are called as ``model(x)``, ``model(*x)`` or
``model(**x)`` accordingly. The tensor the loss sees (:func:`output_tensor`) is the output itself, its
``.logits`` attribute, or the only tensor of a tuple/list output; a tuple holding several tensors is
ambiguous and refused (``ModelOutputError``) unless the model says which one with :func:`select_output`.
Batch validation lives in ``influence.checks`` (``check_batch`` is re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

from .checks import batch_size, check_batch, tensor_pair  # noqa: F401  (batch_size, check_batch re-exported)
from .compat import marks, tree_flatten, tree_map, tree_unflatten
from .errors import ArgumentTypeError, InvalidArgumentError, ModelOutputError

Batch = tuple[Any, Any]
LossFn = Callable[[Tensor, Any], Tensor]
Selector = Union[int, str, Callable[[Any], Tensor]]
SELECTOR_ATTR = "_influence_output"


def take(tree: Any, index: slice | Tensor) -> Any:
    """Rows ``index`` of every tensor leaf."""
    return tree_map(lambda x: x[index] if isinstance(x, Tensor) else x, tree)


def concat(a: Any, b: Any) -> Any:
    """Concatenate two pytrees of the same structure along the sample dimension."""
    flat_a, spec = tree_flatten(a)
    flat_b, _ = tree_flatten(b)
    out = [torch.cat([x, y]) if isinstance(x, Tensor) else x for x, y in zip(flat_a, flat_b)]
    return tree_unflatten(out, spec)


def without_inference_tensors(tree: Any) -> Any:
    """``tree`` with every tensor created under ``torch.inference_mode`` replaced by a normal copy (autograd
    cannot save inference tensors for a backward; the others are returned as they are). Call it outside
    inference mode."""
    pair = tensor_pair(tree)
    if pair is not None and not (pair[0].is_inference() or pair[1].is_inference()):
        return tree
    leaves, _ = tree_flatten(tree)
    if not any(isinstance(t, Tensor) and t.is_inference() for t in leaves):
        return tree
    return tree_map(lambda t: t.clone() if isinstance(t, Tensor) and t.is_inference() else t, tree)


def to_device(tree: Any, device: torch.device) -> Any:
    return tree_map(lambda x: x.to(device) if isinstance(x, Tensor) else x, tree)


def select_output(model: nn.Module, which: Selector | None) -> nn.Module:
    """Say which part of ``model``'s output the loss takes, for every estimator: an index into a tuple/list
    output (``1`` for a model returning ``(aux, logits)``), a key or attribute name (``"logits"``), or a
    function of the output returning the tensor; None restores the default rule. Returns the same model."""
    if which is not None and not (callable(which) or isinstance(which, (int, str))) or isinstance(which, bool):
        raise ArgumentTypeError(f"select_output takes an int, a str, a callable or None; got {type(which).__name__}")
    marks(model)[SELECTOR_ATTR] = which
    return model


def _select(out: Any, which: Selector) -> Any:
    if callable(which):
        return which(out)
    if isinstance(which, str):
        if isinstance(out, dict) or hasattr(out, "keys"):
            return out[which]
        return getattr(out, which)
    return out[which]


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)``; the selected part when :func:`select_output` was used."""
    if isinstance(x, dict):
        out = model(**x)
    elif isinstance(x, (tuple, list)):
        out = model(*x)
    else:
        out = model(x)
    return selected_output(model, out)


def selected_output(model: nn.Module, out: Any) -> Any:
    """``out`` itself, or the part of it named by :func:`select_output` (checked to be a tensor)."""
    which = marks(model).get(SELECTOR_ATTR)
    if which is None:
        return out
    try:
        got = _select(out, which)
    except (IndexError, KeyError, AttributeError, TypeError) as e:
        raise ModelOutputError(f"select_output({which!r}) does not apply to a model output of type "
                               f"{type(out).__name__}: {e}") from None
    if not isinstance(got, Tensor):
        raise ModelOutputError(f"select_output({which!r}) gave a {type(got).__name__}, not a tensor")
    return got


def output_tensor(out: Any) -> Tensor:
    """The tensor ``f`` the loss is taken of: the output, its ``.logits``, or the only tensor of a tuple/list."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)):
        tensors = [i for i, o in enumerate(out) if isinstance(o, Tensor)]
        if len(tensors) == 1 and tensors[0] == 0:
            return out[0]
        if len(tensors) > 1:
            raise ModelOutputError(
                f"the model returned a {type(out).__name__} of {len(out)} elements holding tensors at positions "
                f"{tensors}; which one does the loss take? Say so with influence.select_output(model, i).")
    raise ModelOutputError(f"cannot find the output tensor in a model output of type {type(out).__name__} (no "
                           ".logits, not a tensor); name it with influence.select_output(model, which)")


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def reference_batches(ref: Any) -> list[Batch] | Iterable[Batch]:
    """A reference given as one batch, a list/tuple of batches or a re-iterable of batches (``DataLoader``), as a
    re-iterable of batches. A pair whose second element (the targets) is a tensor is one batch."""
    if isinstance(ref, (tuple, list)) and len(ref) == 2 and isinstance(ref[1], Tensor):
        return [ref]
    if isinstance(ref, (tuple, list)):
        if not ref:
            raise InvalidArgumentError("the reference holds no batch")
        return list(ref)
    if isinstance(ref, Iterable) and not isinstance(ref, (Tensor, dict, str)):
        return ref
    raise InvalidArgumentError(f"ref must be a batch (inputs, targets), a list of batches or a DataLoader; got "
                         f"{type(ref).__name__}")
