"""Named curation methods: a scoring signal plus a selection policy.

Influence methods keep samples with score >= threshold (default 0, the reference rule), or the top k, or
a GREATS greedy set. Baselines: ``vanilla`` (no curation), ``random`` (drop at a given rate),
``small-loss`` (keep the smallest losses), ``large-grad`` (keep the largest per-sample gradient norms).
Rate-based methods need ``keep_fraction``; ``with_fraction`` sets it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .signals import ESTIMATORS, SIGNALS

POLICIES = ("all", "threshold", "top_k", "bottom_k", "greats", "random")
RATE_POLICIES = ("top_k", "bottom_k", "greats", "random")


@dataclass(frozen=True)
class Method:
    """``signal``: what is scored (see ``signals``); ``policy``: how the keep mask is chosen from it."""

    name: str
    signal: str
    policy: str
    threshold: float = 0.0
    keep_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"{self.name}: unknown signal {self.signal!r}; choose from {SIGNALS}")
        if self.policy not in POLICIES:
            raise ValueError(f"{self.name}: unknown policy {self.policy!r}; choose from {POLICIES}")
        if self.policy in ("threshold", "greats") and self.signal not in ESTIMATORS:
            raise ValueError(f"{self.name}: policy {self.policy!r} needs an influence estimator, got {self.signal!r}")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"{self.name}: keep_fraction must be in (0, 1], got {self.keep_fraction}")

    @property
    def needs_reference(self) -> bool:
        return self.signal in ESTIMATORS

    @property
    def needs_fraction(self) -> bool:
        return self.policy in RATE_POLICIES

    def with_fraction(self, keep_fraction: float) -> "Method":
        return replace(self, keep_fraction=keep_fraction)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("vanilla", "none", "all"),
    Method("lai", "lai", "threshold"),
    Method("lai-last", "lai-last", "threshold"),
    Method("ghost", "ghost", "threshold"),
    Method("exact", "exact", "threshold"),
    Method("tracin", "tracin", "threshold"),
    Method("lai-topk", "lai", "top_k"),
    Method("ghost-topk", "ghost", "top_k"),
    Method("lai-greats", "lai", "greats"),
    Method("greats", "ghost", "greats"),
    Method("random", "random", "random"),
    Method("small-loss", "loss", "bottom_k"),
    Method("large-grad", "gradnorm", "top_k"),
]}


def get_method(method: str | Method, keep_fraction: float | None = None) -> Method:
    """A registered method by name (or a Method as is), with ``keep_fraction`` set when given."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        method = METHODS[method]
    return method.with_fraction(keep_fraction) if keep_fraction is not None else method
