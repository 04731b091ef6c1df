"""The verdict cache: what a verdict depends on besides the model object (``signature``), and the verdicts cached
per model (weakly) and signature."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..batch import Batch
from ..caches import ModelCache
from ..checks import tensor_pair
from ..compat import own_children, own_parameters, tree_flatten
from ..layers import registry_version

_CACHE = ModelCache("verification verdicts: {signature: {parameter name: reason}}")


def signature(model: nn.Module, batch: Batch) -> tuple:
    """What the verdict depends on besides the model object: the batch's structure, each leaf's dtype and rank and
    the size pattern of its dimensions (``size_pattern``, not the sizes themselves), the modules' classes and
    train/eval flags, the trainable parameters and the registry version.

    A verdict carries over to another batch size or sequence length (a ragged last batch, dynamically padded text)
    because what the verification catches does not depend on the sizes themselves: a parameter used outside its
    module, a rule that does not match a module's forward, a layer whose leading dimension is not the batch. What
    sizes do change is kept in the pattern: which dimensions are 1 (broadcasting; a ``[1, T]`` call), which equal
    each other or a parameter's dimension (a non-batch leading dimension equal to the batch size passes the shape
    check, so such a batch is probed on its own). What it cannot see is control flow that depends on the sizes or
    values (a branch taken only for long sequences); Ghost's per-capture graph check (``verify="paths"``) covers
    that for Ghost, LAI relies on the verdict."""
    state = model_state(model)
    pair = tensor_pair(batch)
    if pair is not None:
        leaves, structure = list(pair), "pair"
    else:
        leaves, spec = tree_flatten(batch)
        structure = str(spec)
    return registry_version(), structure, size_pattern(leaves, state[-1]), state[:-1]


def size_pattern(leaves: list[Any], param_dims: frozenset[int]) -> tuple:
    """Per leaf: (dtype, one label per dimension) for a tensor, ``repr`` otherwise. A dimension's label is the
    position (in order over all leaves) of the first dimension of the same size, with whether its size is 1 and
    whether it equals a dimension of a parameter of the model: batches with the same labels differ only in sizes
    that no two dimensions share."""
    first: dict[int, int] = {}
    out: list[Any] = []
    k = 0
    for x in leaves:
        if not isinstance(x, Tensor):
            out.append(repr(x))
            continue
        labels = []
        for size in x.shape:
            labels.append((first.setdefault(size, k), size == 1, size in param_dims))
            k += 1
        out.append((x.dtype, tuple(labels)))
    return tuple(out)


def model_state(model: nn.Module) -> tuple:
    """Every module's class and train/eval flag and every parameter's name, ``requires_grad`` and dtype, in
    ``named_modules`` order (one walk over the module tree, without building the modules' dotted names); last, the
    set of the parameters' dimension sizes (``size_pattern``)."""
    state: list[Any] = []
    dims: set[int] = set()
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        state.append((type(m), m.training))
        for k, p in own_parameters(m).items():
            if p is not None:
                state.append((k, p.requires_grad, p.dtype))
                dims.update(p.shape)
        stack += [c for c in reversed(own_children(m).values()) if c is not None]
    state.append(frozenset(dims))
    return tuple(state)


def cached(model: nn.Module, sig: tuple) -> dict[str, str] | None:
    """The cached verdict {parameter name: why it is not factorable} for ``sig``, or None."""
    return _CACHE.get(model, {}).get(sig)


def store(model: nn.Module, sig: tuple, failures: dict[str, str]) -> None:
    _CACHE.entry(model)[sig] = dict(failures)


def clear(model: nn.Module | None = None) -> None:
    """Forget cached verdicts (of one model, or of all)."""
    _CACHE.clear(model)
