"""Named curation methods: a scoring signal plus a selection policy.

Every registered estimator (``influence.estimators``) is a method of the same name keeping samples with
score >= threshold (default 0, the reference rule); the variants keep the top k (``lai-topk``, ``ghost-topk``) or a
GREATS greedy set (``lai-greats``, ``greats`` = Ghost's). The table (:data:`METHODS`) is read from the registry at
every access, so an estimator registered later is a method too. Baselines:

* ``vanilla``: no curation;
* ``oracle``: trains on the clean samples of each batch only (needs the injected-noise mask): the upper bound
  of any filter, not a method one can run on real data;
* ``small-loss``: keeps the smallest losses, dropping a rate ramped up co-teaching style: min(tau * e / T_k, tau)
  in epoch e (0-based) with tau = the task's true noise rate (the oracle rate) and T_k = ``TaskSpec.ramp_epochs``
  (10), so the first epoch drops nothing (``ramp=True``: the experiment sets the keep fraction 1 - drop rate
  every epoch);
* ``small-loss-est``: the same ramped schedule with tau estimated from the data by the experiment
  (``validation.curation.experiment.estimate_noise_rate``), not handed the true rate;
* ``small-loss-fixed``: keeps the smallest losses at a fixed rate from step 0 (the straw man of pitfall 17; kept
  to show what the schedule changes);
* ``loss-threshold``: keeps samples whose loss is at most the mean loss of the reference batch (the same clean
  reference the influence methods use: "keep what the model fits as well as clean held-out data");
* ``random``: keeps a random subset; ``large-grad``: keeps the largest per-sample gradient norms;
* ``loss+lai``, ``loss+lai-last``: the combined rank of the data-selection literature, keeping the top of
  rank(influence score) + rank(-loss) within the batch (``policies.rank_sum``): samples both useful by the
  estimator and well fitted; rate-matched to that estimator's own threshold method (``lai``, ``lai-last``).

Rate-matched methods (``rate_matched``: random, small-loss-fixed, large-grad, the top-k and GREATS variants)
need ``keep_fraction``; the experiment gives them the fraction the matched threshold method (default ``lai``)
kept at the same seed; ``<method>-as-<matched>`` (``random-as-lai-last``) matches another method's fraction, so
every threshold method can have its own rate-matched random control. ``small-loss`` (its own schedule), ``loss-threshold``, ``oracle`` and the threshold
methods choose their own kept fraction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from influence.errors import InvalidArgumentError
from influence.estimators import estimator_names

from .signals import BASELINE_SIGNALS, estimator_entry, signals

#: ``<rate method>-as-<method>``: a rate-matched method keeping the fraction another method kept (:func:`get_method`).
MATCH_SEP = "-as-"
POLICIES = ("all", "threshold", "top_k", "bottom_k", "greats", "random", "loss_threshold", "oracle", "rank_sum")
RATE_POLICIES = ("top_k", "bottom_k", "greats", "random", "rank_sum")


@dataclass(frozen=True)
class Method:
    """``signal``: what is scored (see ``signals``); ``policy``: how the keep mask is chosen from it."""

    name: str
    signal: str
    policy: str
    threshold: float = 0.0
    keep_fraction: float | None = None
    ramp: bool = False  # keep fraction set per epoch by a drop-rate schedule (small-loss), not rate-matched
    match: str | None = None  # rate-matched to this threshold method's kept fraction (``<name>-as-<match>``); None:
    # the experiment's default match

    def __post_init__(self) -> None:
        if self.signal not in signals():
            raise InvalidArgumentError(f"{self.name}: unknown signal {self.signal!r}; choose from {signals()}")
        if self.policy not in POLICIES:
            raise InvalidArgumentError(f"{self.name}: unknown policy {self.policy!r}; choose from {POLICIES}")
        if self.policy in ("threshold", "greats", "rank_sum") and estimator_entry(self.signal) is None:
            raise InvalidArgumentError(f"{self.name}: policy {self.policy!r} needs an influence estimator, got {self.signal!r}")
        if self.policy in ("loss_threshold", "oracle") and self.signal != "loss":
            raise InvalidArgumentError(f"{self.name}: policy {self.policy!r} needs the 'loss' signal, got {self.signal!r}")
        if self.ramp and self.policy not in RATE_POLICIES:
            raise InvalidArgumentError(f"{self.name}: a ramped schedule needs a rate policy {RATE_POLICIES}")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise InvalidArgumentError(f"{self.name}: keep_fraction must be in (0, 1], got {self.keep_fraction}")

    @property
    def needs_reference(self) -> bool:
        """Scores against a reference batch (influence estimators, the loss threshold)."""
        return estimator_entry(self.signal) is not None or self.policy == "loss_threshold"

    @property
    def sequence_only(self) -> bool:
        """Its estimator is meaningful only for token-sequence outputs (``Capabilities.sequence_only``)."""
        entry = estimator_entry(self.signal)
        return entry is not None and entry.caps.sequence_only

    @property
    def needs_fraction(self) -> bool:
        """A keep fraction must be set before the method can select."""
        return self.policy in RATE_POLICIES

    @property
    def rate_matched(self) -> bool:
        """The experiment gives it the matched method's kept fraction (rate policies without a schedule)."""
        return self.needs_fraction and not self.ramp

    def with_fraction(self, keep_fraction: float) -> "Method":
        """This method keeping ``keep_fraction`` of each batch (rate policies)."""
        return replace(self, keep_fraction=keep_fraction)


