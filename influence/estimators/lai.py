"""Layer-aware influence (LAI): forward activations and the loss-to-output gradient only, no backward pass.

LAI_i = lr * mean_v (g_i . g_v) * sum_l (a^l_i . a^l_v), with g = dl/df from the outputs. For token
sequences (f of shape [n, T, C]) and a layer with the same T:

* ``token_pairing="all_pairs"`` (default): sum_l sum_{t,t'} (a_{i,t} . a_{v,t'}) (g_{i,t} . g_{v,t'}), exact on the
  last layer because its output gradient is g;
* ``"aligned"``: (sum_t g_{i,t} . g_{v,t}) * sum_l sum_t (a_{i,t} . a_{v,t}), each sample's tokens flattened into
  one vector, as in the original research code; not exact even on the last layer.

A layer whose positions do not match f's (a convolution, or token layers under a per-sequence output)
uses its flattened input map with the aligned pairing. The activation a^l of a layer is its rule's
``lai_activation`` (``influence.layers``): [a, 1] for Linear/Conv1D/conv layers with a trainable bias, one-hot
ids for embeddings. Layers without an LAI term (norms, and whatever the layer registry does not cover or the
verification in ``influence.verify`` routes away) are skipped and listed in ``result.skipped``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import nn

from ..batch import Batch, LossFn
from ..caches import ModelCache
from ..capture import Capture, Plan, capture_forward, output_layer, plan
from ..errors import InfluenceError, InvalidArgumentError
from ..factors import Block, Dense, Segment
from ..layers import Context, factored
from ..result import Chunk, InfluenceResult
from ..routing import report_routed
from ..scoring import DEFAULT_BUDGET, ReferenceSide
from ..verify import verdict_for
from .factored import FactoredBackend, graph_gradient
from .protocol import Routed, Settings
from .registry import Capabilities, Estimator

PAIRINGS = ("all_pairs", "aligned")


def output_factor(cap: Capture) -> Dense:
    """g as a token factor: [n, T, 1, C] for outputs [n, T, C], else [n, 1, 1, prod(rest)]; ``shared`` (every
    layer's block pairs with it, so its token-pair Gram is computed once per call: ``factors.shared_grams``)."""
    g = cap.g
    n = g.shape[0]
    return Dense(g.reshape(n, g.shape[1], 1, g.shape[2]) if g.dim() == 3 else g.reshape(n, 1, 1, -1), shared=True)


class OutputFactors:
    """g as ``output_factor`` and, built on first use and kept, its aligned form: all tokens of a sample as one
    vector [n, 1, 1, T*C] (shared likewise)."""

    def __init__(self, cap: Capture) -> None:
        self.tokens = output_factor(cap)
        self._flat: Dense | None = None

    @property
    def flat(self) -> Dense:
        if self._flat is None:
            flat = self.tokens.flatten_tokens()
            self._flat = Dense(flat.data, flat.ones, shared=True)
        return self._flat


def _direct(pl: Plan, name: str) -> list[nn.Parameter]:
    return factored(pl.modules[name], pl.rules[name])  # its own, and those of submodules its rule factors


def lai_layers(pl: Plan, cap: Capture, layers: str, ctx: Context) -> tuple[list[str], list[str], set[int]]:
    """(layer names LAI scores, names of skipped trainable parameters, ids of the parameters that matter:
    all trainable ones for ``"all"``, the output layer's for ``"last"``)."""
    def termed(n: str) -> set[int]:  # the parameters of layer n that LAI's term stands for
        return {id(p) for p in pl.rules[n].lai_params(pl.modules[n]) if ctx.scored(p)}

    if layers == "last":
        name = output_layer(cap, pl)
        own, scored = _direct(pl, name), termed(name)
        skipped = [pl.names[id(p)] for p in own if id(p) not in scored]
        return [name], skipped, {id(p) for p in own}
    terms = {n: termed(n) for n in pl.modules if pl.rules[n].lai}
    names = [n for n, t in terms.items() if t]
    covered = {pid for t in terms.values() for pid in t}
    skipped = [name for pid, name in pl.names.items() if pid not in covered]
    return names, skipped, set(pl.names)


def layer_block(cap: Capture, pl: Plan, name: str, g: OutputFactors, token_pairing: str, ctx: Context
                ) -> Block | None:
    """The block of one recorded layer: a segment (g, a) for every call (None when no call has an LAI term).
    Token-aligned pairing (``"aligned"``, or a layer whose positions are not the output's) pairs the sample's
    flattened g with its flattened activation; for one-hot ids the activation keeps its tokens (ids offset by
    position, ``Index.flatten_tokens``) beside the one flattened g, which stands for the same vector at every
    token (``factors.Segment``): the Gram counts the positions where two samples hold the same id."""
    module, rule = pl.modules[name], pl.rules[name]
    segments = []
    for call in cap.calls[name]:
        act = rule.lai_activation(module, call.inp, ctx)
        if act is None:
            continue
        if token_pairing == "all_pairs" and act.tokens == g.tokens.tokens:
            segments.append(Segment(g.tokens, act))
        else:
            segments.append(Segment(g.flat, act.flatten_tokens()))
    return Block(name, segments) if segments else None


def lai_blocks(cap: Capture, pl: Plan, names: list[str], token_pairing: str, ctx: Context) -> dict[str, Block]:
    """One block per layer: segments (g, a) for every call of the layer."""
    g = OutputFactors(cap)
    blocks = {}
    for name in cap.order:
        if name not in names or name in cap.bad:
            continue
        block = layer_block(cap, pl, name, g, token_pairing, ctx)
        if block is not None:
            blocks[name] = block
    return blocks


class LazyBlocks(Mapping):
    """``lai_blocks`` as a mapping that builds a layer's block when it is read and does not keep it, so scoring
    (``ReferenceSide``) holds one layer's activation factors at a time instead of all of them."""

    def __init__(self, cap: Capture, pl: Plan, names: list[str], token_pairing: str, ctx: Context) -> None:
        self.cap, self.pl, self.token_pairing, self.ctx = cap, pl, token_pairing, ctx
        wanted = set(names)
        self.names = [name for name in cap.order if name in wanted and name not in cap.bad]
        self.g = OutputFactors(cap)
        self.empty: dict[str, bool] = {}  # name -> whether its block is None (learnt when first built)

    def __getitem__(self, name: str) -> Block:
        if name not in self.names:
            raise KeyError(name)
        block = layer_block(self.cap, self.pl, name, self.g, self.token_pairing, self.ctx)
        self.empty[name] = block is None
        if block is None:
            raise KeyError(name)
        return block

    def __contains__(self, name: object) -> bool:  # builds the block only when not built before
        if name not in self.names:
            return False
        if name not in self.empty:
            self.get(name)
        return not self.empty[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def lai_routed(model: nn.Module, loss_fn: LossFn, batches: list[tuple[Batch, int, str]], pl: Plan) -> Routed:
    """Parameters LAI must not score: the plan's, plus the cached verification verdict of every batch signature
    (computed by one verification capture where absent)."""
    routed: Routed = dict(pl.routed)
    for batch, n, where in batches:
        routed.update(verdict_for(model, loss_fn, batch, pl, n, where))
    return routed


_OUTPUT_LAYER = ModelCache("LAI's output layer: {'name': module name} (a hint, always checked)")


class LaiBackend(FactoredBackend):
    """LAI's reference statistics and training-batch scores: forward passes only (the verification verdict of a
    new input signature costs one verification capture, cached per model and signature)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, layers: str = "all",
                 token_pairing: str = "all_pairs", mode: str = "auto", fallback: str | None = "auto",
                 memory_budget: int | None = DEFAULT_BUDGET) -> None:
        if layers not in ("all", "last"):
            raise InvalidArgumentError(f"layers must be 'all' or 'last', got {layers!r}")
        if token_pairing not in PAIRINGS:
            raise InvalidArgumentError(f"token_pairing must be one of {PAIRINGS}, got {token_pairing!r}")
        self.model, self.loss_fn, self.lr = model, loss_fn, lr
        self.layers, self.token_pairing, self.mode, self.budget = layers, token_pairing, mode, memory_budget
        self.estimator = f"lai[{layers},{token_pairing}]"
        self.pl = plan(model, fallback)
        self.routed: Routed = dict(self.pl.routed)
        self.names: list[str] | None = None
        self.skipped: list[str] = []
        self.side: ReferenceSide | None = None

    def routed_names(self) -> list[str]:
        return []  # LAI skips what it cannot score; nothing is handed to Exact

    def report(self) -> None:
        """Warn once about (or, with ``fallback='error'``, refuse) what LAI skips among the parameters it needs."""
        report_routed(self.pl, {k: v for k, v in self.routed.items() if k in self.relevant}, "lai",
                      "not factorable, skipped by LAI")

    def _verdict(self, batch: Batch, n: int, where: str) -> Routed:
        """Parameters the cached verdict of ``batch``'s signature rejects that are not routed yet."""
        return {k: v for k, v in lai_routed(self.model, self.loss_fn, [(batch, n, where)], self.pl).items()
                if k not in self.routed}

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        self.side = ReferenceSide(n_train, pairwise, self.mode, self.budget, streamed, scale=self.lr)
        self.names = None

    def _capture(self, batch: Batch, n: int, where: str, keep_graph: bool = False) -> Capture:
        """``capture_forward`` of the layers LAI reads. For ``layers="last"`` only the output layer is recorded
        (known from an earlier capture of this backend or of the model, and confirmed on this capture by the
        identity of its output with the model output); every layer when that is not confirmed."""
        modules = self.pl.modules
        if self.layers == "last":
            name = self.names[0] if self.names else _OUTPUT_LAYER.get(self.model, {}).get("name")
            if name in modules:
                cap = capture_forward(self.model, self.loss_fn, batch, {name: modules[name]}, n, where, keep_graph,
                                      self.pl.rules)
                if cap.producer == name:
                    return cap
        cap = capture_forward(self.model, self.loss_fn, batch, modules, n, where, keep_graph, self.pl.rules)
        if self.layers == "last":
            if cap.producer is not None:
                _OUTPUT_LAYER.entry(self.model)["name"] = cap.producer
            if self.names and cap.producer != self.names[0]:
                raise InfluenceError(f"the model output comes from layer {cap.producer!r} on the {where} batch but "
                                     f"from {self.names[0]!r} on the first reference batch; last-layer LAI needs "
                                     "one output layer")
        return cap

    def _layers(self, cap: Capture, ctx: Context) -> tuple[list[str], list[str], set[int]]:
        """``lai_layers``; for ``layers="last"`` the parameters the verification does not vouch for, wherever they
        are, are listed in ``skipped`` and reported too (the output layer's input depends on them)."""
        names, skipped, relevant = lai_layers(self.pl, cap, self.layers, ctx)
        if self.layers == "last":
            failed = [k for k, (kind, _) in self.routed.items() if kind == "verify" and k in self.pl.names]
            skipped += [self.pl.names[k] for k in failed if self.pl.names[k] not in skipped]
            relevant = relevant | set(failed)
        return names, skipped, relevant

    def add_reference(self, batch: Batch, n: int) -> Routed:
        new = self._verdict(batch, n, "ref")
        if new:
            return new
        cap = self._capture(batch, n, "ref")
        ctx = self.pl.context(self.routed)
        if self.names is None:
            self.names, self.skipped, self.relevant = self._layers(cap, ctx)
            if self.layers == "last" and not any(ctx.scored(p) for p in _direct(self.pl, self.names[0])):
                raise InfluenceError(f"{self.names[0]}: none of the output layer's trainable parameters can be "
                                     "factored")
        self.side.add(LazyBlocks(cap, self.pl, self.names, self.token_pairing, ctx), n)
        return {}

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` against the reference side, or (``self_reference``) against the batch itself from
        the same forward; ``keep_graph`` runs that forward with autograd and returns its graph-attached losses."""
        new = self._verdict(batch, n, "train")
        if new:
            return Chunk({}, None, reroute=new)
        if self_reference:
            self.start(n, self.side.pairwise, False)
        cap = self._capture(batch, n, "train", keep_graph)
        ctx = self.pl.context(self.routed)
        if self_reference:
            self.names, self.skipped, self.relevant = self._layers(cap, ctx)
            self.side.add(LazyBlocks(cap, self.pl, self.names, self.token_pairing, ctx), n)
        blocks = LazyBlocks(cap, self.pl, self.names, self.token_pairing, ctx)
        named = self.side.by_name(self.side.score(blocks, n, cap.losses))  # scaled by lr on the reference side
        return Chunk(named, cap.losses, outputs=cap.f, blocks=blocks, graph_losses=cap.graph_losses)


    def train_blocks(self, batch: Batch, n: int) -> dict:
        """The pseudo-gradients g_i (x) a_i of ``batch`` per layer (self-influence)."""
        cap = capture_forward(self.model, self.loss_fn, batch, self.pl.modules, n, "train", rules=self.pl.rules)
        return lai_blocks(cap, self.pl, self.names, self.token_pairing, self.pl.context(self.routed))

    def update_gradient(self, result: InfluenceResult, chunk: Chunk):
        if chunk.graph_losses is None:
            return None
        result.graph_losses = chunk.graph_losses
        return graph_gradient(self.model, chunk.graph_losses)


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed) -> LaiBackend:
    b = LaiBackend(model, loss_fn, s.lr, layers=s.layers, token_pairing=s.token_pairing, mode=s.mode,
                   fallback=s.fallback, memory_budget=s.budget)
    b.routed.update(routed)
    return b


def _entry(name: str, label: str, layers: str, pairing: str, description: str) -> Estimator:
    return Estimator(name, label, build, Capabilities(needs_backward=False, self_reference=True,
                                                     sequence_only=pairing == "aligned"),
                     {"layers": layers, "token_pairing": pairing}, family="lai", description=description)


ENTRIES = (
    _entry("lai", "LAI", "all", "all_pairs", "layer-aware influence over every layer (tokens paired all against all)"),
    _entry("lai-last", "LAI (last layer)", "last", "all_pairs", "LAI on the output layer only (exact there)"),
    _entry("lai-aligned", "LAI (aligned tokens)", "all", "aligned", "LAI, token t paired with token t only"),
    _entry("lai-last-aligned", "LAI last (aligned)", "last", "aligned", "the same on the output layer only"),
)
