"""Named curation methods: a scoring signal plus a selection policy.

Influence methods keep samples with score >= threshold (default 0, the reference rule), or the top k, or
a GREATS greedy set. Baselines:

* ``vanilla``: no curation;
* ``oracle``: trains on the clean samples of each batch only (needs the injected-noise mask): the upper bound
  of any filter, not a method one can run on real data;
* ``small-loss``: keeps the smallest losses, dropping a rate ramped up co-teaching style: min(tau * e / T_k, tau)
  in epoch e (0-based) with tau = the task's noise rate and T_k = ``TaskSpec.ramp_epochs`` (10), so the first
  epoch drops nothing (``ramp=True``: the experiment sets the keep fraction 1 - drop rate every epoch);
* ``small-loss-fixed``: keeps the smallest losses at a fixed rate from step 0 (the straw man of pitfall 17; kept
  to show what the schedule changes);
* ``loss-threshold``: keeps samples whose loss is at most the mean loss of the reference batch (the same clean
  reference the influence methods use: "keep what the model fits as well as clean held-out data");
* ``random``: keeps a random subset; ``large-grad``: keeps the largest per-sample gradient norms.

Rate-matched methods (``rate_matched``: random, small-loss-fixed, large-grad, the top-k and GREATS variants)
need ``keep_fraction``; the experiment gives them the fraction the matched threshold method (default ``lai``)
kept at the same seed. ``small-loss`` (its own schedule), ``loss-threshold``, ``oracle`` and the threshold
methods choose their own kept fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .signals import ESTIMATORS, SIGNALS

POLICIES = ("all", "threshold", "top_k", "bottom_k", "greats", "random", "loss_threshold", "oracle")
RATE_POLICIES = ("top_k", "bottom_k", "greats", "random")


@dataclass(frozen=True)
class Method:
    """``signal``: what is scored (see ``signals``); ``policy``: how the keep mask is chosen from it."""

    name: str
    signal: str
    policy: str
    threshold: float = 0.0
    keep_fraction: float | None = None
    ramp: bool = False  # keep fraction set per epoch by a drop-rate schedule (small-loss), not rate-matched

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"{self.name}: unknown signal {self.signal!r}; choose from {SIGNALS}")
        if self.policy not in POLICIES:
            raise ValueError(f"{self.name}: unknown policy {self.policy!r}; choose from {POLICIES}")
        if self.policy in ("threshold", "greats") and self.signal not in ESTIMATORS:
            raise ValueError(f"{self.name}: policy {self.policy!r} needs an influence estimator, got {self.signal!r}")
        if self.policy in ("loss_threshold", "oracle") and self.signal != "loss":
            raise ValueError(f"{self.name}: policy {self.policy!r} needs the 'loss' signal, got {self.signal!r}")
        if self.ramp and self.policy not in RATE_POLICIES:
            raise ValueError(f"{self.name}: a ramped schedule needs a rate policy {RATE_POLICIES}")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"{self.name}: keep_fraction must be in (0, 1], got {self.keep_fraction}")

    @property
    def needs_reference(self) -> bool:
        return self.signal in ESTIMATORS or self.policy == "loss_threshold"

    @property
    def needs_fraction(self) -> bool:
        """A keep fraction must be set before the method can select."""
        return self.policy in RATE_POLICIES

    @property
    def rate_matched(self) -> bool:
        """The experiment gives it the matched method's kept fraction (rate policies without a schedule)."""
        return self.needs_fraction and not self.ramp

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
    Method("small-loss", "loss", "bottom_k", ramp=True),
    Method("small-loss-fixed", "loss", "bottom_k"),
    Method("loss-threshold", "loss", "loss_threshold"),
    Method("oracle", "loss", "oracle"),
    Method("large-grad", "gradnorm", "top_k"),
]}


def get_method(method: str | Method, keep_fraction: float | None = None) -> Method:
    """A registered method by name (or a Method as is), with ``keep_fraction`` set when given."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        method = METHODS[method]
    return method.with_fraction(keep_fraction) if keep_fraction is not None else method


def ramped_drop_rate(epoch: int, tau: float, ramp_epochs: int) -> float:
    """Co-teaching's drop-rate schedule: min(tau * epoch / ramp_epochs, tau) (epoch 0-based; ramp_epochs 0 = tau
    from the start)."""
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"drop rate tau must be in [0, 1), got {tau}")
    if epoch < 0 or ramp_epochs < 0:
        raise ValueError(f"epoch and ramp_epochs must be >= 0, got {epoch}, {ramp_epochs}")
    return tau if ramp_epochs == 0 else min(tau * epoch / ramp_epochs, tau)
