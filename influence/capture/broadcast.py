"""Per-sample output gradients of a shared call (one call whose output [1, ...] serves the whole batch, such as
position ids built once), read in the backward where the output is broadcast against the batch."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class _Broadcasts:
    """The per-sample output gradients of shared calls (outputs [1, ...] serving the whole batch), read during one
    backward at the nodes that take such an output as an input: ``AddBackward0``, ``SubBackward0`` (the output's
    gradient is +-alpha times the node's incoming gradient, summed over broadcast dimensions) and
    ``ExpandBackward0``. The incoming gradient [n, ...] of such a node holds each sample's share in its own row,
    so d l_i / d o = coefficient * (row i summed to o's shape). The per-sample probe of the verification checks the
    result. Any other use makes the call not factorable."""

    SPLIT = {"AddBackward0", "SubBackward0", "ExpandBackward0"}

    def __init__(self, outs: dict[int, Tensor], n: int) -> None:
        self.outs, self.n = outs, n
        self.uses: dict[int, list[tuple[Any, float]]] = {k: [] for k in outs}  # call -> (node, coefficient)
        self.other: dict[int, str] = {}  # call -> a node that uses the output in a way that cannot be split
        self.seen: dict[Any, Tensor | None] = {}
        self.handles: list[Any] = []

    def find(self, root: Any) -> None:
        """Walk the graph from ``root``; hook every node that takes a shared call's output as an input."""
        want = {(o.grad_fn, o.output_nr): k for k, o in self.outs.items() if o.grad_fn is not None}
        seen, stack = {root}, [root]
        while stack:
            u = stack.pop()
            for j, (nxt, nr) in enumerate(u.next_functions):
                if nxt is None:
                    continue
                k = want.get((nxt, nr))
                if k is not None:
                    kind = u.name()
                    if kind not in self.SPLIT:
                        self.other.setdefault(k, kind)
                    else:
                        sign = -1.0 if kind == "SubBackward0" and j == 1 else 1.0
                        alpha = float(getattr(u, "_saved_alpha", 1)) if j == 1 and kind != "ExpandBackward0" else 1.0
                        self.uses[k].append((u, sign * alpha))
                        if u not in self.seen:
                            self.seen[u] = None
                            self.handles.append(u.register_prehook(self._keep(u)))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)

    def _keep(self, u: Any):
        def hook(grad_outputs: tuple) -> None:
            self.seen[u] = grad_outputs[0]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def per_sample(self, k: int) -> tuple[Tensor | None, str | None]:
        """(d l_i / d o for every sample i as [n, *o.shape[1:]] (None: o unused), or why it cannot be read)."""
        o, n = self.outs[k], self.n
        if k in self.other:
            return None, (f"its output [1, ...] serves the whole batch and is used by {self.other[k]}, which does "
                          "not broadcast it against the batch (per-sample output gradients cannot be read)")
        total = None
        for u, coef in self.uses[k]:
            g = self.seen.get(u)
            if g is None:
                continue
            if g.dim() < o.dim() or g.shape[0] != n:
                return None, (f"its output [1, ...] serves the whole batch, but {u.name()} does not broadcast it "
                              f"to the batch (gradient {tuple(g.shape)}, n={n})")
            if g.dim() == o.dim():
                part = g.sum_to_size(n, *o.shape[1:])
            else:
                part = g.sum_to_size(n, *([1] * (g.dim() - o.dim() - 1)), *o.shape).reshape(n, *o.shape[1:])
            part = part * coef if coef != 1.0 else part
            total = part if total is None else total + part
        return total, None


def _broadcast_gradients(losses: Tensor, outs: dict[int, Tensor], n: int) -> _Broadcasts:
    """Hooks reading the per-sample output gradients of shared calls (``outs``: call index -> output [1, ...]) in
    the next backward from ``losses`` (``_Broadcasts``); call ``remove`` after it."""
    split = _Broadcasts(outs, n)
    if losses.grad_fn is not None:
        split.find(losses.grad_fn)
    return split
