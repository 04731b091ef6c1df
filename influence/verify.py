"""The capture verifies itself: factored per-sample gradients are checked against autograd on every call.

* Sum check (the reference capture of every Ghost call, and every capture of a new signature): the factored
  gradients summed over samples must equal autograd's gradient of sum_i l_i, taken in the same
  ``autograd.grad`` call as the layer-output gradients (compared on random rank-1 projections, so no [p, q]
  product is formed; a block that fails is compared in full). A parameter used where the factorisation does
  not see it (read outside its module, a parametrization, attention code calling ``F.linear`` on a
  submodule's weight) fails here. Its cost is autograd's weight gradients of the reference batch plus
  O(n T (p + q)) per block (``python -m validation.verify_cost`` measures it).
* Shape check (``influence.capture``): every recorded call has the batch as its leading dimension.
* Per-sample probe (first call per model and input signature): the factored gradients of two samples (the
  first and the last) against autograd's gradients of their own losses, from the same batched forward. It
  catches what sums and shapes cannot: a non-batch leading dimension that happens to equal n.

The verdict (parameters that failed, with the reason) is cached per model (weakly) and signature: shapes and
dtypes of the batch leaves, train/eval flags, which parameters are trainable, and the registry version. LAI,
which runs no backward, reads it (computing it with one verification capture when absent).
Tolerance (eps of the parameters' dtype): the per-call sum check compares random rank-1 projections within
sqrt(eps) of the sum of absolute terms; the full comparisons (probe, and naming the parameters of a block that
failed) require ||factored - autograd|| <= sqrt(eps) * (max of the two norms + 1e-2 * the norm of all checked
gradients), per parameter.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .batch import Batch, LossFn
from .capture import Capture, Plan, capture_backward, factor_blocks
from .factors import Block, Index, Patches, Segment, _oriented, rows_times
from .layers import registry_version

Routed = dict[int, tuple[str, str]]  # param id -> (kind, reason)

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, str]]]" = weakref.WeakKeyDictionary()
PROBES = [0]  # number of probes run (observable by tests and benchmarks)
SUM_CHECK = True  # the per-call sum check; ``validation.verify_cost`` turns it off to measure what it costs


def signature(model: nn.Module, batch: Batch) -> tuple:
    """What the verdict depends on besides the model object: the batch's structure, shapes and dtypes, the
    modules' train/eval flags, the trainable parameters and the registry version."""
    leaves, spec = tree_flatten(batch)
    shapes = tuple((tuple(x.shape), x.dtype) if isinstance(x, Tensor) else repr(x) for x in leaves)
    flags, params = [], []
    for prefix, m in model.named_modules():  # one traversal for both (named_parameters would walk it again)
        flags.append(m.training)
        params += [(prefix, name, p.requires_grad, p.dtype) for name, p in m._parameters.items() if p is not None]
    return registry_version(), str(spec), shapes, tuple(flags), tuple(params)


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


def _segment_projection(seg: Segment, vs: Tensor, us: Tensor) -> tuple[Tensor, Tensor]:
    """For k random rank-1 matrices v_k u_k^T (``vs`` [G, p, k], ``us`` [G, q, k], in the oriented matrix space of
    ``segment_matrix``): (sum over samples, tokens and groups of (L . v_k)(R . u_k), and the same of absolute
    values), both [k]. Cost n * T * (p + q) * k: no [p, q] product is formed."""
    left, right, _ = _oriented(seg)
    r = rows_times(right, us)  # [G, n*T, k]
    if isinstance(left, Index):
        ids = left.ids.reshape(-1)
        terms = vs[0][ids.clamp(min=0)] * (ids >= 0).unsqueeze(-1).to(r.dtype) * r[0]
    else:
        terms = rows_times(left, vs) * r
    return terms.sum(tuple(range(terms.dim() - 1))), terms.abs().sum(tuple(range(terms.dim() - 1)))


_PACK: dict[tuple, list[Tensor]] = {}


def _pack_index(block: Block, shape: tuple[int, int, int], device: torch.device) -> list[Tensor]:
    """For each parameter of ``block``, the flat positions of its entries in the block's [G, p, q] matrix
    (``unpack`` is a bijective slicing, so this is its inverse); cached per parameter set and shape."""
    key = (tuple(id(p) for p in block.params), shape, str(device))
    if key not in _PACK:
        if len(_PACK) > 4096:
            _PACK.clear()
        idx = torch.arange(shape[0] * shape[1] * shape[2], device=device).view(shape)
        _PACK[key] = [t.reshape(-1) for t in block.unpack(idx)]
    return _PACK[key]


_DIRECTIONS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _directions(shape: tuple[int, int, int], k: int, dtype: torch.dtype, device: torch.device
                ) -> list[tuple[Tensor, Tensor]]:
    """k random directions per side of a [G, p, q] matrix space: k pairs ([G, p, 1], [G, q, 1]), each contiguous
    (matrix-vector products are several times faster than one skinny [.., k] product), drawn once per shape
    from a fixed seed (the check is against mistakes, not an adversary)."""
    key = (shape, k, dtype, str(device))
    if key not in _DIRECTIONS:
        if len(_DIRECTIONS) > 4096:
            _DIRECTIONS.clear()
        gen = torch.Generator().manual_seed(hash(shape) % (1 << 31))
        _DIRECTIONS[key] = [(torch.randn(shape[0], shape[1], 1, generator=gen).to(device, dtype),
                             torch.randn(shape[0], shape[2], 1, generator=gen).to(device, dtype)) for _ in range(k)]
    return _DIRECTIONS[key]


