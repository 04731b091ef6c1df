"""Verified captures: capture, factor and check a batch, with the verdict of its signature cached; and the verdict
alone for LAI, which runs no backward of its own."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from ..batch import Batch, LossFn, take
from ..capture import Capture, Plan, capture_backward, factor_blocks
from ..coupling import check_independent
from ..factors import Block
from .compare import probe_check, probe_weights, sum_check
from .settings import DEFAULT, Verification
from .signature import cached, signature, store

Routed = dict[int, tuple[str, str]]  # param id -> (kind, reason)

_PROBES = [0]


def probe_count() -> int:
    """How many per-sample probes (first captures of a signature) have run in this process (for tests and
    benchmarks)."""
    return _PROBES[0]


def verified_capture(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str,
                     routed: Routed, check: bool | str | None = None, settings: Verification = DEFAULT
                     ) -> tuple[Capture, dict[Any, Block], Routed]:
    """Capture ``batch`` (forward + truncated backward), build the blocks of every parameter not in ``routed``
    and verify them. Returns (capture, blocks, new failures not yet in ``routed``); the caller re-runs with the
    failures routed. When the verdict is cached, ``check`` says how: ``True`` (default) the numeric sum check,
    ``"paths"`` the graph check with the numeric one for what it does not explain, ``False`` none (the probe
    and the full numeric check still run when the verdict is not cached). ``settings``: tolerances, directions and
    whether the per-call checks run at all (``Verification``)."""
    check = True if check is None else check
    paths = check == "paths"
    check = bool(check) and settings.sum_check
    sig = signature(model, batch)
    verdict = cached(model, sig)
    probe = verdict is None
    name_to_id = {v: k for k, v in pl.names.items()}
    failures: dict[int, str] = {}
    if not probe:
        failures.update({name_to_id[nm]: why for nm, why in verdict.items() if nm in name_to_id})
    known = set(failures)
    if probe:
        params = pl.scored_params()
        _PROBES[0] += 1
    else:
        params = pl.scored_params(set(routed) | known) if check else []
    weights = probe_weights(n, params[0].device) if probe and n > 1 and params else None
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, where, params, weights, pl.rules,
                           paths=pl.factoring() if paths and not probe else None)
    if probe:  # a new signature: the samples must be independent (else no per-sample gradient exists)
        check_independent(model, loss_fn, batch, n, where, base=(cap.f, cap.losses))
        blocks, failed = factor_blocks(cap, pl, pl.context())
        failures.update(failed)
        for k, why in {**probe_check(blocks, cap, pl, settings), **sum_check(blocks, cap, pl, None, settings)}.items():
            failures.setdefault(k, why)
        store(model, sig, {pl.names[k]: v for k, v in failures.items()})
    excluded = frozenset(routed) | frozenset(failures)
    if not probe or excluded != frozenset(pl.routed):
        cap.checked.clear()  # checked on other blocks than the ones returned
        blocks, failed = factor_blocks(cap, pl, pl.context(excluded))
        failures.update(failed)
        if not probe and check:
            failures.update(sum_check(blocks, cap, pl, None, settings))
        if not probe and set(failures) - known:
            store(model, sig, {**verdict, **{pl.names[k]: v for k, v in failures.items()}})
    if paths:  # the reference side sums the factors on every call (not autograd's sums on some): numbers that do
        cap.checked.clear()  # not depend on which call of a signature came first (a sharded run equals one process)
    new = {k: ("verify", why) for k, why in failures.items() if k not in routed}
    return cap, blocks, new


class Verified(NamedTuple):
    """A verified capture: the capture, the blocks of the parameters not routed, and the parameters newly found
    unfactorable ({param id: ("verify", reason)}, not yet in the ``routed`` it was given)."""

    cap: Capture
    blocks: dict[Any, Block]
    new: Routed


class Verifier:
    """The verification of one model's captures under explicit ``settings`` (Ghost's backend holds one; verdicts
    are cached per model and signature, see ``influence.verify.signature``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, pl: Plan, settings: Verification = DEFAULT) -> None:
        self.model, self.loss_fn, self.pl, self.settings = model, loss_fn, pl, settings

    def check_for(self, reference: bool) -> bool | str:
        """How a capture is checked once its signature's verdict is cached: a reference capture (or a training
        batch scored against itself) always, a training capture unless ``mode="reference"``; ``"paths"`` on the
        graph first."""
        if self.settings.mode == "paths":
            return "paths"
        return self.settings.mode == "every" or reference

    def capture(self, batch: Batch, n: int, where: str, routed: Routed, reference: bool) -> Verified:
        """``verified_capture`` of ``batch`` under these settings."""
        return Verified(*verified_capture(self.model, self.loss_fn, batch, self.pl, n, where, routed,
                                          check=self.check_for(reference), settings=self.settings))


def verdict_for(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str) -> Routed:
    """The cached verdict for ``batch``'s signature as routed parameters, computing it with one verification
    capture when absent (LAI's path: it runs no backward of its own). The verification runs on the smallest
    leading slice of the batch that has the same signature (``signature``: the verdict does not depend on the
    batch size, only on the size pattern), so a first call costs a forward and backward of a few samples."""
    sig = signature(model, batch)
    verdict = cached(model, sig)
    if verdict is None:
        sub, m = _smallest_alike(model, batch, n, sig)
        _, _, new = verified_capture(model, loss_fn, sub, pl, m, where, dict(pl.routed))  # caches it under sig
        return new
    return _as_routed(verdict, pl)


def _smallest_alike(model: nn.Module, batch: Batch, n: int, sig: tuple, most: int = 8) -> tuple[Batch, int]:
    """(the first m samples of ``batch``, m) for the smallest m >= 2 (at most ``most``) whose slice has signature
    ``sig``; the whole batch when none has."""
    for m in range(2, min(n, most + 1)):
        sub = take(batch, slice(0, m))
        if signature(model, sub) == sig:
            return sub, m
    return batch, n


def _as_routed(verdict: dict[str, str], pl: Plan) -> Routed:
    if not verdict:
        return {}
    name_to_id = {v: k for k, v in pl.names.items()}
    return {name_to_id[nm]: ("verify", why) for nm, why in verdict.items() if nm in name_to_id}
