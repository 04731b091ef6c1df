"""The one public scoring seam: reference statistics computed once, any number of training batches scored against them.

    s = influence.Session(model, loss_fn, ref, estimator="ghost", lr=0.1)   # ref: a batch, a list of them, a loader
    r = s.score(train_batch)              # InfluenceResult, as influence.ghost(model, loss_fn, train, ref, lr=0.1)
    s.self_influence(train_batch)         # [n] lr * <grad l_i, grad l_i>
    s.pairwise_within(train_batch)        # [n, n] lr * <grad l_i, grad l_j> (greedy selection)
    influence.score_dataset(s, dataset)   # a whole data set, resumable (influence.dataset)
    s.refresh()                           # recompute the reference statistics at the current weights

Estimators (``estimator=``): ``"ghost"``, ``"lai"`` (``layers="all" | "last"``, ``token_pairing``), ``"lai-last"``,
``"exact"`` (``params``, ``state``), ``"tracin"`` / ``"tracin-last"`` (``checkpoints=[(state or path, lr), ...]``).
The functions :func:`influence.ghost`, :func:`influence.lai`, :func:`influence.exact` and :func:`influence.tracin`
are sessions over one reference batch scoring one training batch.

Reference: one batch ``(inputs, targets)``, a list of batches, or any re-iterable of batches (a ``DataLoader``). The
reference loss is the mean over all reference samples; with several batches the mean reference gradient is
accumulated batch by batch (memory of one gradient per layer), and pairwise products keep every reference
sample's column.

Staleness: ``refresh_every=k`` recomputes the reference statistics every k calls of :meth:`score` (at the weights of
that moment); between refreshes the scores use statistics computed at the weights of the last refresh (during
training: k - 1 steps old). ``refresh_every=None`` (default) never refreshes by itself.

Optimizers (``influence.optim``): ``preconditioner={name: P}`` scores lr * <P (.) grad l_i, grad L_ref> (Exact, and
Ghost in its contracted form); ``optimizer=`` an Adam/AdamW optimizer derives P from its state at every refresh
(Exact and Ghost), and warns once that LAI and TracIn score the SGD formula under it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, take, without_inference_tensors
from .checks import (check_batch, check_chunk_size, check_loss_fn, check_lr, check_positive_int,
                     trainable_names)
from .errors import InfluenceError
from .gradients import DEFAULT_CHUNK, ExactBackend
from .ghost import GhostBackend, weighted_gradient
from .lai import LaiBackend
from .optim import adam_preconditioner, is_adaptive
from .result import InfluenceResult, Reroute, assemble
from .memory import resolve_budget
from .scoring import DEFAULT_BUDGET, ReferenceSide, self_products
from .tracin import TracInBackend
from .verify import check_verify

ESTIMATORS = ("ghost", "lai", "lai-last", "exact", "tracin", "tracin-last")


class OptimizerWarning(UserWarning):
    """The optimizer's update is preconditioned, but the estimator scores the plain SGD formula."""


