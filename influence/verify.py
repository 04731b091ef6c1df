"""The capture verifies itself: factored per-sample gradients are checked against autograd on every call.

* Sum check (every Ghost capture): the factored gradients summed over samples (``Block.matrix()``, unpacked)
  must equal autograd's gradient of sum_i l_i, taken in the same ``autograd.grad`` call as the layer-output
  gradients. A parameter used where the factorisation does not see it (read outside its module, a
  parametrization, attention code calling ``F.linear`` on a submodule's weight) fails here.
* Shape check (``influence.capture``): every recorded call has the batch as its leading dimension.
* Per-sample probe (first call per model and input signature): the factored gradients of two samples (the
  first and the last) against autograd's gradients of their own losses, from the same batched forward. It
  catches what sums and shapes cannot: a non-batch leading dimension that happens to equal n.

The verdict (parameters that failed, with the reason) is cached per model (weakly) and signature: shapes and
dtypes of the batch leaves, train/eval flags, which parameters are trainable, and the registry version. LAI,
which runs no backward, reads it (computing it with one verification capture when absent).
Tolerance, per parameter: ||factored - autograd|| <= sqrt(eps) * (max of the two norms + 1e-2 * the norm of
all checked gradients), eps of the parameters' dtype.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .batch import Batch, LossFn
from .capture import Capture, Plan, capture_backward, factor_blocks
from .factors import Block
from .layers import registry_version

Routed = dict[int, tuple[str, str]]  # param id -> (kind, reason)

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, str]]]" = weakref.WeakKeyDictionary()
PROBES = [0]  # number of probes run (observable by tests and benchmarks)


def signature(model: nn.Module, batch: Batch) -> tuple:
    """What the verdict depends on besides the model object: the batch's structure, shapes and dtypes, the
    modules' train/eval flags, the trainable parameters and the registry version."""
    leaves, spec = tree_flatten(batch)
    shapes = tuple((tuple(x.shape), x.dtype) if isinstance(x, Tensor) else repr(x) for x in leaves)
    flags = tuple(m.training for m in model.modules())
    params = tuple((name, p.requires_grad, p.dtype) for name, p in model.named_parameters())
    return registry_version(), str(spec), shapes, flags, params


def cached(model: nn.Module, sig: tuple) -> dict[str, str] | None:
    """The cached verdict {parameter name: why it is not factorable} for ``sig``, or None."""
    return _CACHE.get(model, {}).get(sig)


def store(model: nn.Module, sig: tuple, failures: dict[str, str]) -> None:
    _CACHE.setdefault(model, {})[sig] = dict(failures)


def clear(model: nn.Module | None = None) -> None:
    """Forget cached verdicts (of one model, or of all)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)


def _tol(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps ** 0.5


def _norm(ts: list[Tensor]) -> float:
    return float(torch.sqrt(sum((t.detach().double() ** 2).sum() for t in ts))) if ts else 0.0


def _mismatches(blocks: dict[Any, Block], expected: dict[int, Tensor], pl: Plan,
                sample: int | None, what: str) -> dict[int, str]:
    """Blocks (summed over samples, or of one ``sample``) whose gradients differ from ``expected`` autograd
    gradients; parameters expected but covered by no block must have a zero gradient."""
    if not expected:
        return {}
    scale = _norm(list(expected.values()))
    tol = _tol(next(iter(expected.values())).dtype)
    out: dict[int, str] = {}
    covered: set[int] = set()

    def compare(pids: list[int], got: list[Tensor]) -> None:
        for k, a in zip(pids, got):
            b = expected[k]
            diff = _norm([a.to(b.dtype) - b])
            if diff > tol * (max(_norm([a]), _norm([b])) + 1e-2 * scale):
                rel = diff / max(_norm([b]), 1e-300)
                out[k] = f"{pl.names.get(k, '?')}: {what} differs from autograd by {rel:.2g} (relative)"

    for block in blocks.values():
        pids = [id(p) for p in block.params]
        covered.update(pids)
        part = block if sample is None else block.rows(slice(sample, sample + 1))
        compare(pids, block.unpack(part.matrix()))
    for k, v in expected.items():
        if k not in covered:
            compare([k], [torch.zeros_like(v)])
    return out


def sum_check(blocks: dict[Any, Block], cap: Capture, pl: Plan) -> dict[int, str]:
    """{param id: reason} for parameters whose factored batch gradient differs from autograd's."""
    return _mismatches(blocks, cap.param_grads, pl, None,
                       "the factored batch gradient (is the parameter used outside its module?)")


def probe_check(blocks: dict[Any, Block], cap: Capture, pl: Plan) -> dict[int, str]:
    """{param id: reason} for parameters whose factored per-sample gradient differs from autograd's on a probe."""
    out: dict[int, str] = {}
    for i, grads in cap.probe:
        out.update(_mismatches(blocks, grads, pl, i, f"the factored gradient of sample {i} (is a non-batch "
                                                      "dimension equal to the batch size?)"))
    return out


def verified_capture(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str,
                     routed: Routed, check: bool = True) -> tuple[Capture, dict[Any, Block], Routed]:
    """Capture ``batch`` (forward + truncated backward), build the blocks of every parameter not in ``routed``
    and verify them. Returns (capture, blocks, new failures not yet in ``routed``); the caller re-runs with the
    failures routed. ``check=False`` skips the sum check when the verdict is cached (the probe still runs when
    it is not)."""
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
        PROBES[0] += 1
    else:
        params = pl.scored_params(set(routed) | known) if check else []
    samples = sorted({0, n - 1}) if probe and n > 1 else []
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, where, params, samples)
    if probe:
        blocks, failed = factor_blocks(cap, pl, pl.context())
        failures.update(failed)
        for k, why in {**probe_check(blocks, cap, pl), **sum_check(blocks, cap, pl)}.items():
            failures.setdefault(k, why)
        store(model, sig, {pl.names[k]: v for k, v in failures.items()})
    excluded = frozenset(routed) | frozenset(failures)
    if not probe or excluded != frozenset(pl.routed):
        blocks, failed = factor_blocks(cap, pl, pl.context(excluded))
        failures.update(failed)
        if not probe and check:
            failures.update(sum_check(blocks, cap, pl))
        if not probe and set(failures) - known:
            store(model, sig, {**verdict, **{pl.names[k]: v for k, v in failures.items()}})
    new = {k: ("verify", why) for k, why in failures.items() if k not in routed}
    return cap, blocks, new


def verdict_for(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str) -> Routed:
    """The cached verdict for ``batch``'s signature as routed parameters, computing it with one verification
    capture when absent (LAI's path: it runs no backward of its own)."""
    sig = signature(model, batch)
    verdict = cached(model, sig)
    if verdict is None:
        _, _, new = verified_capture(model, loss_fn, batch, pl, n, where, dict(pl.routed))
        return new
    return known_failures(model, batch, pl) or {}


def known_failures(model: nn.Module, batch: Batch, pl: Plan) -> Routed | None:
    """The cached verdict for ``batch``'s signature as routed parameters (None when not cached)."""
    verdict = cached(model, signature(model, batch))
    if verdict is None:
        return None
    name_to_id = {v: k for k, v in pl.names.items()}
    return {name_to_id[nm]: ("verify", why) for nm, why in verdict.items() if nm in name_to_id}
