"""Batches as (inputs, targets) where inputs are a tensor, a tuple/list of tensors or a dict of tensors.

Every leaf carries the sample dimension first. Models are called as ``model(x)``, ``model(*x)`` or
``model(**x)`` accordingly; the tensor the loss sees is the output itself, its ``.logits`` attribute, or the
first element of a tuple output.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .errors import BatchSizeError

Batch = tuple[Any, Any]
LossFn = Callable[[Tensor, Any], Tensor]


def batch_size(tree: Any, what: str = "batch") -> int:
    """Number of samples of a pytree of tensors (all leaves must agree on dim 0)."""
    leaves = [x for x in tree_flatten(tree)[0] if isinstance(x, Tensor)]
    if not leaves:
        raise BatchSizeError(f"{what} holds no tensor")
    sizes = {int(x.shape[0]) if x.dim() else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise BatchSizeError(f"{what}: tensors disagree on the sample dimension (sizes {sorted(sizes)})")
    return sizes.pop()


def check_batch(batch: Batch, name: str) -> int:
    """Validate an (inputs, targets) pair and return its number of samples."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise BatchSizeError(f"{name} must be a pair (inputs, targets); got {type(batch).__name__}")
    n_x = batch_size(batch[0], f"{name} inputs")
    n_y = batch_size(batch[1], f"{name} targets")
    if n_x != n_y:
        raise BatchSizeError(f"{name}: {n_x} inputs but {n_y} targets")
    return n_x


def take(tree: Any, index: slice | Tensor) -> Any:
    """Rows ``index`` of every tensor leaf."""
    return tree_map(lambda x: x[index] if isinstance(x, Tensor) else x, tree)


def concat(a: Any, b: Any) -> Any:
    """Concatenate two pytrees of the same structure along the sample dimension."""
    flat_a, spec = tree_flatten(a)
    flat_b, _ = tree_flatten(b)
    out = [torch.cat([x, y]) if isinstance(x, Tensor) else x for x, y in zip(flat_a, flat_b)]
    return tree_unflatten(out, spec)


def to_device(tree: Any, device: torch.device) -> Any:
    return tree_map(lambda x: x.to(device) if isinstance(x, Tensor) else x, tree)


def call_model(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def output_tensor(out: Any) -> Tensor:
    """The tensor ``f`` the loss is taken of: the output, its ``.logits``, or a tuple's first element."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find the output tensor in a model output of type {type(out).__name__}")


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