def _pack(block: Block, grads: list[Tensor], shape: tuple[int, int, int], dtype: torch.dtype,
          device: torch.device) -> Tensor:
    """The parameters' gradients laid out as the block's [G, p, q] matrix (the inverse of ``unpack``): written
    through ``unpack``'s views of the matrix where it returns views, else by the cached index map."""
    m = torch.zeros(shape, dtype=dtype, device=device)
    views = block.unpack(m)
    base = m.untyped_storage().data_ptr()
    if all(v.untyped_storage().data_ptr() == base for v in views):
        for v, g in zip(views, grads):
            v.copy_(g)
        return m
    flat = m.view(-1)
    for pos, g in zip(_pack_index(block, shape, device), grads):
        flat[pos] = g.reshape(-1).to(dtype)
    return m


def sum_check(blocks: dict[Any, Block], cap: Capture, pl: Plan, k: int = 2) -> dict[int, str]:
    """{param id: reason} for parameters whose factored batch gradient differs from autograd's.

    Cheap form: each block is compared on ``k`` random rank-1 directions R = v u^T of its [G, p, q] matrix
    space: v^T (sum_i G_i) u from the factors (cost n * T * (p + q), no [p, q] product) against v^T M u with M
    autograd's gradient packed into that space, within sqrt(eps) of the sum of absolute terms. A block that
    fails is compared in full to name its parameters. A parameter covered by no block must have a zero
    autograd gradient. The packed matrix of every block that passes is kept in ``cap.checked`` (a reference
    side in contracted form uses it as the block's sum over samples, so the check's weight gradients are not
    paid twice)."""
    grads = cap.param_grads
    if not grads:
        return {}
    dtype = next(iter(grads.values())).dtype
    tol = _tol(dtype)
    out: dict[int, str] = {}
    covered: set[int] = set()
    what = "the factored batch gradient (is the parameter used outside its module?)"
    for key, block in blocks.items():
        pids = [id(p) for p in block.params]
        covered.update(pids)
        left, right, _ = _oriented(block.segments[0])
        shape = (left.groups, left.dim, right.dim)
        device = grads[pids[0]].device
        m = _pack(block, [grads[pid] for pid in pids], shape, dtype, device)
        bad = False
        dirs = _directions(shape, k, dtype, device)
        if any(isinstance(f, Patches) for seg in block.segments for f in (seg.left, seg.right)):
            # a convolution costs about the same for 1 or k output channels: project all directions at once
            dirs = [(torch.cat([v for v, _ in dirs], -1), torch.cat([u for _, u in dirs], -1))]
        for vs, us in dirs:
            fact, mag = 0.0, 0.0
            for seg in block.segments:
                f, a = _segment_projection(seg, vs, us)
                fact, mag = fact + f, mag + a
            auto = (vs * torch.bmm(m, us)).sum((0, 1))
            bad = bad or bool(((fact - auto).abs() > tol * (mag + auto.abs())).any())
        if bad:
            out.update(_mismatches({key: block}, {k2: grads[k2] for k2 in pids}, pl, None, what))
        else:
            cap.checked[key] = m
    for pid, v in grads.items():
        if pid not in covered and bool((v != 0).any()):
            out[pid] = f"{pl.names.get(pid, '?')}: {what}: autograd finds a gradient the layer calls do not explain"
    return out


def probe_check(blocks: dict[Any, Block], cap: Capture, pl: Plan) -> dict[int, str]:
    """{param id: reason} for parameters whose factored per-sample gradient differs from autograd's on a probe."""
    out: dict[int, str] = {}
    for i, grads in cap.probe:
        out.update(_mismatches(blocks, grads, pl, i, f"the factored gradient of sample {i} (is a non-batch "
                                                      "dimension equal to the batch size?)"))
    return out


def verified_capture(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str,
                     routed: Routed, check: bool | None = None) -> tuple[Capture, dict[Any, Block], Routed]:
    """Capture ``batch`` (forward + truncated backward), build the blocks of every parameter not in ``routed``
    and verify them. Returns (capture, blocks, new failures not yet in ``routed``); the caller re-runs with the
    failures routed. ``check=False`` skips the sum check when the verdict is cached (the probe still runs when
    it is not)."""
    check = SUM_CHECK if check is None else check
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
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, where, params, samples, pl.rules)
    if probe:
        blocks, failed = factor_blocks(cap, pl, pl.context())
        failures.update(failed)
        for k, why in {**probe_check(blocks, cap, pl), **sum_check(blocks, cap, pl)}.items():
            failures.setdefault(k, why)
        store(model, sig, {pl.names[k]: v for k, v in failures.items()})
    excluded = frozenset(routed) | frozenset(failures)
    if not probe or excluded != frozenset(pl.routed):
        cap.checked.clear()  # checked on other blocks than the ones returned
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
    verdict = cached(model, signature(model, batch))
    if verdict is None:
        _, _, new = verified_capture(model, loss_fn, batch, pl, n, where, dict(pl.routed))
        return new
    return _as_routed(verdict, pl)


def _as_routed(verdict: dict[str, str], pl: Plan) -> Routed:
    if not verdict:
        return {}
    name_to_id = {v: k for k, v in pl.names.items()}
    return {name_to_id[nm]: ("verify", why) for nm, why in verdict.items() if nm in name_to_id}