def scoring_mode(method: Callable) -> Callable:
    """Run ``method`` outside the global modes of the caller's code that would change what an estimator computes:
    ``torch.autocast`` is switched off (estimators compute in the parameters' dtype: autocast would run layers in
    another dtype than the factors they record; to score in lower precision, convert the model), so is
    ``torch.inference_mode`` (Ghost's backward needs autograd; inference-tensor batches are copied by
    ``without_inference_tensors``) and ``torch.nn.utils.parametrize.cached()`` (``uncached_parametrizations``)."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        autocast = [device for device in AUTOCAST_DEVICES if torch.is_autocast_enabled(device)]
        inference = torch.is_inference_mode_enabled()
        if not (autocast or inference or _parametrization_cache_depth()):
            return method(*args, **kwargs)  # nothing to switch off (the common case, without the context stack)
        with contextlib.ExitStack() as stack:
            for device in autocast:
                stack.enter_context(torch.autocast(device, enabled=False))
            if inference:
                stack.enter_context(torch.inference_mode(False))
            stack.enter_context(uncached_parametrizations())
            return method(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def uncached_parametrizations() -> Iterator[None]:
    """Parametrized weights computed afresh on every access while estimators run, even inside
    ``parametrize.cached()``: a cached weight is a tensor computed once from the real parameters, which
    ``torch.func.functional_call`` (Exact) cannot replace, so Exact's per-sample gradients would silently miss
    it. The cache is only a speed-up; it is restored on exit. (torch keeps the switch in the module-level counter
    ``_cache_enabled``; if a torch version lacks it, there is nothing to switch.)"""
    from torch.nn.utils import parametrize
    depth = _parametrization_cache_depth()
    if not depth:
        yield
        return
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = depth


AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
TOO_MANY_REROUTES = "the factorisation kept finding new unfactorable parameters; use estimator='exact'"


def _parametrization_cache_depth() -> int:
    """How many ``parametrize.cached()`` contexts are open (0 when the torch version has no such counter)."""
    from torch.nn.utils import parametrize
    return getattr(parametrize, "_cache_enabled", 0)


def unwrapped(model: nn.Module) -> nn.Module:
    """The eager module under training wrappers that compute the same function: ``nn.DataParallel`` and
    ``DistributedDataParallel`` (``.module``: their forward would scatter or synchronise gradients, and
    ``functional_call`` refuses them) and ``torch.compile`` (``._orig_mod``: compiled code runs no module hooks).
    Parameter names are the inner module's (without the ``module.`` / ``_orig_mod.`` prefix)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def reference_batches(ref: Any) -> list[Batch] | Iterable[Batch]:
    """A reference given as one batch, a list/tuple of batches or a re-iterable of batches (``DataLoader``), as a
    re-iterable of batches. A pair whose second element (the targets) is a tensor is one batch."""
    if isinstance(ref, (tuple, list)) and len(ref) == 2 and isinstance(ref[1], Tensor):
        return [ref]
    if isinstance(ref, (tuple, list)):
        if not ref:
            raise InfluenceError("the reference holds no batch")
        return list(ref)
    if isinstance(ref, Iterable) and not isinstance(ref, (Tensor, dict, str)):
        return ref
    raise InfluenceError(f"ref must be a batch (inputs, targets), a list of batches or a DataLoader; got "
                         f"{type(ref).__name__}")


