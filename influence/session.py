"""The one public scoring seam: reference statistics computed once, any number of training batches scored against them.

    s = influence.Session(model, loss_fn, ref, estimator="ghost", lr=0.1)   # ref: a batch, a list of them, a loader
    r = s.score(train_batch)              # InfluenceResult, as influence.ghost(model, loss_fn, train, ref, lr=0.1)
    s.self_influence(train_batch)         # [n] lr * <grad l_i, grad l_i>
    s.pairwise_within(train_batch)        # [n, n] lr * <grad l_i, grad l_j> (greedy selection)
    influence.score_dataset(s, dataset)   # a whole data set, resumable (influence.dataset)
    s.refresh()                           # recompute the reference statistics at the current weights

Estimators (``estimator=``): any name in the registry (``influence.estimators.estimator_names()``): ``"exact"``
(``params``, ``state``), ``"ghost"``, ``"lai"``, ``"lai-last"``, ``"lai-aligned"``, ``"lai-last-aligned"``
(``token_pairing``), ``"tracin"`` / ``"tracin-last"`` (``checkpoints=[(state or path, lr), ...]``). The session
reads what an estimator can do from its entry's capabilities; the one-call functions (``influence.functions``)
are sessions over one reference batch scoring one training batch.

Reference: one batch ``(inputs, targets)``, a list of batches, or any re-iterable of batches (a ``DataLoader``). The
reference loss is the mean over all reference samples; with several batches the mean reference gradient is
accumulated batch by batch (memory of one gradient per layer), and pairwise products keep every reference
sample's column.

Staleness: ``refresh_every=k`` recomputes the reference statistics every k calls of :meth:`score` (at the weights of
that moment); between refreshes the scores use statistics computed at the weights of the last refresh (during
training: k - 1 steps old). ``refresh_every=None`` (default) never refreshes by itself.

Rerouting: parameters a backend finds it cannot factor (returned as data by ``add_reference`` or in
``Chunk.reroute``) are routed, the reference side is built again, and an Exact backend scores them beside it.

Optimizers (``influence.optim``): ``preconditioner={name: P}`` scores lr * <P (.) grad l_i, grad L_ref> (estimators
with the ``preconditioner`` capability); ``optimizer=`` an Adam/AdamW optimizer derives P from its state at every
refresh, and warns once that the others score the SGD formula under it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, reference_batches, take, without_inference_tensors
from .checks import check_batch, check_chunk_size, check_loss_fn, check_lr, check_positive_int, trainable_names
from .errors import InfluenceError
from .estimators import Settings, get_estimator
from .estimators.exact import ExactBackend
from .gradients import DEFAULT_CHUNK
from .memory import resolve_budget
from .optim import optimizer_preconditioner, warn_sgd_formula
from .result import Chunk, InfluenceResult, assemble
from .scoring import DEFAULT_BUDGET
from .scoring_modes import scoring_mode, unwrapped
from .verify import check_verify

TOO_MANY_REROUTES = "the factorisation kept finding new unfactorable parameters; use estimator='exact'"


class Session:
    """Scores training samples against a reference set with one registered estimator (see the module docs).

    Options: ``lr``, ``pairwise``, ``mode``, ``fallback``, ``chunk_size``, ``memory_budget`` (bytes), ``params``,
    ``state`` (Exact), ``checkpoints`` (TracIn), ``token_pairing`` (LAI), ``preconditioner`` / ``optimizer`` /
    ``verify`` (Ghost), ``refresh_every``. ``n_train`` (default: the first reference batch's size) sizes the cost
    model that picks Gram or contracted form. An option the entry fixes (``lai-last``'s ``layers``) cannot be set.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, ref: Any, *, estimator: str = "ghost",
                 lr: float | None = None, pairwise: bool = False, mode: str = "auto", fallback: str | None = "auto",
                 chunk_size: int | None = None, memory_budget: int | None = DEFAULT_BUDGET,
                 params: Iterable[str] | None = None, state: dict[str, Tensor] | None = None,
                 checkpoints: Iterable[Any] | None = None, preconditioner: Mapping[str, Tensor] | None = None,
                 optimizer: torch.optim.Optimizer | None = None, refresh_every: int | None = None,
                 n_train: int | None = None, verify: str = "paths", **options: Any) -> None:
        self.entry = entry = get_estimator(estimator)
        caps, model = entry.caps, unwrapped(model)
        self.model, self.loss_fn, self.estimator = model, loss_fn, entry.name
        if caps.checkpoints and checkpoints is None:
            raise InfluenceError(f"estimator={estimator!r} needs checkpoints=[(state_dict or path, lr), ...]")
        fixed = {k: v for k, v in options.items() if k in entry.options and v != entry.options[k]}
        if fixed:
            raise InfluenceError(f"estimator={estimator!r} fixes {dict(entry.options)}; got {fixed} (choose the "
                                 "registered entry with those options, e.g. 'lai-last')")
        trainable_names(model, params if caps.parameter_subset else None)
        check_loss_fn(loss_fn)
        device = next((p.device for p in model.parameters()), None)
        budget = resolve_budget(memory_budget, device)  # fixed for the session (influence.memory)
        chunk = chunk_size if chunk_size is not None else (DEFAULT_CHUNK if caps.per_sample_gradients else None)
        if preconditioner is not None and not caps.preconditioner:
            raise InfluenceError(f"{estimator} cannot apply a preconditioner: it has no per-parameter gradient "
                                 "to precondition (LAI replaces each layer's output gradient by g) or sums plain "
                                 "gradient products (TracIn); it scores the SGD formula. Use estimator='exact' or "
                                 "'ghost', or pass no preconditioner to accept the SGD score")
        self.settings = Settings(
            lr=None if caps.checkpoints else check_lr(lr), pairwise=bool(pairwise), mode=mode, fallback=fallback,
            budget=budget, chunk=check_chunk_size(chunk, optional=not caps.per_sample_gradients),
            verify=check_verify(verify), params=params, state=state,
            checkpoints=tuple(checkpoints) if checkpoints is not None else None,
        ).with_options({k: v for k, v in options.items() if k not in entry.options}).with_options(entry.options)
        self.lr, self.pairwise, self.budget, self.chunk = self.settings.lr, self.settings.pairwise, budget, \
            self.settings.chunk
        self.refresh_every, self.calls = check_positive_int(refresh_every, "refresh_every"), 0
        self.optimizer, self.user_preconditioner = optimizer, preconditioner
        if optimizer is not None and preconditioner is None:
            warn_sgd_formula(optimizer, self.estimator, caps.preconditioner)
        self.self_reference = ref is None
        if self.self_reference and not caps.self_reference:
            raise InfluenceError(f"ref=None (each batch scored against itself) is available for "
                                 f"{', '.join(_self_referencing())}; for {estimator} pass the batch as ref")
        self.ref = [] if self.self_reference else reference_batches(ref)
        self.n_train = n_train
        self.refresh()

    # ------------------------------------------------------------------ reference side

    @scoring_mode
    def refresh(self, ref: Any = None) -> None:
        """(Re)compute the reference statistics at the model's current weights (optionally from a new reference)."""
        if ref is not None:
            self.ref = reference_batches(ref)
        self._rebuild({})

    def _max_tries(self) -> int:
        """Every rebuild routes at least one more parameter, so this many builds always suffice."""
        return sum(p.requires_grad for p in self.model.parameters()) + 2

    def _rebuild(self, routed: dict) -> None:
        """Build the reference side with ``routed`` parameters routed, adding whatever a backend finds unfactorable
        until nothing new is found (``_max_tries`` bounds the builds)."""
        routed = dict(routed)
        for _ in range(self._max_tries()):
            new = self._build(routed)
            if not new:
                return
            routed.update(new)
        raise InfluenceError(TOO_MANY_REROUTES)

    def _build(self, routed: dict) -> dict:
        """The backend and (for routed parameters) the Exact backend beside it; the new unfactorable parameters a
        reference batch revealed, or {}."""
        settings = dataclasses.replace(self.settings, preconditioner=self.user_preconditioner or optimizer_preconditioner(
            self.optimizer, self.model, self.entry.caps.preconditioner))
        backend = self.entry.build(self.model, self.loss_fn, settings, routed)
        batches = [(b, check_batch(b, "ref")) for b in map(without_inference_tensors, self.ref)]
        if not batches and not self.self_reference:
            raise InfluenceError("the reference holds no batch")
        self.n_ref = sum(n for _, n in batches)
        hint = self.n_train or self.chunk or (batches[0][1] if batches else 1)
        backend.start(hint, self.pairwise, len(batches) > 1)
        for b, n in batches:
            new = backend.add_reference(b, n)
            if new:
                return new
        names, extra = backend.routed_names(), None
        if names:
            pre = {k: v for k, v in (settings.preconditioner or {}).items() if k in names} or None
            extra = ExactBackend(self.model, self.loss_fn, self.lr, params=names, preconditioner=pre,
                                 memory_budget=self.budget)
            extra.start(hint, self.pairwise, len(batches) > 1)
            for b, n in batches:
                extra.add_reference(b, n)
        self.backend, self.extra, self.routed_names = backend, extra, names
        self._reported: frozenset | None = None
        return {}

    # ------------------------------------------------------------------ training side

    @property
    def result_lr(self) -> float:
        return self.backend.lr

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
        for _ in range(self._max_tries()):
            chunks = self._chunks(train, n, keep_graph)
            new = next((c.reroute for c in chunks if c.reroute), None)
            if not new:
                return self._result(train, n, chunks)
            self._rebuild({**self.backend.routed, **new})  # a new input signature found unfactorable parameters
        raise InfluenceError(TOO_MANY_REROUTES)

    def _chunks(self, train: Batch, n: int, keep_graph: bool) -> list[Chunk]:
        if self.self_reference:
            self.n_ref = n
            return [self.backend.score(train, n, self_reference=True, keep_graph=keep_graph)]
        chunks, chunk = [], self.chunk or n
        for i in range(0, n, chunk):
            part = train if chunk >= n else take(train, slice(i, i + chunk))
            chunks.append(self.backend.score(part, min(chunk, n - i), keep_graph=keep_graph))
            if chunks[-1].reroute:
                break
        return chunks

    def _result(self, train: Batch, n: int, chunks: list[Chunk]) -> InfluenceResult:
        named = dict(chunks[0].named) if len(chunks) == 1 else \
            {k: torch.cat([c.named[k] for c in chunks]) for k in chunks[0].named}
        if self.extra is not None:
            for k, v in self.extra.score(train, n).named.items():
                named[k] = named[k] + v if k in named else v
        reported = frozenset(self.backend.routed)
        if reported != self._reported:  # the training side is verified too: say once what is routed or skipped
            self.backend.report()
            self._reported = reported
        losses = chunks[0].losses if len(chunks) == 1 else torch.cat([c.losses for c in chunks])
        result = assemble(self.estimator, self.result_lr, named, losses, self.pairwise, self.n_ref)
        if len(chunks) == 1:
            result.train_outputs = chunks[0].outputs
            if self.extra is None:
                self.backend.attach(result, chunks[0], n)
        result.routed_to_exact = list(self.routed_names)
        result.skipped = list(self.backend.skipped)
        return result

    @scoring_mode
    def self_influence(self, train: Batch) -> Tensor:
        """[n]: lr * <grad l_i, grad l_i> for every training sample (the estimator's own products: for LAI its
        layer-aware pseudo-gradients g_i (x) a_i, for TracIn summed over checkpoints with their lrs)."""
        train = without_inference_tensors(train)
        n = check_batch(train, "train")
        total = self.backend.self_products(train, n)
        if self.extra is not None:
            total = total + self.extra.self_products(train, n).to(total.dtype)
        return total

    def pairwise_within(self, train: Batch) -> Tensor:
        """[n, n]: lr * <grad l_i, grad l_j> between the samples of ``train`` (train-train products of the same
        estimator, what greedy second-order selection needs)."""
        return Session(self.model, self.loss_fn, train, **self._options(pairwise=True)).score(train).pairwise

    def _options(self, **override: Any) -> dict[str, Any]:
        s = self.settings
        opts = dict(estimator=self.estimator, lr=s.lr, pairwise=s.pairwise, mode=s.mode, fallback=s.fallback,
                    chunk_size=s.chunk, memory_budget=self.budget, params=s.params, state=s.state,
                    checkpoints=s.checkpoints, preconditioner=self.user_preconditioner, verify=s.verify,
                    token_pairing=s.token_pairing)
        opts.update(override)
        return opts

    __call__ = score  # a session is a scorer for influence.score_dataset

    # ------------------------------------------------------------------ identity (for resumable data-set scoring)

    def describe(self) -> str:
        """The estimator and its options, as stored in a data-set scoring manifest."""
        s = self.settings
        return (f"{self.estimator}(lr={self.result_lr}, layers={s.layers}, token_pairing={s.token_pairing}, "
                f"mode={s.mode}, pairwise={s.pairwise}, n_ref={self.n_ref})")

    def fingerprint(self) -> str:
        """sha256 of the model's parameters and buffers and of the reference batches."""
        from .dataset import fingerprint
        return fingerprint(self.model, list(self.ref))


def _self_referencing() -> list[str]:
    from .estimators import estimator_names
    return estimator_names(self_reference=True)