VARIANTS = (  # the top-k and GREATS forms of the estimators that have them
    Method("lai-topk", "lai", "top_k"),
    Method("ghost-topk", "ghost", "top_k"),
    Method("lai-greats", "lai", "greats"),
    Method("greats", "ghost", "greats"),
    Method("loss+lai", "lai", "rank_sum", match="lai"),  # the combined rank keeps what its estimator keeps
    Method("loss+lai-last", "lai-last", "rank_sum", match="lai-last"),
)
BASELINES = (
    Method("random", "random", "random"),
    Method("small-loss", "loss", "bottom_k", ramp=True),
    Method("small-loss-est", "loss", "bottom_k", ramp=True),
    Method("small-loss-fixed", "loss", "bottom_k"),
    Method("loss-threshold", "loss", "loss_threshold"),
    Method("oracle", "loss", "oracle"),
    Method("large-grad", "gradnorm", "top_k"),
)


def method_table() -> dict[str, Method]:
    """name -> Method: ``vanilla``, one "keep score >= 0" method per registered influence estimator (registration
    order), one rate-matched top-k method per registered ranking (``Capabilities.influence`` False: its sign means
    nothing) that is not a baseline signal already, the variants of the estimators registered, then the
    baselines."""
    names = estimator_names(influence=True)
    rankings = [n for n in estimator_names(influence=False) if n not in BASELINE_SIGNALS]
    table = [Method("vanilla", "none", "all"), *(Method(n, n, "threshold") for n in names),
             *(Method(n, n, "top_k") for n in rankings), *(m for m in VARIANTS if m.signal in names), *BASELINES]
    return {m.name: m for m in table}


class _Methods(Mapping):
    """The live method table: :func:`method_table` read at every access."""

    def __getitem__(self, name: str) -> Method:
        return method_table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(method_table())

    def __len__(self) -> int:
        return len(method_table())

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


METHODS: Mapping[str, Method] = _Methods()


def get_method(method: str | Method, keep_fraction: float | None = None) -> Method:
    """A registered method by name (or a Method as is), with ``keep_fraction`` set when given.

    ``<rate method>-as-<method>`` (``random-as-lai-last``) is the rate-matched method ``<rate method>`` keeping the
    fraction that ``<method>``, a method that chooses its own kept fraction, kept at the same seed."""
    if isinstance(method, str):
        table = method_table()
        base, _, match = method.partition(MATCH_SEP)
        if base not in table:
            raise InvalidArgumentError(f"unknown method {method!r}; choose from {sorted(table)}")
        method = table[base]
        if match:
            rated = sorted(n for n, m in table.items() if m.rate_matched)
            own = sorted(n for n, m in table.items() if not m.rate_matched)
            if not method.rate_matched:
                raise InvalidArgumentError(f"{method.name!r}: only a rate-matched method ({', '.join(rated)}) "
                                           "takes '-as-<method>'")
            if match not in own:
                raise InvalidArgumentError(f"{base}{MATCH_SEP}{match}: {match!r} must be a method that chooses its own kept "
                                           f"fraction, one of {own}")
            method = replace(method, name=f"{base}{MATCH_SEP}{match}", match=match)
    return method.with_fraction(keep_fraction) if keep_fraction is not None else method


def ramped_drop_rate(epoch: int, tau: float, ramp_epochs: int) -> float:
    """Co-teaching's drop-rate schedule: min(tau * epoch / ramp_epochs, tau) (epoch 0-based; ramp_epochs 0 = tau
    from the start)."""
    if not 0.0 <= tau < 1.0:
        raise InvalidArgumentError(f"drop rate tau must be in [0, 1), got {tau}")
    if epoch < 0 or ramp_epochs < 0:
        raise InvalidArgumentError(f"epoch and ramp_epochs must be >= 0, got {epoch}, {ramp_epochs}")
    return tau if ramp_epochs == 0 else min(tau * epoch / ramp_epochs, tau)