def _graph_gradient(model: nn.Module, losses: Tensor):
    """``weighted_gradient(w)`` = [(param, sum_i w_i grad l_i)] by one backward through the graph of the scoring
    forward (usable once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    used = [False]

    def gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        if used[0]:
            raise InfluenceError("the scoring forward's graph was already used for an update; score the batch again")
        used[0] = True
        grads = torch.autograd.grad((weights.to(losses.dtype) * losses).sum(), params, allow_unused=True)
        return [(p, g) for p, g in zip(params, grads) if g is not None]
    return gradient


class Session:
    """Scores training samples against a reference set with one estimator (see the module docs).

    Every option of the estimator functions is accepted: ``lr``, ``pairwise``, ``mode``, ``fallback``,
    ``chunk_size``, ``memory_budget`` (Ghost, LAI), ``layers``, ``token_pairing`` (LAI), ``params``, ``state``
    (Exact), ``checkpoints``, (TracIn), ``preconditioner`` / ``optimizer`` / ``verify`` (Exact, Ghost; ``verify``:
    Ghost only), plus ``refresh_every``.
    ``n_train`` (default: the first reference batch's size) sizes the cost model that picks Gram or contracted form.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, ref: Any, *, estimator: str = "ghost",
                 lr: float | None = None, pairwise: bool = False, layers: str = "all", token_pairing: str = "all_pairs",
                 mode: str = "auto", fallback: str | None = "auto", chunk_size: int | None = None,
                 memory_budget: int | None = DEFAULT_BUDGET, params: Iterable[str] | None = None,
                 state: dict[str, Tensor] | None = None, checkpoints: Iterable[Any] | None = None,
                 preconditioner: Mapping[str, Tensor] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 refresh_every: int | None = None, n_train: int | None = None, verify: str = "paths") -> None:
        from .estimators import get_estimator
        fixed = dict(get_estimator(estimator).options)  # temporary, until the backends are built by the registry
        if estimator.startswith("lai-"):  # a registered variant fixes its options; plain "lai" keeps the caller's
            layers, token_pairing = fixed.get("layers", layers), fixed.get("token_pairing", token_pairing)
            estimator = "lai"
        model = unwrapped(model)
        self.model, self.loss_fn, self.estimator = model, loss_fn, estimator
        self.kind = estimator.split("-")[0]
        if self.kind == "tracin":
            if checkpoints is None:
                raise InfluenceError("estimator='tracin' needs checkpoints=[(state_dict or path, lr), ...]")
            self.checkpoints = list(checkpoints)
        self.lr = None if self.kind == "tracin" else check_lr(lr)  # the learning rate of the step being scored
        trainable_names(model, params if self.kind == "exact" else None)
        check_loss_fn(loss_fn)
        device = next((p.device for p in model.parameters()), None)
        self.budget = resolve_budget(memory_budget, device)  # fixed for the session (influence.memory)
        self.pairwise, self.mode, self.fallback = bool(pairwise), mode, fallback
        self.layers, self.token_pairing, self.params, self.state = layers, token_pairing, params, state
        default_chunk = DEFAULT_CHUNK if self.kind in ("exact", "tracin") else None
        self.chunk = check_chunk_size(chunk_size if chunk_size is not None else default_chunk,
                                      optional=default_chunk is None)
        self.refresh_every, self.calls = check_positive_int(refresh_every, "refresh_every"), 0
        self.verify = check_verify(verify)
        self.optimizer, self.user_preconditioner = optimizer, preconditioner
        if preconditioner is not None and self.kind not in ("exact", "ghost"):
            raise InfluenceError(f"{estimator} cannot apply a preconditioner: LAI replaces each layer's output "
                                 "gradient by g and has no per-parameter gradient to precondition, and TracIn sums "
                                 "plain gradient products over checkpoints; they score the SGD formula. Use "
                                 "estimator='exact' or 'ghost', or pass no preconditioner to accept the SGD score")
        self._warn_optimizer()
        self.self_reference = ref is None
        if self.self_reference and self.kind not in ("ghost", "lai"):
            raise InfluenceError("ref=None (each batch scored against itself) is available for Ghost and LAI; for "
                                 f"{estimator} pass the batch as ref")
        self.ref = [] if self.self_reference else reference_batches(ref)
        self.n_train = n_train
        self.refresh()

    # ------------------------------------------------------------------ reference side

    def _warn_optimizer(self) -> None:
        if self.optimizer is None or self.user_preconditioner is not None:
            return
        adam = isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW))
        if is_adaptive(self.optimizer) and not (adam and self.kind in ("exact", "ghost")):
            warnings.warn(f"influence.Session: the optimizer ({type(self.optimizer).__name__}) preconditions its "
                          f"update, but {self.estimator} scores the SGD formula lr * <grad l_i, grad L_ref>; the "
                          "scores approximate the optimizer's effect (see influence.optim)", OptimizerWarning,
                          stacklevel=3)

    def _preconditioner(self) -> Mapping[str, Tensor] | None:
        if self.user_preconditioner is not None:
            return self.user_preconditioner
        if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)) and self.kind in ("exact", "ghost"):
            return adam_preconditioner(self.optimizer, self.model)
        return None

    def _backend(self, routed: dict | None = None) -> Any:
        pre = self._preconditioner()
        if self.kind == "ghost":
            b = GhostBackend(self.model, self.loss_fn, self.lr, mode=self.mode, fallback=self.fallback,
                             memory_budget=self.budget, preconditioner=pre, verify=self.verify)
            b.routed.update(routed or {})
            return b
        if self.kind == "lai":
            b = LaiBackend(self.model, self.loss_fn, self.lr, layers=self.layers, token_pairing=self.token_pairing,
                           mode=self.mode, fallback=self.fallback, memory_budget=self.budget)
            b.routed.update(routed or {})
            return b
        if self.kind == "exact":
            return ExactBackend(self.model, self.loss_fn, self.lr, params=self.params, state=self.state,
                                chunk_size=self.chunk, preconditioner=pre, memory_budget=self.budget)
        return TracInBackend(self.model, self.loss_fn, self.checkpoints, last_layer=self.estimator == "tracin-last",
                             chunk_size=self.chunk, memory_budget=self.budget)

    @scoring_mode
    def refresh(self, ref: Any = None) -> None:
        """(Re)compute the reference statistics at the model's current weights (optionally from a new reference)."""
        if ref is not None:
            self.ref = reference_batches(ref)
        self._rebuild({})

    def _max_tries(self) -> int:
        """Every rebuild routes at least one more parameter, so this many always suffice."""
        return sum(p.requires_grad for p in self.model.parameters()) + 2

    def _rebuild(self, routed: dict) -> None:
        """Build the reference side with ``routed`` parameters routed, adding whatever a capture finds unfactorable
        (``Reroute``) until nothing new is found."""
        routed = dict(routed)
        tries = 0
        while True:
            try:
                self._build(routed)
                return
            except Reroute as e:
                tries += 1
                if tries >= self._max_tries():
                    raise InfluenceError(TOO_MANY_REROUTES) from e
                routed.update(e.args[0])

    def _build(self, routed: dict) -> None:
        backend = self._backend(routed)
        batches = [(b, check_batch(b, "ref")) for b in map(without_inference_tensors, self.ref)]
        if not batches and not self.self_reference:
            raise InfluenceError("the reference holds no batch")
        self.n_ref = sum(n for _, n in batches)
        hint = self.n_train or self.chunk or (batches[0][1] if batches else 1)
        backend.start(hint, self.pairwise, len(batches) > 1)
        for b, n in batches:
            backend.add_reference(b, n)
        extra = None
        names = backend.routed_names() if self.kind == "ghost" else []
        if names:
            extra = ExactBackend(self.model, self.loss_fn, self.lr, params=names, preconditioner=
                                 {k: v for k, v in (self._preconditioner() or {}).items() if k in names} or None,
                                 memory_budget=self.budget)
            extra.start(hint, self.pairwise, len(batches) > 1)
            for b, n in batches:
                extra.add_reference(b, n)
        self.backend, self.extra, self.routed_names = backend, extra, names
        self._reported: frozenset | None = None

    # ------------------------------------------------------------------ training side

    @property
    def result_lr(self) -> float:
        return self.backend.lr if self.kind == "tracin" else self.lr

    @scoring_mode
    def score(self, train: Batch, *, keep_graph: bool = False) -> InfluenceResult:
        """Scores of the training batch ``train`` against the reference statistics (in chunks of ``chunk_size``;
        with ``ref=None``, against the batch itself from the same capture).

        ``keep_graph`` (LAI): run the scoring forward with autograd so that ``result.weighted_gradient(w)`` is one
        backward of sum_i w_i l_i through it (no second forward). Ghost's ``weighted_gradient`` always comes from
        its recorded factors."""
        if self.refresh_every is not None and self.calls > 0 and self.calls % self.refresh_every == 0:
            self.refresh()
        self.calls += 1
        train = without_inference_tensors(train)
        n = check_batch(train, "train")
        tries = 0
        while True:
            try:
                return self._score(train, n, keep_graph)
            except Reroute as e:  # a new input signature found unfactorable parameters: rebuild with them routed
                tries += 1
                if tries >= self._max_tries():
                    raise InfluenceError(TOO_MANY_REROUTES) from e
                self._rebuild({**getattr(self.backend, "routed", {}), **e.args[0]})

    def _score(self, train: Batch, n: int, keep_graph: bool) -> InfluenceResult:
        if self.self_reference:
            chunks = [self.backend.score(train, n, self_reference=True, keep_graph=keep_graph)]
            self.n_ref = n
        else:
            chunk = self.chunk or n
            chunks = [self.backend.score(train if chunk >= n else take(train, slice(i, i + chunk)), min(chunk, n - i),
                                         keep_graph=keep_graph) for i in range(0, n, chunk)]
        named = dict(chunks[0].named) if len(chunks) == 1 else \
            {k: torch.cat([c.named[k] for c in chunks]) for k in chunks[0].named}
        if self.extra is not None:
            got = self.extra.score(train, n).named
            for k, v in got.items():
                named[k] = named[k] + v if k in named else v
        reported = frozenset(getattr(self.backend, "routed", {}))
        if reported != self._reported:  # the training side is verified too: say once what is routed or skipped
            getattr(self.backend, "report", lambda: None)()
            self._reported = reported
        losses = chunks[0].losses if len(chunks) == 1 else torch.cat([c.losses for c in chunks])
        result = assemble(self.backend.estimator, self.result_lr, named, losses, self.pairwise, self.n_ref)
        if len(chunks) == 1:
            self._attach(result, chunks[0], n)
        result.routed_to_exact = list(self.routed_names)
        result.skipped = list(getattr(self.backend, "skipped", []))
        return result

    def _attach(self, result: InfluenceResult, chunk: Any, n: int) -> None:
        """What a training step can reuse from a batch scored in one chunk (see ``InfluenceResult``)."""
        result.train_outputs = chunk.outputs
        if chunk.blocks is None or self.extra is not None:
            return
        blocks, lr, budget, mode, like = chunk.blocks, self.lr, self.budget, self.mode, chunk.losses
        if self.kind == "ghost":
            result.weighted_gradient = weighted_gradient(blocks)
        elif chunk.graph_losses is not None:
            result.weighted_gradient = _graph_gradient(self.model, chunk.graph_losses)
            result.graph_losses = chunk.graph_losses

        def pairwise_within() -> Tensor:
            side = ReferenceSide(n, True, mode, budget)
            side.add(blocks, n)
            return lr * sum(side.score(blocks, n, like).values()) if side.modes else like.new_zeros(n, n)

        result.pairwise_within = pairwise_within
        result.self_products = lambda: self._self_total(blocks, like)

    def _self_total(self, blocks: Mapping, like: Tensor) -> Tensor:
        """[n]: lr * sum over the blocks of <G_i, G_i> (Ghost's factored gradients or LAI's pseudo-gradients)."""
        total = [self_products(blocks[k], self.budget) for k in blocks]
        return self.lr * sum(total) if total else like.new_zeros(like.shape[0])

    @scoring_mode
    def self_influence(self, train: Batch) -> Tensor:
        """[n]: lr * <grad l_i, grad l_i> for every training sample (the estimator's own products: for LAI its
        layer-aware pseudo-gradients g_i (x) a_i, for TracIn summed over checkpoints with their lrs)."""
        train = without_inference_tensors(train)
        n = check_batch(train, "train")
        if self.kind == "exact":
            return self.backend.self_products(train, n)
        if self.kind == "tracin":
            return sum(part.self_products(train, n) for part in self.backend.parts)
        like = next(self.model.parameters()).new_zeros(n)
        total = self._self_total(self._blocks(train, n), like)
        if self.extra is not None:
            total = total + self.extra.self_products(train, n).to(total.dtype)
        return total

    def _blocks(self, train: Batch, n: int) -> dict:
        """The factored blocks of ``train`` (Ghost: per-sample gradients; LAI: pseudo-gradients)."""
        b = self.backend
        if self.kind == "ghost":
            from .verify import verified_capture
            _, blocks, new = verified_capture(self.model, self.loss_fn, train, b.pl, n, "train", b.routed,
                                              check=b.capture_check(reference=True))
            if new:
                raise InfluenceError("self-influence: parameters became unfactorable on this batch; use Exact")
            return blocks
        from .capture import capture_forward
        from .lai import lai_blocks
        cap = capture_forward(self.model, self.loss_fn, train, b.pl.modules, n, "train", rules=b.pl.rules)
        return lai_blocks(cap, b.pl, b.names, b.token_pairing, b.pl.context(b.routed))

    def pairwise_within(self, train: Batch) -> Tensor:
        """[n, n]: lr * <grad l_i, grad l_j> between the samples of ``train`` (train-train products of the same
        estimator, what greedy second-order selection needs)."""
        return Session(self.model, self.loss_fn, train, **self._options(pairwise=True)).score(train).pairwise

    def _options(self, **override: Any) -> dict[str, Any]:
        opts = dict(estimator=self.estimator, lr=self.lr, pairwise=self.pairwise,
                    layers=self.layers, token_pairing=self.token_pairing, mode=self.mode, fallback=self.fallback,
                    chunk_size=self.chunk, memory_budget=self.budget, params=self.params, state=self.state,
                    preconditioner=self.user_preconditioner, optimizer=None, verify=self.verify)
        if self.kind == "tracin":
            opts.update(checkpoints=self.checkpoints, lr=None)
        opts.update(override)
        return opts

    __call__ = score  # a session is a scorer for influence.score_dataset

    # ------------------------------------------------------------------ identity (for resumable data-set scoring)

    def describe(self) -> str:
        """The estimator and its options, as stored in a data-set scoring manifest."""
        return (f"{self.estimator}(lr={self.result_lr}, layers={self.layers}, token_pairing={self.token_pairing}, "
                f"mode={self.mode}, pairwise={self.pairwise}, n_ref={self.n_ref})")

    def fingerprint(self) -> str:
        """sha256 of the model's parameters and buffers and of the reference batches."""
        from .dataset import fingerprint
        return fingerprint(self.model, list(self.ref))
