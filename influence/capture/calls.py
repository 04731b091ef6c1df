"""What one recording pass holds: a layer call (``Call``) and the whole capture of a batch (``Capture``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Call:
    """One recorded call: ``inp`` [n, ...] (what the rule reads), ``out`` the output while a backward needs it,
    ``versions`` of input and output at record time, ``out_ref`` a weak reference to the output tensor object
    (identity with the model output, never a pointer comparison), ``fold`` k when a leading k * n was read as
    [n, k, ...], ``shared`` when one call with leading dimension 1 served the whole batch (``inp`` is then the
    input expanded to n; the output is the module's own, [1, ...])."""

    inp: Tensor
    out: Tensor | None
    versions: tuple[int, int]
    out_ref: Any = None
    fold: int = 0
    shared: bool = False


@dataclass
class Capture:
    """What one pass over a batch recorded.

    ``calls[name]``: one entry per call of the layer (input [n, ...], output gradient [n, ...] in ``grads`` after
    ``capture_backward``); ``order``: layer names in order of first call; ``f``: model output [n, ...];
    ``g``: dl_i/df_i, same shape; ``losses``: [n]; ``bad``: layer name -> why a call could not be recorded;
    ``producer``: the recorded layer whose output tensor IS the model output (or None); ``param_grads``:
    id(param) -> autograd's gradient of sum_i l_i; ``probe``: [(weights w [n], {id(param): gradient of
    sum_i w_i l_i})]; ``graph_losses``: [n] losses attached to the forward's autograd graph
    (``capture_forward(keep_graph=True)``); ``checked``: block key -> autograd's gradient of sum_i l_i laid out
    as the block's [G, p, q] matrix, for the blocks that passed the sum check (``influence.verify``; a reference
    side uses it instead of summing the factors)."""

    calls: dict[str, list[Call]]
    order: list[str]
    f: Tensor
    g: Tensor
    losses: Tensor
    grads: dict[str, list[Tensor]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    producer: str | None = None
    param_grads: dict[int, Tensor] = field(default_factory=dict)
    probe: list[tuple[Tensor, dict[int, Tensor]]] = field(default_factory=list)
    graph_losses: Tensor | None = None
    checked: dict[Any, Tensor] = field(default_factory=dict)
