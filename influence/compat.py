"""The one home of private torch APIs and of patches of user objects, so a torch upgrade breaks in one place.

Everything ``influence`` (and ``theory``, ``validation``) reads from torch outside its public API goes through the
names below: the pytree utilities (``torch.utils._pytree``), the private base classes of the normalisation and
dropout modules, the ``parametrize.cached()`` counter, ``torch.compile``'s wrapped module, a module's own
parameter and buffer dicts, a tensor's version counter, the instance attribute that shadows a module's
``forward`` and the attributes ``influence`` keeps on a user's objects (:func:`marks`). ``tests/test_compat.py``
lists any use elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import Tensor, nn
from torch.utils import _pytree

# ---------------------------------------------------------------- pytrees (torch.utils._pytree)

#: ``tree_flatten(tree) -> (leaves, spec)``: the leaves of nested tuples, lists, dicts (and registered containers).
tree_flatten = _pytree.tree_flatten
#: ``tree_unflatten(leaves, spec)``: the tree ``tree_flatten`` took apart, with new leaves.
tree_unflatten = _pytree.tree_unflatten
#: ``tree_map(fn, tree)``: the tree with ``fn`` applied to every leaf.
tree_map = _pytree.tree_map
#: ``tree_leaves(tree)``: the leaves of a tree, in ``tree_flatten``'s order.
tree_leaves = _pytree.tree_leaves
#: ``tree_flatten_with_path(tree) -> ([(path, leaf)], spec)``: the leaves with the key path to each.
tree_flatten_with_path = _pytree.tree_flatten_with_path
#: ``keystr(path)``: a key path as a string such as ``[0]['ids']``.
keystr = _pytree.keystr

# ---------------------------------------------------------------- private module base classes

#: Every BatchNorm (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, the lazy variants).
BATCHNORM: type = nn.modules.batchnorm._BatchNorm
#: Every InstanceNorm (``nn.InstanceNorm1d/2d/3d`` and the lazy variants).
INSTANCENORM: type = nn.modules.instancenorm._InstanceNorm
#: Every Dropout-like module with a rate ``p`` (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ...).
DROPOUT: type = nn.modules.dropout._DropoutNd

# ---------------------------------------------------------------- parametrize.cached()


def parametrization_cache_depth() -> int:
    """How many ``torch.nn.utils.parametrize.cached()`` contexts are open (0 when the torch version has no such
    counter)."""
    from torch.nn.utils import parametrize
    return getattr(parametrize, "_cache_enabled", 0)


@contextlib.contextmanager
def uncached_parametrizations() -> Iterator[None]:
    """Parametrized weights computed afresh on every access inside the block, even inside ``parametrize.cached()``:
    a cached weight is a tensor computed once from the real parameters, which ``torch.func.functional_call``
    (Exact) cannot replace, so Exact's per-sample gradients would silently miss it. The cache is only a speed-up;
    it is restored on exit. (torch keeps the switch in the module-level counter ``_cache_enabled``; if a torch
    version lacks it, there is nothing to switch.)"""
    from torch.nn.utils import parametrize
    depth = parametrization_cache_depth()
    if not depth:
        yield
        return
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = depth


# ---------------------------------------------------------------- torch.compile


def compiled_inner(model: nn.Module) -> nn.Module | None:
    """The eager module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), or None when ``model`` is not
    such a wrapper."""
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod
    return None


# ---------------------------------------------------------------- a module's own members


def own_parameters(module: nn.Module) -> dict[str, nn.Parameter | None]:
    """The module's own parameter slots, name -> parameter or None (``module._parameters``: unlike
    ``named_parameters(recurse=False)`` it keeps slots set to None and never deduplicates)."""
    return module._parameters


def own_buffers(module: nn.Module) -> dict[str, Tensor | None]:
    """The module's own buffer slots, name -> tensor or None (``module._buffers``)."""
    return module._buffers


def own_children(module: nn.Module) -> dict[str, nn.Module | None]:
    """The module's direct submodule slots, name -> module or None (``module._modules``)."""
    return module._modules


# ---------------------------------------------------------------- tensors


def version(t: Tensor) -> int:
    """The tensor's version counter (``t._version``): it grows with every in-place change of the tensor or of a
    view sharing its storage."""
    return t._version


# ---------------------------------------------------------------- patches of user modules

_MISSING = object()


def marks(obj: Any) -> dict[str, Any]:
    """Where ``influence`` keeps its own attributes on a user's object (a model's output selector, a forward
    pre-hook flag, a rule's note about a module): the instance dict, written directly so that neither
    ``nn.Module.__setattr__`` (which registers parameters and submodules) nor a user's ``__setattr__`` runs. Every
    such key starts with ``_influence``."""
    return obj.__dict__


def instance_forward(module: nn.Module) -> Callable[..., Any] | None:
    """The ``forward`` set on the module instance (``module.__dict__["forward"]``, as ``accelerate``'s hooks and
    :func:`shadow_forward` set it), or None when the class's ``forward`` is used."""
    return module.__dict__.get("forward")


def patched_original_forward(module: nn.Module) -> Callable[..., Any] | None:
    """The module's own ``forward`` that ``accelerate`` keeps aside (``module._original_forward``) when it has put a
    mixed-precision wrapper in the instance's ``forward``; None when there is no such patch."""
    return module.__dict__.get("_original_forward")


def shadow_forward(module: nn.Module, forward: Callable[..., Any]) -> Callable[[], None]:
    """Set ``forward`` as the module instance's ``forward`` (an instance attribute shadowing the class's, so
    ``nn.Module.__call__`` runs it with the module's own hooks around it); returns the function that restores the
    instance attribute exactly as it was (removed when there was none, else the earlier instance ``forward``)."""
    before = module.__dict__.get("forward", _MISSING)
    module.__dict__["forward"] = forward

    def restore() -> None:
        if before is _MISSING:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = before
    return restore


__all__ = [
    "tree_flatten", "tree_unflatten", "tree_map", "tree_leaves", "tree_flatten_with_path", "keystr", "BATCHNORM",
    "INSTANCENORM", "DROPOUT", "parametrization_cache_depth", "uncached_parametrizations", "compiled_inner",
    "own_parameters", "own_buffers", "own_children", "version", "marks", "instance_forward", "shadow_forward",
    "patched_original_forward",
]
