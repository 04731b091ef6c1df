"""The floor of LAI's cost: the fewest torch ops that compute the same scores, with no library around them.

``lai bench`` times these next to ``influence.lai`` so that a cost target can be read against what any
implementation must pay on this machine: a forward pass that keeps each Linear layer's input, g = softmax - onehot,
per layer one small reference matrix and one product of the training inputs with it.

Only for models whose trainable parameters all sit in ``nn.Linear`` layers, traced by ``torch.fx`` (the traced
graph also returns each Linear's input, so nothing is hooked), with cross-entropy on logits [n, C] and class
targets. For each reference sample v and Linear layer l, with a_v its input and g_v = softmax(f_v) - onehot(y_v):

    M_l = lr / m * sum_v g_v (x) [a_v, 1]          [C, d_l + 1]
    score_i = sum_l g_i . (M_l [a^l_i, 1])           (summed over layers into one [C, n] product before the dot)

which is LAI's formula for Linear layers (``influence.lai``; ``layers="last"`` keeps only the output layer). The
floor returns the total scores and the losses, not per-layer scores. ``floor_calls`` checks on the given batches
that the floor's scores equal ``influence.lai``'s before it hands the calls out.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import influence
from influence.batch import Batch, LossFn

FLOORS = {"lai-floor": "all", "lai-last-floor": "last"}


def _traced(model: nn.Module) -> tuple[nn.Module, list[nn.Linear], int] | None:
    """(a traced copy of ``model`` returning (f, [input of each Linear call]), those Linear modules, the index of
    the one whose output is f), or None when the model does not trace or holds trainable parameters outside
    Linear layers or a Linear is called twice."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any model fx cannot trace has no floor
        return None
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear)]
    mods = [gm.get_submodule(n.target) for n in nodes]
    if not nodes or len({id(m) for m in mods}) != len(mods):
        return None
    linear_params = {id(p) for m in mods for p in m.parameters()}
    if any(p.requires_grad and id(p) not in linear_params for p in model.parameters()) or \
            not all(p.requires_grad for m in mods for p in m.parameters()):
        return None
    out = next(n for n in gm.graph.nodes if n.op == "output")
    f = out.args[0]
    if f not in nodes:
        return None
    out.args = ((f, tuple(n.args[0] for n in nodes)),)
    gm.recompile()
    return gm, mods, nodes.index(f)


def _g(f: Tensor, y: Tensor) -> Tensor:
    """softmax(f) - onehot(y), [n, C]."""
    return f.softmax(1).scatter_(1, y.unsqueeze(1), -1.0, reduce="add")


def _floor(gm: nn.Module, mods: list[nn.Linear], keep: list[int], train: Batch, ref: Batch, lr: float
           ) -> tuple[Tensor, Tensor]:
    """(scores [n], losses [n]) of the layers ``keep`` (indices into ``mods``)."""
    with torch.no_grad():
        f, acts = gm(ref[0])
        g = _g(f, ref[1]).mul_(lr / f.shape[0])
        mats = [(g.T @ acts[k], g.sum(0) if mods[k].bias is not None else None) for k in keep]  # [C, d], [C]
        f, acts = gm(train[0])
        losses = F.cross_entropy(f, train[1], reduction="none")
        proj = None
        for k, (m, b) in zip(keep, mats):
            p = m @ acts[k].T if b is None else torch.addmm(b.unsqueeze(1), m, acts[k].T)  # [C, n]
            proj = p if proj is None else proj.add_(p)
        return (proj * _g(f, train[1]).T).sum(0), losses


def floor_calls(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float
                ) -> dict[str, Callable[[], Any]]:
    """``FLOORS`` as zero-argument calls on these batches, or {} when the model or loss has no floor here
    (see the module docs). Raises ``AssertionError`` when a floor's scores differ from ``influence.lai``'s."""
    traced = _traced(model) if loss_fn is influence.cross_entropy else None
    if traced is None or not all(isinstance(t, Tensor) for t in (*train, *ref)) or train[1].dim() != 1 or \
            train[1].is_floating_point():
        return {}
    gm, mods, last = traced
    calls = {}
    for name, layers in FLOORS.items():
        keep = list(range(len(mods))) if layers == "all" else [last]
        got = _floor(gm, mods, keep, train, ref, lr)[0]
        want = influence.lai(model, loss_fn, train, ref, lr, layers=layers).scores
        torch.testing.assert_close(got.to(want.dtype), want, rtol=1e-4, atol=1e-6 * float(want.abs().max()),
                                   msg=lambda m, name=name: f"{name} differs from influence.lai: {m}")
        calls[name] = lambda keep=keep: _floor(gm, mods, keep, train, ref, lr)[0]
    return calls


__all__ = ["FLOORS", "floor_calls"]
