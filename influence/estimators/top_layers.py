"""The layer-aware family: exact terms of the top k layers, from a backward truncated below them, with or without
LAI's terms for the layers below.

    score_i = lr * sum_{l in top k} <G^l_i, mean_v G^l_v>                        (``exact-top{k}``)
            + lr * mean_v (g_i . g_v) sum_{l below} (a^l_i . a^l_v)            (``exact-top{k}-lai-below`` only)

G^l_i is the exact per-sample gradient of layer l's parameters, factored as Ghost factors it (input (x) output
gradient, ``influence.capture.factor_blocks``): the term equals Exact's ``per_layer[l]``. The output gradients come
from one ``autograd.grad`` call that asks only for the outputs of the top k recorded layers (and f), so autograd
runs the backward from the loss down to the lowest of them and stops there. The LAI terms below are LAI's
(``influence.estimators.lai``), from the inputs of those layers and g = dl/df.

The top layers are the last k factorable layers (modules with a layer rule whose calls were recorded) in order of
first call, counted from the output layer, found as last-layer LAI finds it (``influence.capture.output_layer``:
the layer whose output tensor is the model output). With k = 1 on a linear head, ``exact-top1`` is last-layer
LAI (LAI's output-layer term is exact) and ``exact-top1-lai-below`` is LAI over every layer.

What cannot be factored is never scored silently wrong: parameters of the top layers that the plan or the cached
verification verdict (``influence.verify.verdict_for``, as LAI reads it) rejects, or that are shared with a layer
below the top k (their gradient needs the full backward), are scored by Exact beside this backend (the session's
rerouting, ``routed_names``; warned once); below the top k, LAI skips what it cannot score (listed in
``result.skipped``, warned once). Like LAI, a capture relies on its signature's cached verdict (no per-capture graph
check as Ghost's ``verify="paths"``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from ..batch import Batch, LossFn
from ..capture import Capture, capture_backward, capture_forward, factor_blocks, output_layer, plan
from ..errors import InfluenceError, InvalidArgumentError
from ..result import Chunk
from ..routing import report_routed
from ..scoring import DEFAULT_BUDGET, ReferenceSide
from ..verify import verdict_for
from .factored import FactoredBackend
from .lai import PAIRINGS, LazyBlocks, lai_layers
from .protocol import Routed, Settings
from .registry import Capabilities, Estimator


class OutputLayerChangedError(InfluenceError):
    """The model output comes from another layer than on the first batch, so the top k layers are not defined."""


class Blocks(Mapping):
    """The exact blocks of the top layers (a dict keyed by parameter ids) and, when given, LAI's blocks of the layers
    below (a mapping built on access, keyed by layer name) as one mapping; each block is built once per read."""

    def __init__(self, exact: dict, below: Mapping | None) -> None:
        self.exact, self.below = exact, below

    def __getitem__(self, key: Any):
        if key in self.exact:
            return self.exact[key]
        if self.below is None:
            raise KeyError(key)
        return self.below[key]

    def __iter__(self) -> Iterator:
        yield from self.exact
        if self.below is not None:
            yield from self.below

    def __len__(self) -> int:
        return len(self.exact) + (len(self.below) if self.below is not None else 0)


class TopLayersBackend(FactoredBackend):
    """Exact terms of the top ``k`` layers (a truncated backward) and, with ``lai_below``, LAI's terms below them."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, k: int, lai_below: bool = False,
                 token_pairing: str = "all_pairs", mode: str = "auto", fallback: str | None = "auto",
                 memory_budget: int | None = DEFAULT_BUDGET) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidArgumentError(f"k (the number of top layers) must be a positive integer, got {k!r}")
        if token_pairing not in PAIRINGS:
            raise InvalidArgumentError(f"token_pairing must be one of {PAIRINGS}, got {token_pairing!r}")
        self.model, self.loss_fn, self.lr, self.k, self.lai_below = model, loss_fn, lr, k, lai_below
        self.token_pairing, self.mode, self.budget = token_pairing, mode, memory_budget
        self.estimator = f"exact-top{k}" + ("-lai-below" if lai_below else "")
        self.pl = plan(model, fallback)
        self.routed: Routed = dict(self.pl.routed)
        self.output: str | None = None  # the output layer
        self.top: list[str] | None = None  # the top k layers, lowest first
        self.top_ids: set[int] = set()  # the parameters they factor
        self.below: list[str] = []  # the layers LAI scores below them (``lai_below``)
        self.skipped: list[str] = []
        self.side: ReferenceSide | None = None

    # ------------------------------------------------------------------ what is routed, skipped, reported

    def routed_names(self) -> list[str]:
        """The top layers' parameters that cannot be factored here: the session scores them with Exact."""
        return [self.pl.names[k] for k in self.routed if k in self.top_ids and k in self.pl.names]

    def report(self) -> None:
        report_routed(self.pl, {k: v for k, v in self.routed.items() if k in self.top_ids}, self.estimator,
                      "of the top layers not factorable, scored by Exact")
        if self.lai_below:
            report_routed(self.pl, {k: v for k, v in self.routed.items() if k not in self.top_ids and
                                    k in self.pl.names}, self.estimator, "below the top layers not factorable, "
                          "skipped by LAI")

    # ------------------------------------------------------------------ the top layers

    def _find_top(self, cap: Capture) -> None:
        """The output layer and the k factorable layers ending with it (in order of first call), from a forward
        capture of every layer; the top layers' parameters shared with a layer outside them are routed."""
        self.output = output_layer(cap, self.pl)
        order = cap.order[:cap.order.index(self.output) + 1]
        self.top = order[-self.k:]
        layers_of, params_of = self.pl.factoring()
        top = set(self.top)
        self.top_ids = {id(p) for name in self.top for p in params_of[name]}
        for pid in self.top_ids:
            outside = [n for n in layers_of.get(pid, ()) if n not in top]
            if outside and pid not in self.routed:
                self.routed[pid] = ("shared", f"shared with {outside}, below the top {self.k} layer(s): its "
                                              "gradient needs the full backward")
        if self.lai_below:
            names, skipped, _ = lai_layers(self.pl, cap, "all", self.pl.context(self.routed))
            self.below = [n for n in names if n not in top]
            ids = {name: pid for pid, name in self.pl.names.items()}
            self.skipped = [s for s in skipped if ids.get(s) not in self.top_ids]

    def _check_output(self, cap: Capture, where: str) -> None:
        if cap.producer != self.output:
            raise OutputLayerChangedError(f"the model output comes from layer {cap.producer!r} on the {where} batch "
                                          f"but from {self.output!r} on the first batch; the top layers need one "
                                          "output layer")

    def _verdict(self, batch: Batch, n: int, where: str) -> Routed:
        """Parameters the cached verdict of ``batch``'s signature rejects that are not routed yet."""
        verdict = verdict_for(self.model, self.loss_fn, batch, self.pl, n, where)
        return {k: v for k, v in verdict.items() if k not in self.routed}

    def _blocks(self, batch: Batch, n: int, where: str) -> tuple[Blocks | None, Capture | None, Routed]:
        """(the blocks of ``batch``, the truncated capture, parameters newly found unfactorable): a forward with a
        backward truncated below the top layers; with ``lai_below``, a forward without autograd recording the
        layers below (on the first batch, the forward that finds the top layers)."""
        new = self._verdict(batch, n, where)
        if new:
            return None, None, new
        low = None
        if self.top is None:
            low = capture_forward(self.model, self.loss_fn, batch, self.pl.modules, n, where, rules=self.pl.rules)
            self._find_top(low)
        mods = {name: self.pl.modules[name] for name in self.top}
        cap = capture_backward(self.model, self.loss_fn, batch, mods, n, where,
                               rules={name: self.pl.rules[name] for name in self.top})
        self._check_output(cap, where)
        exact, failed = factor_blocks(cap, self.pl, self.pl.context(self.routed))
        new = {k: ("verify", why) for k, why in failed.items() if k not in self.routed}
        if new:
            return None, cap, new
        below = None
        if self.lai_below and self.below:
            if low is None:
                low = capture_forward(self.model, self.loss_fn, batch, {m: self.pl.modules[m] for m in self.below},
                                      n, where, rules={m: self.pl.rules[m] for m in self.below})
            below = LazyBlocks(low, self.pl, self.below, self.token_pairing, self.pl.context(self.routed))
        return Blocks(exact, below), cap, {}

    # ------------------------------------------------------------------ the protocol

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        self.side = ReferenceSide(n_train, pairwise, self.mode, self.budget, streamed, scale=self.lr)

    def add_reference(self, batch: Batch, n: int) -> Routed:
        blocks, _, new = self._blocks(batch, n, "ref")
        if not new:
            self.side.add(blocks, n)
        return new

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` against the reference side, or (``self_reference``) against the batch itself from
        the same capture; ``keep_graph`` has no use here (``weighted_gradient`` is not offered: the factors cover
        the top layers only)."""
        blocks, cap, new = self._blocks(batch, n, "train")
        if new:
            return Chunk({}, cap.losses if cap is not None else None, reroute=new)
        if self_reference:
            if any(k in self.top_ids for k in self.routed):
                raise InfluenceError(f"{self.estimator}: parameters of the top layers need Exact "
                                     f"({', '.join(self.routed_names())}), which scores against a reference; pass "
                                     "the batch as ref instead of ref=None")
            self.start(n, self.side.pairwise, False)
            self.side.add(blocks, n)
        named = self.side.by_name(self.side.score(blocks, n, cap.losses))  # scaled by lr on the reference side
        return Chunk(named, cap.losses, outputs=cap.f, blocks=blocks)

    def train_blocks(self, batch: Batch, n: int) -> Mapping:
        """The blocks of ``batch`` (self-influence: the top layers' exact gradients, LAI's pseudo-gradients below)."""
        blocks, _, new = self._blocks(batch, n, "train")
        if new:
            raise InfluenceError(f"self-influence: parameters became unfactorable on this batch "
                                 f"({', '.join(self.pl.names.get(k, '?') for k in new)}); use Exact")
        return blocks

    def update_gradient(self, result: Any, chunk: Chunk) -> None:
        return None  # the factors hold the top layers' gradients only, not a whole update


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed, *, k: int,
          lai_below: bool = False) -> TopLayersBackend:
    b = TopLayersBackend(model, loss_fn, s.lr, k=k, lai_below=lai_below, token_pairing=s.token_pairing,
                         mode=s.mode, fallback=s.fallback, memory_budget=s.budget)
    b.routed.update(routed)
    return b


def entry(k: int, lai_below: bool) -> Estimator:
    """The registry entry of the family member with ``k`` top layers (``lai_below``: plus LAI's terms below)."""
    layers = "the output layer" if k == 1 else f"the top {k} layers"
    if lai_below:
        return Estimator(f"exact-top{k}-lai-below", f"Exact top {k} + LAI below",
                         functools.partial(build, k=k, lai_below=True), CAPS, family="top-layers",
                         description=f"exact terms of {layers} (a backward truncated below them) plus LAI's terms "
                                     "of the layers below" + (" (on a linear head: LAI itself, with a backward)"
                                                             if k == 1 else ""))
    return Estimator(f"exact-top{k}", f"Exact top {k}", functools.partial(build, k=k), CAPS, family="top-layers",
                     description=f"exact terms of {layers} only (a backward truncated below them; equal to Exact's "
                                 "per-layer scores there)")


CAPS = Capabilities(needs_backward=True, self_reference=True)
ENTRIES = (entry(2, False), entry(2, True), entry(1, True))
