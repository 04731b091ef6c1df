"""What a backend is: the settings a session hands it and the methods a session calls.

``Session`` builds a backend from its registry entry (``entry.build(model, loss_fn, settings, routed)``), feeds it
the reference batches and scores training chunks with it. It never looks inside: everything that differs between
estimators is a method here or a capability in the entry (``influence.estimators.registry.Capabilities``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

from torch import Tensor

from ..batch import Batch
from ..errors import InvalidArgumentError
from ..result import Chunk

Routed = dict[int, tuple[str, str]]  # param id -> (kind, reason): parameters the factorisation cannot cover


@dataclass(frozen=True)
class Settings:
    """A session's options, as every backend receives them (each reads the ones it has a use for).

    ``lr``: the step's learning rate (None for estimators that take it from ``checkpoints``); ``budget``: bytes
    (``influence.memory``); ``chunk``: training samples per chunk (None: the whole batch); ``preconditioner``:
    {parameter name: P} or None; ``verify``: Ghost's verification of its captures (``influence.verify.Verification``);
    ``layers`` / ``token_pairing``: LAI's; ``params`` / ``state``: Exact's parameter subset and evaluation point;
    ``checkpoints``: TracIn's [(state or path, lr), ...]; ``last_layer``: TracIn restricted to the output layer."""

    lr: float | None = None
    pairwise: bool = False
    mode: str = "auto"
    fallback: str | None = "auto"
    budget: int | None = None
    chunk: int | None = None
    preconditioner: Mapping[str, Tensor] | None = None
    verify: Any = "paths"
    layers: str = "all"
    token_pairing: str = "all_pairs"
    params: Iterable[str] | None = None
    state: Mapping[str, Tensor] | None = None
    checkpoints: tuple[Any, ...] | None = None
    last_layer: bool = False

    def with_options(self, options: Mapping[str, Any]) -> "Settings":
        """These settings with an entry's fixed ``options`` applied (an unknown option is a named error)."""
        unknown = set(options) - set(Settings.__dataclass_fields__)
        if unknown:
            raise InvalidArgumentError(f"unknown estimator options {sorted(unknown)}; known: "
                                       f"{sorted(Settings.__dataclass_fields__)}")
        return dataclasses.replace(self, **options)


class Backend(Protocol):
    """The methods a session calls. ``estimator``: the name results carry; ``lr``: the learning rate results
    report; ``routed``: parameters found unfactorable so far; ``skipped``: parameter names that contribute
    nothing (LAI).

    The learning rate: every product a backend returns (``Chunk.named``, ``self_products``) is already scaled by
    lr, and the session never rescales. Each backend applies it where it is cheapest (Ghost and Exact on their
    products, LAI on its reference side, TracIn per checkpoint with that checkpoint's lr)."""

    estimator: str
    lr: float
    routed: Routed
    skipped: list[str]

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        """Begin a reference side sized for ``n_train`` training samples per chunk (``streamed``: several
        reference batches)."""

    def add_reference(self, batch: Batch, n: int) -> Routed:
        """Add a reference batch of ``n`` samples. Returns parameters newly found unfactorable (the session then
        rebuilds the reference side with them routed), or {}."""

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of a training chunk (``Chunk.reroute`` set instead when it found new unfactorable parameters)."""

    def self_products(self, batch: Batch, n: int) -> Tensor:
        """[n]: lr * <G_i, G_i> with the estimator's own per-sample products."""

    def routed_names(self) -> list[str]:
        """Parameter names the session scores with Exact beside this backend."""

    def report(self) -> None:
        """Say once (warn, or refuse under ``fallback='error'``) what is routed or skipped."""

    def attach(self, result: Any, chunk: Chunk, n: int) -> None:
        """Put on ``result`` what a training step can reuse from a batch scored in one chunk."""


class BaseBackend:
    """Defaults for a backend that routes nothing, skips nothing and offers no reusable products: a new estimator
    subclasses it and writes ``start``, ``add_reference``, ``score`` and ``self_products``."""

    routed: Routed = {}
    skipped: list[str] = []

    def routed_names(self) -> list[str]:
        """No parameter is handed to Exact."""
        return []

    def report(self) -> None:
        """Nothing is routed or skipped, so there is nothing to say."""
        return None

    def attach(self, result: Any, chunk: Chunk, n: int) -> None:
        """Nothing from the scoring pass is offered for reuse (``result.weighted_gradient`` stays None)."""
        return None
