"""Random rank-1 projections v^T M u of a block's [G, p, q] gradient matrix, for the capture's sum check
(``influence.verify``): from the block's factors (the sum over samples is never formed) and from autograd's
per-parameter gradients (each projected where it lies in the matrix, so the matrix is not packed).

Cost per block and direction: n * T * (p + q) for the factors (one matrix-vector product per factor) and one
read of the gradients (one matrix-vector product per parameter). The matrix is packed only for layouts that are
not rectangles of a one-group matrix (several groups, an ``unpack`` that copies) and where a reference side
reads it (``pack``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .factors import Block, Dense, Index, Patches, oriented, rows_times


class Side(NamedTuple):
    """One side of a direction: ``full`` [G, d]; for one group also ``flat`` [d], ``head`` [d - 1] and ``last``
    (its final entry as a Python number: the weight of a factor's unstored ones column)."""

    full: Tensor
    flat: Tensor | None
    head: Tensor | None
    last: float


class Direction(NamedTuple):
    """A rank-1 direction v u^T of a [G, p, q] matrix space."""

    v: Side
    u: Side


def _side(w: Tensor) -> Side:
    if w.shape[0] != 1:
        return Side(w, None, None, 0.0)
    return Side(w, w[0], w[0, :-1], float(w[0, -1]))


_DIRECTIONS: dict[tuple, list[Direction]] = {}


def directions(shape: tuple[int, int, int], k: int, dtype: torch.dtype, device: torch.device) -> list[Direction]:
    """``k`` directions of a [G, p, q] space with standard normal v [G, p] and u [G, q], drawn once per shape from a
    fixed seed (the check is against mistakes, not an adversary; its verdict is reproducible)."""
    key = (shape, k, dtype, str(device))
    if key not in _DIRECTIONS:
        if len(_DIRECTIONS) > 4096:
            _DIRECTIONS.clear()
        gen = torch.Generator().manual_seed(hash(shape) % (1 << 31))
        _DIRECTIONS[key] = [Direction(_side(torch.randn(shape[0], shape[1], generator=gen).to(device, dtype)),
                                      _side(torch.randn(shape[0], shape[2], generator=gen).to(device, dtype)))
                            for _ in range(k)]
    return _DIRECTIONS[key]


def _times(f: Dense | Patches, one_group: bool) -> Callable[[Side], Tensor]:
    """``f`` [n, T, G, d] times one vector per group: a function of a direction's side giving [n*T] for one
    group, else [G, n*T, 1] (``rows_times`` with one column; one matrix-vector product per side for a single
    group whose rows are views, read as rows once for all directions)."""
    if not one_group:
        return lambda side: rows_times(f, side.full.unsqueeze(-1))
    if isinstance(f, Dense):
        x = f.data
        n, t, _, d = x.shape
        if n == 1 or t == 1 or x.stride(0) == t * x.stride(1):
            rows = x.reshape(n * t, d)
            if f.ones:
                return lambda side: rows @ side.head + side.last
            return lambda side: rows @ side.flat
    return lambda side: rows_times(f, side.full.unsqueeze(-1)).reshape(-1)


def factored(block: Block, dirs: Sequence[Direction], weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """v^T (sum_i w_i G_i) u from the factors for each direction: the terms t = w_i (L . v)(R . u) over samples,
    tokens, groups and segments (L oriented as in ``segment_matrix``; ``weights`` w [n] default ones) give
    (sum of t, sum of |t|), both [k]."""
    fact = mag = None
    one_group = dirs[0].v.flat is not None
    for seg in block.segments:
        left, right, _ = oriented(seg)
        right_times = _times(right, one_group)
        if isinstance(left, Index):
            ids = left.ids.reshape(-1)
            keep = (ids >= 0).to(dirs[0].v.full.dtype)
            ids = ids.clamp(min=0)
            terms = [d.v.full[0][ids].mul_(keep).mul_(right_times(d.u)) for d in dirs]
        else:
            left_times = _times(left, one_group)
            terms = [left_times(d.v).mul_(right_times(d.u)) for d in dirs]
        t = torch.stack(terms)
        t = t if t.dim() == 2 else t.reshape(len(dirs), -1)
        if weights is not None:  # rows are ordered (group, sample, token)
            n = seg.n
            t = (t.reshape(len(dirs), -1, n, t.shape[1] // n // max(1, left.groups)) *
                 weights.to(t.dtype).view(1, 1, n, 1)).reshape(len(dirs), -1)
        f, a = t.sum(1), torch.linalg.vector_norm(t, 1, dim=1)
        fact, mag = (f, a) if fact is None else (fact + f, mag + a)
    return fact, mag


def _rectangle(view: Tensor, p: int, q: int) -> tuple[Tensor, Tensor, bool] | None:
    """(rows [A], cols [B], cols_first) when a view of a one-group [1, p, q] matrix is a rectangle of it: the
    view read as [A, B] (split between two of its dimensions) has entry (a, b) at matrix[0, rows[a], cols[b]]
    (``cols_first``: read as [B, A], entry (b, a) at matrix[0, rows[a], cols[b]]); None otherwise. Of several
    readings, one with a single entry on the second axis (a vector times a number), else rows first."""
    sizes, strides = list(view.shape), list(view.stride())

    def offsets(dims: range) -> Tensor:
        off = torch.zeros(1, dtype=torch.int64)
        for d in dims:
            off = (off[:, None] + torch.arange(sizes[d]) * strides[d]).reshape(-1)
        return off

    def span(dims: range) -> tuple[int, int]:  # the least and greatest offset, without listing the offsets
        lo = sum(min(0, (sizes[d] - 1) * strides[d]) for d in dims)
        return lo, lo + sum(abs((sizes[d] - 1) * strides[d]) for d in dims)

    base, found = view.storage_offset(), []
    for s in range(len(sizes) + 1):
        head, tail = range(s), range(s, len(sizes))
        for cols_first in (False, True):
            row_dims, col_dims = (tail, head) if cols_first else (head, tail)
            if any(strides[d] % q for d in row_dims if sizes[d] > 1):
                continue
            (r_lo, r_hi), (c_lo, c_hi) = span(row_dims), span(col_dims)
            if base // q + r_lo // q >= 0 and base // q + r_hi // q < p and base % q + c_lo >= 0 \
                    and base % q + c_hi < q:
                a = math.prod(sizes[d] for d in row_dims)
                second = a if cols_first else math.prod(sizes[d] for d in col_dims)
                found.append(((second != 1, cols_first), (row_dims, col_dims, cols_first)))
    if not found:
        return None
    row_dims, col_dims, cols_first = min(found, key=lambda f: f[0])[1]
    return base // q + offsets(row_dims) // q, base % q + offsets(col_dims), cols_first


def _layout(block: Block, shape: tuple[int, int, int]) -> list[tuple[Tensor, Tensor, bool]] | None:
    """Where each parameter of a one-group block lies in its [1, p, q] matrix: the ``_rectangle`` of its
    ``unpack`` view, found on a meta tensor (no memory); None for several groups, an empty parameter or an
    ``unpack`` that copies."""
    if shape[0] != 1:
        return None
    m = torch.empty(shape, device="meta")
    try:
        views = block.unpack(m)
    except Exception:  # noqa: BLE001 - an unpack that cannot run on a meta tensor: pack instead
        return None
    if len(views) != len(block.params) or not all((v is m or v._base is m) and v.numel() > 0 for v in views):
        return None
    rects = [_rectangle(v, shape[1], shape[2]) for v in views]
    return None if any(r is None for r in rects) else rects


class Term(NamedTuple):
    """One parameter's part of v^T M u: its gradient (read as ``shape`` when not None) times ``b``, the direction
    entries along its second axis ([B], or a Python number when B = 1)."""

    index: int
    shape: tuple[int, ...] | None
    b: Tensor | float


Projector = list[tuple[Tensor, list[Term]]]  # per set of parameters sharing their first axis: (a [A], terms)
_PROJECTORS: dict[tuple, list[Projector] | None] = {}


def projectors(block: Block, shape: tuple[int, int, int], k: int, dtype: torch.dtype, device: torch.device
               ) -> list[Projector] | None:
    """Per direction of ``directions(shape, k, ...)``: how v^T M u reads from the parameters' gradients, for M
    their layout in ``block``'s matrix; None when the layout is not a set of rectangles (pack M instead).
    Cached per parameter set and shape (parameters sharing the entries of their first axis, a weight and the
    bias column beside it, are summed before one dot product)."""
    key = (tuple(id(p) for p in block.params), tuple(tuple(p.shape) for p in block.params), shape, k, dtype,
           str(device))
    if key not in _PROJECTORS:
        if len(_PROJECTORS) > 4096:
            _PROJECTORS.clear()
        layout = _layout(block, shape)
        _PROJECTORS[key] = None if layout is None else [_projector(block, layout, d, device)
                                                         for d in directions(shape, k, dtype, device)]
    return _PROJECTORS[key]


def _projector(block: Block, layout: list[tuple[Tensor, Tensor, bool]], d: Direction, device: torch.device
               ) -> Projector:
    v, u = d.v.full[0], d.u.full[0]
    groups: dict[tuple, tuple[Tensor, list[Term]]] = {}
    for i, ((rows, cols, cols_first), p) in enumerate(zip(layout, block.params)):
        (a_ids, a_dir), (b_ids, b_dir) = ((cols, u), (rows, v)) if cols_first else ((rows, v), (cols, u))
        size = (len(a_ids),) if len(b_ids) == 1 else (len(a_ids), len(b_ids))
        b = float(b_dir[b_ids[0]]) if len(b_ids) == 1 else b_dir[b_ids.to(device)]
        group = (cols_first, tuple(a_ids.tolist()))
        if group not in groups:
            groups[group] = (a_dir[a_ids.to(device)], [])
        groups[group][1].append(Term(i, None if tuple(p.shape) == size else size, b))
    return list(groups.values())


def projected(projector: Projector, grads: list[Tensor]) -> Tensor:
    """v^T M u (0-d), M the gradients ``grads`` (one per parameter of the block) laid out as the block's matrix,
    without forming M."""
    total = None
    for a, terms in projector:
        acc = None
        for t in terms:
            g = grads[t.index] if t.shape is None else grads[t.index].reshape(t.shape)
            if isinstance(t.b, float):
                acc = g * t.b if acc is None else acc.add_(g, alpha=t.b)
            else:
                acc = g @ t.b if acc is None else acc.addmv_(g, t.b)
        part = torch.dot(a, acc)
        total = part if total is None else total + part
    return total


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


def pack(block: Block, grads: list[Tensor], shape: tuple[int, int, int], dtype: torch.dtype,
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


def bilinear(d: Direction, m: Tensor) -> Tensor:
    """v^T M u = sum_g v_g^T M_g u_g (0-d) for a packed M [G, p, q], by matrix-vector products."""
    if d.v.flat is not None:
        return torch.dot(d.v.flat, m[0] @ d.u.flat)
    return torch.bmm(m, d.u.full.unsqueeze(-1)).squeeze(-1).mul_(d.v.full).sum()
