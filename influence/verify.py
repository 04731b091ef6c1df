"""The capture verifies itself: factored per-sample gradients are checked against autograd on every call.

* Graph check (``influence.paths``; Ghost's default ``verify="paths"``, every capture, reference and training,
  once the signature's verdict is cached): every path from the loss to a factored parameter in autograd's
  graph runs through one of its layer calls. No gradient is computed; the parameters it does not explain (and
  the others of their layers) get the numeric sum check on that capture.
* Sum check (the first capture of each signature; every capture with ``verify="every"``, the reference
  captures with ``verify="reference"``): the factored
  gradients summed over samples must equal autograd's gradient of sum_i l_i, taken in the same
  ``autograd.grad`` call as the layer-output gradients (compared on a random rank-1 projection per block,
  ``influence.projection``, so no [p, q] product is formed; a block that fails is compared in full). A
  parameter used where the factorisation does not see it (read outside its module, a parametrization,
  attention code calling ``F.linear`` on a submodule's weight) fails here, also when the outside use depends on
  the data and shows up only in some training batch long after the verdict was cached (so the training
  capture is checked too: the factored update ``weighted_gradient`` builds from it is then right as well).
  Its cost is autograd's weight gradients of each captured batch (what the check cannot do without: one
  [p, n T] x [n T, q] product per block, reused where the reference side needs the block's sum anyway) plus
  O(n T (p + q)) per block (``python -m validation.bench.verify_cost`` measures both).
* Shape check (``influence.capture``): every recorded call has the batch as its leading dimension.
* Per-sample probe (first call per model and input signature, in place of its sum check): autograd's gradient
  of sum_i w_i l_i, with random weights w, against the factored sum_i w_i G_i (a second backward; the first one
  then computes no weight gradient), screened by the same projections as the sum check. It catches what the sum
  check catches and what sums and shapes cannot: a non-batch leading dimension that happens to equal n, a
  sample whose factored gradient is another's: where any per-sample difference is nonzero, the weighted sums
  differ with probability 1.

The verdict (parameters that failed, with the reason) is cached per model (weakly) and signature: the structure,
dtypes, ranks and size pattern of the batch leaves (not the sizes: a verdict carries over to other batch sizes and
sequence lengths, see ``signature``), train/eval flags, which parameters are trainable, and the registry version.
LAI, which runs no backward, reads it (computing it with one verification capture of a 2-sample slice when
absent).

Tolerances (eps of the parameters' dtype). The full comparisons (probe, and a block whose projection failed)
require ||factored - autograd|| <= sqrt(eps) * (max of the two norms + 1e-2 * the norm of all checked
gradients), per parameter; they, not the projection, decide what is routed. The projection screens for them: with the terms
t_r = (L_r . v)(R_r . u) over samples and tokens r, it flags |sum_r t_r - v^T M u| > tol * (sum_r |t_r| +
|v^T M u|), tol = min(sqrt(eps), 1024 eps) (1.2e-4 in float32, 2.3e-13 in float64). Rounding alone stays far
below: the largest ratio measured over the benchmark workloads and every zoo family is 31 eps (float32 and
float64), so a flag that is rounding only costs a full comparison (which then passes), never a wrong number.
A true difference D = factored - autograd is missed only when |v^T D u| (standard normal v, u: standard
deviation ||D||_F) falls below the flagging threshold tau = tol * (sum |t_r| + |v^T M u|): with probability at
most about (2x / pi) (ln(2 / x) + 0.42), x = tau / sigma_1(D) (exact for a rank-1 D), which goes to 0 with x:
any nonzero difference is detected with probability 1 up to the tolerance. The directions are drawn once per
shape (reproducible verdicts); k of them per block raise the miss probability to the power k: k = 1 in float64
(a tolerance 6.5e4 times below sqrt(eps): misses rarer than with two directions at sqrt(eps) wherever those miss
with probability above 1e-9), 2 in float32 and below (a tolerance 2.8 times below sqrt(eps): rarer everywhere).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .batch import Batch, LossFn, take
from .checks import tensor_pair
from .capture import Capture, Plan, capture_backward, factor_blocks
from .coupling import check_independent
from .factors import Block, _oriented
from .layers import registry_version
from .projection import bilinear, directions, factored, pack, projected, projectors

Routed = dict[int, tuple[str, str]]  # param id -> (kind, reason)

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, str]]] = weakref.WeakKeyDictionary()
PROBES = [0]  # number of probes run (observable by tests and benchmarks)
SUM_CHECK = True  # the per-call sum check; ``validation.bench.verify_cost`` turns it off to measure what it costs
DIRECTIONS: int | None = None  # rank-1 directions per block in the sum check (None: ``_directions_for``)
SCREEN_EPS = 1024  # the projection's tolerance in units of eps (capped at sqrt(eps)); see the module docstring


VERIFY = ("paths", "every", "reference")  # how Ghost checks its captures once a signature's verdict is cached


def check_verify(verify: str) -> str:
    """``verify`` if it is one of ``VERIFY``, else ValueError naming the choices. ``"paths"`` (default): every
    capture, reference and training, on the graph (``influence.paths``), with the numeric sum check for the
    parameters the graph does not explain; ``"every"``: the numeric sum check on every capture; ``"reference"``:
    the numeric sum check on the reference captures only."""
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
    return verify


def signature(model: nn.Module, batch: Batch) -> tuple:
    """What the verdict depends on besides the model object: the batch's structure, each leaf's dtype and rank and
    the size pattern of its dimensions (``size_pattern``, not the sizes themselves), the modules' classes and
    train/eval flags, the trainable parameters and the registry version.

    A verdict carries over to another batch size or sequence length (a ragged last batch, dynamically padded text)
    because what the verification catches does not depend on the sizes themselves: a parameter used outside its
    module, a rule that does not match a module's forward, a layer whose leading dimension is not the batch. What
    sizes do change is kept in the pattern: which dimensions are 1 (broadcasting; a ``[1, T]`` call), which equal
    each other or a parameter's dimension (a non-batch leading dimension equal to the batch size passes the shape
    check, so such a batch is probed on its own). What it cannot see is control flow that depends on the sizes or
    values (a branch taken only for long sequences); Ghost's per-capture graph check (``verify="paths"``) covers
    that for Ghost, LAI relies on the verdict."""
    state = model_state(model)
    pair = tensor_pair(batch)
    if pair is not None:
        leaves, structure = list(pair), "pair"
    else:
        leaves, spec = tree_flatten(batch)
        structure = str(spec)
    return registry_version(), structure, size_pattern(leaves, state[-1]), state[:-1]


def size_pattern(leaves: list[Any], param_dims: frozenset[int]) -> tuple:
    """Per leaf: (dtype, one label per dimension) for a tensor, ``repr`` otherwise. A dimension's label is the
    position (in order over all leaves) of the first dimension of the same size, with whether its size is 1 and
    whether it equals a dimension of a parameter of the model: batches with the same labels differ only in sizes
    that no two dimensions share."""
    first: dict[int, int] = {}
    out: list[Any] = []
    k = 0
    for x in leaves:
        if not isinstance(x, Tensor):
            out.append(repr(x))
            continue
        labels = []
        for size in x.shape:
            labels.append((first.setdefault(size, k), size == 1, size in param_dims))
            k += 1
        out.append((x.dtype, tuple(labels)))
    return tuple(out)


def model_state(model: nn.Module) -> tuple:
    """Every module's class and train/eval flag and every parameter's name, ``requires_grad`` and dtype, in
    ``named_modules`` order (one walk over the module tree, without building the modules' dotted names); last, the
    set of the parameters' dimension sizes (``size_pattern``)."""
    state: list[Any] = []
    dims: set[int] = set()
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        state.append((type(m), m.training))
        for k, p in m._parameters.items():
            if p is not None:
                state.append((k, p.requires_grad, p.dtype))
                dims.update(p.shape)
        stack += [c for c in reversed(m._modules.values()) if c is not None]
    state.append(frozenset(dims))
    return tuple(state)


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


def _screen_tol(dtype: torch.dtype) -> float:
    eps = torch.finfo(dtype).eps
    return min(eps ** 0.5, SCREEN_EPS * eps)


def _directions_for(dtype: torch.dtype) -> int:
    """Directions per block: 1 where the screening tolerance is far below sqrt(eps) (float64: 2.3e-13 against
    1.5e-8), 2 in lower precisions (float32: 1.2e-4 against 3.5e-4), so that no miss is likelier than with two
    directions at sqrt(eps); each direction costs one more pass over the factors."""
    if DIRECTIONS is not None:
        return DIRECTIONS
    return 1 if _screen_tol(dtype) < 1e-3 * torch.finfo(dtype).eps ** 0.5 else 2


def _norm(ts: list[Tensor]) -> float:
    """The 2-norm of all entries of ``ts`` (each reduced in its own dtype, without a widened copy)."""
    if not ts:
        return 0.0
    norms = [float(torch.linalg.vector_norm(t.detach())) for t in ts]
    return sum(x * x for x in norms) ** 0.5


def _mismatches(blocks: dict[Any, Block], expected: dict[int, Tensor], pl: Plan,
                weights: Tensor | None, what: str) -> dict[int, str]:
    """Blocks (summed over samples, with ``weights`` [n] when given) whose gradients differ from ``expected``
    autograd gradients; parameters expected but covered by no block must have a zero gradient."""
    if not expected:
        return {}
    scale = _norm(list(expected.values()))
    tol = _tol(next(iter(expected.values())).dtype)
    out: dict[int, str] = {}
    covered: set[int] = set()

    def compare(pids: list[int], got: list[Tensor]) -> None:
        for k, a in zip(pids, got):
            b = expected[k]
            diff, na, nb = _norm([a.to(b.dtype) - b]), _norm([a]), _norm([b])
            if diff > tol * (max(na, nb) + 1e-2 * scale):
                rel = diff / max(nb, 1e-300)
                out[k] = f"{pl.names.get(k, '?')}: {what} differs from autograd by {rel:.2g} (relative)"

    for block in blocks.values():
        pids = [id(p) for p in block.params]
        covered.update(pids)
        compare(pids, block.unpack(block.matrix(weights)))
    for k, v in expected.items():
        if k not in covered:
            compare([k], [torch.zeros_like(v)])
    return out


class Checked(MutableMapping):
    """``Capture.checked``: block key -> autograd's gradient of sum_i l_i laid out as the block's [G, p, q] matrix,
    for the blocks that passed the sum check. A block checked without packing (``projection.projectors``) is packed
    when first read, so the matrix is formed only where a reference side uses it."""

    def __init__(self, items: Mapping[Any, Any] = ()) -> None:
        self._items: dict[Any, Any] = dict(items)

    def __getitem__(self, key: Any) -> Tensor:
        value = self._items[key]
        if not isinstance(value, Tensor):
            value = self._items[key] = value()
        return value

    def __setitem__(self, key: Any, value: Tensor | Callable[[], Tensor]) -> None:
        self._items[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._items[key]

    def __contains__(self, key: object) -> bool:  # without packing (Mapping's would read the value)
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def sum_check(blocks: dict[Any, Block], cap: Capture, pl: Plan, k: int | None = None) -> dict[int, str]:
    """{param id: reason} for parameters whose factored batch gradient differs from autograd's.

    Cheap form (``influence.projection``): each block is compared on ``k`` (default ``_directions_for``) random
    rank-1 directions v u^T of its [G, p, q] matrix space: v^T (sum_i G_i) u from the factors (cost
    n * T * (p + q), no [p, q] product) against v^T M u with M autograd's gradient in that space (each
    parameter's gradient projected where it lies, or packed into M for layouts that are not rectangles), within
    the screening tolerance of the module docstring; all blocks are compared at once. A block that fails is
    compared in full, which names its parameters (or passes them). A parameter covered by no block must have a
    zero autograd gradient. Every block that passes goes into ``cap.checked`` (a reference side in contracted
    form uses autograd's matrix as the block's sum over samples, so the check's weight gradients are not paid
    twice; it is packed when read)."""
    if not isinstance(cap.checked, Checked):
        cap.checked = Checked(cap.checked)
    return _compare(blocks, cap.param_grads, None, pl, k, "the factored batch gradient (is the parameter used "
                    "outside its module?)", cap.checked)


def _compare(blocks: dict[Any, Block], grads: dict[int, Tensor], weights: Tensor | None, pl: Plan, k: int | None,
             what: str, checked: Checked | None) -> dict[int, str]:
    """``sum_check`` of sum_i w_i G_i (``weights`` [n], default ones) against ``grads``, autograd's gradient of
    sum_i w_i l_i; the blocks that pass go into ``checked`` when given."""
    if not grads:
        return {}
    dtype = next(iter(grads.values())).dtype
    k = _directions_for(dtype) if k is None else k
    out: dict[int, str] = {}
    covered: set[int] = set()
    keys, entries, facts, mags, autos = [], [], [], [], []
    for key, block in blocks.items():
        pids = [id(p) for p in block.params]
        covered.update(pids)
        have = sum(pid in grads for pid in pids)
        if have < len(pids):  # a capture that took the gradients of some layers only (``capture_backward(paths=...)``)
            if have:
                raise RuntimeError(f"{block.name}: autograd's gradient of part of a block; compare blocks whole")
            continue
        left, right, _ = _oriented(block.segments[0])
        shape = (left.groups, left.dim, right.dim)
        gs = [grads[pid] for pid in pids]
        device = gs[0].device
        dirs = directions(shape, k, dtype, device)
        projs = projectors(block, shape, k, dtype, device) if all(g.dtype == dtype for g in gs) else None
        if projs is None:
            m = pack(block, gs, shape, dtype, device)
            autos += [bilinear(d, m) for d in dirs]
        else:
            m = functools.partial(pack, block, gs, shape, dtype, device)
            autos += [projected(pr, gs) for pr in projs]
        fact, mag = factored(block, dirs, weights)
        keys += [key] * len(dirs)
        facts.append(fact)
        mags.append(mag)
        entries.append((key, block, m))
    if keys:
        fact, mag, auto = torch.cat(facts), torch.cat(mags), torch.stack(autos)
        far = ((fact - auto).abs() > _screen_tol(dtype) * (mag + auto.abs())).tolist()
        bad = {key for key, b in zip(keys, far) if b}
        for key, block, m in entries:
            failed = _mismatches({key: block}, {id(p): grads[id(p)] for p in block.params}, pl, weights,
                                 what) if key in bad else {}
            out.update(failed)
            if not failed and checked is not None:  # passed the projection, or the full comparison after a flag
                checked[key] = m  # that was rounding only
    for pid, v in grads.items():
        if pid not in covered and bool((v != 0).any()):
            out[pid] = f"{pl.names.get(pid, '?')}: {what}: autograd finds a gradient the layer calls do not explain"
    return out


def probe_check(blocks: dict[Any, Block], cap: Capture, pl: Plan) -> dict[int, str]:
    """{param id: reason} for parameters whose factored per-sample gradients, weighted by the probe's random
    weights w, differ from autograd's gradient of sum_i w_i l_i (``capture_backward``'s ``probe``). Where the
    batch sums agree (``sum_check``) but a sample's factored gradient is not its own (a non-batch leading
    dimension equal to the batch size, samples whose losses depend on each other), the weighted sums differ
    with probability 1."""
    out: dict[int, str] = {}
    for weights, grads in cap.probe:
        out.update(_compare(blocks, grads, weights, pl, None, "the factored batch gradient, with the samples "
                            "weighted at random, (is the parameter used outside its module, or a non-batch "
                            "dimension equal to the batch size?)", None))
    return out


def probe_weights(n: int, device: torch.device) -> Tensor:
    """The probe's sample weights w [n] (float64): standard normal from a fixed seed (reproducible verdicts)."""
    return torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(device)


def verified_capture(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str,
                     routed: Routed, check: bool | str | None = None) -> tuple[Capture, dict[Any, Block], Routed]:
    """Capture ``batch`` (forward + truncated backward), build the blocks of every parameter not in ``routed``
    and verify them. Returns (capture, blocks, new failures not yet in ``routed``); the caller re-runs with the
    failures routed. When the verdict is cached, ``check`` says how: ``True`` (default) the numeric sum check,
    ``"paths"`` the graph check with the numeric one for what it does not explain, ``False`` none (the probe
    and the full numeric check still run when the verdict is not cached)."""
    check = SUM_CHECK if check is None else check
    paths = check == "paths"
    check = bool(check) and SUM_CHECK
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
    weights = probe_weights(n, params[0].device) if probe and n > 1 and params else None
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, where, params, weights, pl.rules,
                           paths=pl.factoring() if paths and not probe else None)
    if probe:  # a new signature: the samples must be independent (else no per-sample gradient exists)
        check_independent(model, loss_fn, batch, n, where, base=(cap.f, cap.losses))
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
    if paths:  # the reference side sums the factors on every call (not autograd's sums on some): numbers that do
        cap.checked.clear()  # not depend on which call of a signature came first (a sharded run equals one process)
    new = {k: ("verify", why) for k, why in failures.items() if k not in routed}
    return cap, blocks, new


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

