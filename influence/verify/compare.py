"""The numeric checks: factored gradients against autograd's, screened on random rank-1 projections
(``influence.projection``) and compared in full where the screen flags a block; tolerances in the package docs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from ..capture import Capture, Plan
from ..factors import Block, oriented
from ..projection import bilinear, directions, factored, pack, projected, projectors
from .settings import DEFAULT, Verification


def _tol(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps ** 0.5


def _screen_tol(dtype: torch.dtype, settings: Verification = DEFAULT) -> float:
    eps = torch.finfo(dtype).eps
    return min(eps ** 0.5, settings.screen_eps * eps)


def _directions_for(dtype: torch.dtype, settings: Verification = DEFAULT) -> int:
    """Directions per block: 1 where the screening tolerance is far below sqrt(eps) (float64: 2.3e-13 against
    1.5e-8), 2 in lower precisions (float32: 1.2e-4 against 3.5e-4), so that no miss is likelier than with two
    directions at sqrt(eps); each direction costs one more pass over the factors."""
    if settings.directions is not None:
        return settings.directions
    return 1 if _screen_tol(dtype, settings) < 1e-3 * torch.finfo(dtype).eps ** 0.5 else 2


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


def sum_check(blocks: dict[Any, Block], cap: Capture, pl: Plan, k: int | None = None,
              settings: Verification = DEFAULT) -> dict[int, str]:
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
    return _compare(blocks, cap.param_grads, None, pl, k, settings, "the factored batch gradient (is the parameter used "
                    "outside its module?)", cap.checked)


def _compare(blocks: dict[Any, Block], grads: dict[int, Tensor], weights: Tensor | None, pl: Plan, k: int | None,
             settings: Verification,
             what: str, checked: Checked | None) -> dict[int, str]:
    """``sum_check`` of sum_i w_i G_i (``weights`` [n], default ones) against ``grads``, autograd's gradient of
    sum_i w_i l_i; the blocks that pass go into ``checked`` when given."""
    if not grads:
        return {}
    dtype = next(iter(grads.values())).dtype
    k = _directions_for(dtype, settings) if k is None else k
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
        left, right, _ = oriented(block.segments[0])
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
        far = ((fact - auto).abs() > _screen_tol(dtype, settings) * (mag + auto.abs())).tolist()
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


def probe_check(blocks: dict[Any, Block], cap: Capture, pl: Plan, settings: Verification = DEFAULT
                ) -> dict[int, str]:
    """{param id: reason} for parameters whose factored per-sample gradients, weighted by the probe's random
    weights w, differ from autograd's gradient of sum_i w_i l_i (``capture_backward``'s ``probe``). Where the
    batch sums agree (``sum_check``) but a sample's factored gradient is not its own (a non-batch leading
    dimension equal to the batch size, samples whose losses depend on each other), the weighted sums differ
    with probability 1."""
    out: dict[int, str] = {}
    for weights, grads in cap.probe:
        out.update(_compare(blocks, grads, weights, pl, None, settings, "the factored batch gradient, with the samples "
                            "weighted at random, (is the parameter used outside its module, or a non-batch "
                            "dimension equal to the batch size?)", None))
    return out


def probe_weights(n: int, device: torch.device) -> Tensor:
    """The probe's sample weights w [n] (float64): standard normal from a fixed seed (reproducible verdicts)."""
    return torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(device)
