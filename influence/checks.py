"""Validation of the arguments every estimator takes, in one place: batches, ``lr``, ``chunk_size`` and the
parameters to score. Each failure raises a named error (``influence.errors``) saying what is wrong.

* A batch is a pair ``(inputs, targets)`` of pytrees of tensors sharing the sample dimension 0, with at least
  one sample and no NaN or infinite value in a floating-point leaf (an additive attention mask must use a
  finite value such as ``torch.finfo(dtype).min``, not ``-inf``).
* ``lr`` is one finite real number (a Python or NumPy scalar, or a tensor with one element).
* ``chunk_size`` is a positive integer (or None where the estimator allows it: all at once).
* At least one parameter is trainable (``requires_grad=True``); names passed to ``exact(params=...)`` must be
  trainable parameters of the model.
"""

from __future__ import annotations

import cmath
import math
import numbers
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .compat import keystr, tree_flatten_with_path, tree_leaves
from .errors import (
    BatchSizeError,
    EmptyBatchError,
    InvalidArgumentError,
    NonFiniteInputError,
    NoTrainableParameterError,
    UnknownParameterError,
)


def _tensor_leaves(tree: Any) -> list[Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, Tensor)]


def batch_size(tree: Any, what: str = "batch", leaves: list[Tensor] | None = None) -> int:
    """Number of samples of a pytree of tensors (all leaves must agree on dim 0)."""
    leaves = _tensor_leaves(tree) if leaves is None else leaves
    if not leaves:
        raise BatchSizeError(f"{what} holds no tensor")
    sizes = {int(x.shape[0]) if x.dim() else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise BatchSizeError(f"{what}: tensors disagree on the sample dimension (sizes {sorted(sizes)})")
    return sizes.pop()


_SUMMABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def all_finite(x: Tensor) -> bool:
    """Whether every entry of a floating or complex tensor is finite. One sum decides when it is finite (a NaN
    or an infinity in any entry makes every sum of the entries NaN or infinite); only a non-finite sum, which
    finite entries can also give by overflowing, is settled entry by entry."""
    x = x.detach()
    if x.dtype in _SUMMABLE and cmath.isfinite(x.sum().item()):
        return True
    return bool(torch.isfinite(x).all())


def check_finite(tree: Any, what: str, leaves: list[Tensor] | None = None) -> None:
    """Raise ``NonFiniteInputError`` naming the leaf and the samples when a floating leaf holds NaN or inf (one
    reduction per floating leaf; the leaf's path is looked up only when one fails)."""
    leaves = _tensor_leaves(tree) if leaves is None else leaves
    if all(all_finite(x) for x in leaves if x.is_floating_point() or x.is_complex()):
        return
    for path, x in tree_flatten_with_path(tree)[0]:
        if not isinstance(x, Tensor) or not (x.is_floating_point() or x.is_complex()):
            continue
        bad = ~torch.isfinite(x.detach())
        if bad.any():
            rows = bad.reshape(x.shape[0], -1).any(1).nonzero().flatten()[:10].tolist()
            leaf = f" {keystr(path)}" if path else ""
            raise NonFiniteInputError(
                f"{what}{leaf} holds NaN or infinite values (samples {rows}); scores would be NaN or dominated by "
                "them. Use finite values (e.g. torch.finfo(dtype).min for an additive attention mask).")


def tensor_pair(batch: Any) -> tuple[Tensor, Tensor] | None:
    """(inputs, targets) when ``batch`` is a pair of plain tensors, the common case that the batch helpers
    (``check_batch``, ``batch.without_inference_tensors``, ``verify.signature``) handle without a pytree walk;
    else None."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and type(batch[0]) is Tensor and \
            type(batch[1]) is Tensor:
        return batch[0], batch[1]
    return None


def check_batch(batch: Any, name: str) -> int:
    """Validate an (inputs, targets) pair and return its number of samples (at least 1)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise BatchSizeError(f"{name} must be a pair (inputs, targets); got {type(batch).__name__}")
    x, y = batch
    if tensor_pair(batch) is not None and x.dim() and y.dim():
        xs, ys, n_x, n_y = [x], [y], len(x), len(y)
    else:
        xs, ys = _tensor_leaves(x), _tensor_leaves(y)
        n_x = batch_size(x, f"{name} inputs", xs)
        n_y = batch_size(y, f"{name} targets", ys)
    if n_x != n_y:
        raise BatchSizeError(f"{name}: {n_x} inputs but {n_y} targets")
    if n_x == 0:
        raise EmptyBatchError(f"the {name} batch holds no sample; pass at least one")
    check_finite(batch[0], f"{name} inputs", xs)
    check_finite(batch[1], f"{name} targets", ys)
    return n_x


def size_hint(batch: Any) -> int | None:
    """The number of samples of a batch that looks well formed, else None; no check (a hint for cost models
    ahead of :func:`check_batch`)."""
    try:
        return batch_size(batch[0])
    except Exception:  # noqa: BLE001 - check_batch will say what is wrong
        return None


def check_lr(lr: Any) -> float:
    """``lr`` as a float; raises ``InvalidArgumentError`` unless it is one finite real number."""
    value: Any = lr
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or lr.is_complex():
            raise InvalidArgumentError(f"lr must be one real number; got a tensor of shape {tuple(lr.shape)}")
        value = lr.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"lr must be one real number; got {type(lr).__name__} {lr!r:.60}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"lr must be finite; got {value}")
    return value


def check_positive_int(value: Any, name: str, optional: bool = True) -> int | None:
    """``value`` as a positive integer (None allowed when ``optional``); ``InvalidArgumentError`` naming ``name``
    otherwise (booleans are not integers here)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer{' or None' if optional else ''}; "
                                   f"got {value!r:.60}")
    return int(value)


def check_chunk_size(chunk_size: Any, optional: bool = True) -> int | None:
    """A positive integer number of samples per chunk (None allowed when ``optional``)."""
    return check_positive_int(chunk_size, "chunk_size", optional)


def trainable_names(model: nn.Module, params: Iterable[str] | None = None) -> list[str]:
    """Names of the trainable parameters to score (all of them, or the selected ``params`` in model order).

    Raises ``NoTrainableParameterError`` when there is none and ``UnknownParameterError`` for a selected name
    that is not a trainable parameter of ``model`` (``InvalidArgumentError`` when ``model`` is not an
    ``nn.Module``)."""
    check_model(model)
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    if not trainable:
        raise NoTrainableParameterError(
            f"{type(model).__name__} has no trainable parameter (every requires_grad is False): nothing to score")
    if params is None:
        return trainable
    if isinstance(params, str):
        raise InvalidArgumentError(f"params must be a collection of parameter names, not the string {params!r}")
    wanted = list(params)
    unknown = [n for n in wanted if n not in named]
    if unknown:
        close = [n for n in trainable if any(u.rpartition(".")[2] == n.rpartition(".")[2] for u in unknown)][:5]
        raise UnknownParameterError(f"the model has no parameter named {unknown[:5]}"
                                    + (f"; did you mean {close}?" if close else ""))
    frozen = [n for n in wanted if not named[n].requires_grad]
    if frozen:
        raise UnknownParameterError(f"parameters {frozen[:5]} are frozen (requires_grad=False) and cannot be scored")
    chosen = set(wanted)
    selected = [n for n in trainable if n in chosen]
    if not selected:
        raise NoTrainableParameterError("params selects no parameter")
    return selected


def check_model(model: Any) -> None:
    """``InvalidArgumentError`` unless ``model`` is a ``torch.nn.Module`` (the estimators read its parameters and
    call it)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module; got {type(model).__name__} {model!r:.60}. "
                                   "Wrap a function of parameters in an nn.Module that holds them")


def check_loss_fn(loss_fn: Any) -> None:
    """``InvalidArgumentError`` unless ``loss_fn`` is callable as ``loss_fn(outputs, targets) -> [n] losses``
    (e.g. ``influence.cross_entropy``; a name such as ``"ce"`` is not a loss)."""
    if not callable(loss_fn):
        raise InvalidArgumentError(f"loss_fn must be a function loss_fn(outputs, targets) returning per-sample "
                                   f"losses [n]; got {type(loss_fn).__name__} {loss_fn!r:.60}. Use e.g. "
                                   "influence.cross_entropy or influence.mse")


def check_arguments(model: nn.Module, train: Any, ref: Any, lr: Any, chunk_size: Any = None,
                    chunk_optional: bool = True) -> tuple[int, int, float]:
    """Every estimator's argument check: (n_train, n_ref, lr as float)."""
    n_t, n_v = check_batch(train, "train"), check_batch(ref, "ref")
    lr = check_lr(lr)
    check_chunk_size(chunk_size, chunk_optional)
    trainable_names(model)
    return n_t, n_v, lr
