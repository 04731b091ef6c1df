"""The sum check's structural form: every autograd path to a factored parameter runs through one of its layer calls.

A layer rule factors the gradient a parameter receives *through a recorded call of its module*: with the call's
inputs held fixed, d l / d W = sum over the call's outputs of (d s / d W)^T b, b = d l / d s. Autograd's gradient
of W is the sum over every path from the loss to W's ``AccumulateGrad`` node in the backward graph, so the two agree
for every input exactly when each such path ends inside the *region* of a call of a module that factors W: the
nodes reachable from the call's output node without passing through the nodes of the call's tensor inputs, entered
only through that output node. :func:`unexplained` checks this on the graph the forward just built (after the
forward, before the backward): it needs no gradient, only a walk over the graph's nodes (O(nodes) Python steps, no
tensor arithmetic), so every capture can run it where autograd's weight gradients would cost a [p, n T] x [n T, q]
product per block.

What it sees that the numeric sum check sees too: a weight read outside its module (``F.linear(h, a.weight)``, a
tied head written as ``h @ emb.weight.T``), also when the outside use appears only for some inputs (the graph of
that call has the extra path); a module's intermediate tensor used outside it (an extra edge into its region);
attention code calling a submodule's weight. What it does not decide: whether the rule factors the local
derivative right (the per-sample probe and the numeric sum check of the first call per input signature check
that numerically, ``influence.verify``; later inputs of the same signature rely on the rule's algebra, which the
equality and property tests check against Exact for every rule). Its one blind spot: a module that reads, other
than through its arguments, a tensor computed outside it from its own weight, and only by that module (the region
then reaches the outside use through the module); the first call's numeric check sees it unless that use is
data-dependent too. ``tests/test_paths.py`` checks that it flags every parameter the numeric check fails on the
adversarial cases and the model zoo.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

Node = Any  # torch.autograd.graph.Node


def _walk(root: Node, stops: frozenset[Node] | set[Node] = frozenset()) -> tuple[set[Node], dict[Node, int]]:
    """Nodes reachable from ``root`` without entering ``stops``, and for each the number of edges into it from
    those nodes."""
    seen, indeg, stack = {root}, {}, [root]
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is None or nxt in stops:
                continue
            indeg[nxt] = indeg.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen, indeg


def input_nodes(args: tuple, kwargs: Mapping[str, Any]) -> frozenset[Node]:
    """The autograd nodes of a call's tensor inputs (positional and keyword, nested in lists, tuples and dicts):
    the boundary of the call's region."""
    out: set[Node] = set()
    stack: list[Any] = [args, list(kwargs.values())]
    while stack:
        x = stack.pop()
        if isinstance(x, Tensor):
            if x.grad_fn is not None:
                out.add(x.grad_fn)
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return frozenset(out)


def unexplained(loss: Tensor, calls: Mapping[str, Sequence[tuple[Tensor, frozenset[Node]]]],
                owners: Mapping[int, Iterable[str]]) -> set[int]:
    """Ids of the parameters in ``owners`` whose autograd gradient of ``loss`` is not the sum of what their layer
    calls explain.

    ``calls[layer]``: (output tensor, input nodes) of each recorded call; ``owners``: parameter id -> the layers
    that factor it. A parameter passes when every edge into its ``AccumulateGrad`` node comes from the region of a
    call of one of its layers, and each such region is entered only through its output node (leaves, the parameters'
    own nodes among them, excepted: a tied weight is reached from several regions); a parameter the loss does not
    reach passes (its gradient and its factors' are zero)."""
    if loss.grad_fn is None:
        return set()
    reach, indeg = _walk(loss.grad_fn)
    acc: dict[int, Node] = {}
    leaves: set[Node] = set()
    for node in reach:
        if not node.next_functions:
            leaves.add(node)
            var = getattr(node, "variable", None)
            if var is not None:
                acc[id(var)] = node
    regions: dict[str, list[tuple[Node, set[Node], dict[Node, int]]]] = {}

    def regions_of(layer: str) -> list[tuple[Node, set[Node], dict[Node, int]]]:
        if layer not in regions:
            regions[layer] = [(out.grad_fn, *_walk(out.grad_fn, stops)) for out, stops in calls.get(layer, ())
                              if out.grad_fn is not None and out.grad_fn in reach]
        return regions[layer]

    closed: dict[tuple[str, int], bool] = {}
    bad: set[int] = set()
    for pid, layers in owners.items():
        node = acc.get(pid)
        if node is None:
            continue
        explained = 0
        for layer in layers:
            for k, (root, nodes, inner) in enumerate(regions_of(layer)):
                explained += inner.get(node, 0)
                if (layer, k) not in closed:
                    closed[layer, k] = all(inner.get(u, 0) == indeg.get(u, 0) for u in nodes
                                           if u is not root and u not in leaves)
                if node in nodes and not closed[layer, k]:
                    bad.add(pid)
        if explained != indeg.get(node, 0):
            bad.add(pid)
    return bad
