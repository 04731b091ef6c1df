"""Per-sample gradients as sums of outer products, and their inner products without materialising them.

Every supported parameter block has per-sample gradient  G_i = sum_s sum_t L_{i,s,t} (x) R_{i,s,t}
(one [p, q] matrix for each of G independent groups): s runs over segments (calls of a module, or the
modules sharing one parameter), t over tokens/positions. A factor is either

* ``Dense``: a tensor [n, T, G, p], optionally followed by a column of ones that is not stored (``ones=True``:
  the factor is [data, 1], how a bias joins its weight's block);
* ``Index``: one-hot rows given by integer ids [n, T] into a space of ``size`` (``-1`` = contributes nothing,
  used for ``padding_idx``); an embedding's weight gradient has an ``Index`` left factor; or
* ``Patches`` (``influence.patches``): the unfolded input of a convolution, kept as the input map (symmetric
  zero padding implicit); its reference matrix is the convolution's weight gradient and its contraction one
  convolution, so the patches are only unfolded when a Gram or per-sample product needs them.

``.x`` of any dense-like factor is its full tensor [n, T, G, dim] (materialised on demand); the contractions
below avoid it where they can.

Two ways to get train-reference inner products, chosen per block by estimated cost:

* Gram form: <G_i, G_v> = sum_{s,s'} sum_{t,t'} (L_{i,s,t} . L_{v,s',t'}) (R_{i,s,t} . R_{v,s',t'})
  -> [n_i, n_v]; memory n_i * n_v * T^2.
* Contracted form: with M = mean_v G_v (the reference-gradient block, [G, p, q]),
  <G_i, M> = sum_{s,t} L_{i,s,t}^T M R_{i,s,t} -> [n_i]; cost (n_i + n_v) * T * p * q, never a per-sample
  gradient. The reference is aggregated per sample (mean_v of L_v (x) R_v), never as
  (sum_v L_v) (x) (sum_v R_v).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from .patches import Patches, conv_contract, conv_matrix, conv_rows_times


@dataclass
class Dense:
    """A factor [n, T, G, p] (``data``); with ``ones`` it stands for [data, 1] along the last axis. ``shared``: the
    same factor is the left factor of many blocks (LAI's output gradient g), so its token-pair Gram is computed
    once per pair of factors while ``shared_grams`` is open."""

    data: Tensor  # [n, T, G, p]
    ones: bool = False
    shared: bool = False

    @property
    def x(self) -> Tensor:
        """The full factor [n, T, G, dim] (a copy when ``ones``)."""
        if not self.ones:
            return self.data
        return torch.cat([self.data, self.data.new_ones(*self.data.shape[:-1], 1)], -1)

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def n(self) -> int:
        return self.data.shape[0]

    @property
    def tokens(self) -> int:
        return self.data.shape[1]

    @property
    def groups(self) -> int:
        return self.data.shape[2]

    @property
    def dim(self) -> int:
        return self.data.shape[3] + int(self.ones)

    def rows(self, index: slice) -> "Dense":
        return Dense(self.data[index], self.ones, self.shared)

    def with_ones(self) -> "Dense":
        """[data, 1]: the factor augmented by a column of ones (a bias), without copying."""
        if self.ones:
            raise ValueError("factor already carries a ones column")
        return Dense(self.data, True)

    def flatten_tokens(self) -> "Dense":
        """Aligned pairing: all tokens of a sample concatenated into one vector, [n, 1, G, T*p]."""
        if self.tokens == 1:  # already one vector per sample (keeps an unstored ones column unstored)
            return self
        x = self.x
        n, t, g, p = x.shape
        return Dense(x.permute(0, 2, 1, 3).reshape(n, 1, g, t * p))

    def expand_tokens(self, t: int) -> "Dense":
        return Dense(self.data.expand(-1, t, -1, -1), self.ones)


@dataclass
class Index:
    ids: Tensor  # [n, T] int64, -1 = no contribution
    size: int

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def tokens(self) -> int:
        return self.ids.shape[1]

    groups = 1

    @property
    def dim(self) -> int:
        return self.size

    def rows(self, index: slice) -> "Index":
        return Index(self.ids[index], self.size)

    def flatten_tokens(self) -> "Index":
        """Aligned pairing: the concatenated one-hots of all tokens (ids offset by t * size). Keeps T entries;
        pair it with a partner factor expanded over those entries (``Dense.expand_tokens``)."""
        t = self.ids.shape[1]
        offset = torch.arange(t, device=self.ids.device) * self.size
        return Index(torch.where(self.ids >= 0, self.ids + offset, self.ids), self.size * t)


Factor = Dense | Index | Patches


def ones_factor(like: Dense | Patches) -> Dense:
    """A factor of ones [n, T, G, 1] shaped like ``like`` (a bias on its own)."""
    dtype = like.dtype
    device = like.data.device if isinstance(like, Dense) else like.inp.device
    return Dense(torch.ones(like.n, like.tokens, like.groups, 1, dtype=dtype, device=device))


def _dense_like(f: Factor) -> Factor:
    """``Patches`` unfolded into a ``Dense`` factor; other factors unchanged."""
    return Dense(f.x) if isinstance(f, Patches) else f


_SHARED: list[dict] = []  # the open ``shared_grams`` memos (innermost last)


@contextlib.contextmanager
def shared_grams() -> Iterator[None]:
    """While open, ``gram`` of two ``shared`` factors is computed once per pair (keyed by the two tensors' storage,
    shape and strides; the memo holds the tensors, so a key cannot be reused by new memory)."""
    _SHARED.append({})
    try:
        yield
    finally:
        _SHARED.pop()


def _key(x: Tensor) -> tuple:
    return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype


def gram(a: Factor, b: Factor) -> Tensor:
    """Token-pair inner products [n_a, n_b, T_a, T_b, G]."""
    if _SHARED and isinstance(a, Dense) and isinstance(b, Dense) and a.shared and b.shared:
        memo = _SHARED[-1]
        key = (_key(a.data), a.ones, _key(b.data), b.ones)
        if key not in memo:
            memo[key] = (_gram(a, b), a.data, b.data)
        return memo[key][0]
    return _gram(a, b)


def _gram(a: Factor, b: Factor) -> Tensor:
    a, b = _dense_like(a), _dense_like(b)
    if isinstance(a, Dense) and isinstance(b, Dense):
        if a.ones and b.ones:  # [a, 1] . [b, 1] = a . b + 1 for every token pair: neither factor copied
            return torch.einsum("itgp,vsgp->ivtsg", a.data, b.data).add_(1)
        return torch.einsum("itgp,vsgp->ivtsg", a.x, b.x)
    if isinstance(a, Index) and isinstance(b, Index):
        eq = (a.ids[:, None, :, None] == b.ids[None, :, None, :]) & (a.ids >= 0)[:, None, :, None]
        return eq.unsqueeze(-1)
    if isinstance(a, Dense):
        return _gram(b, a).permute(1, 0, 3, 2, 4)
    vals = b.x[:, :, 0, :]  # [n_b, T_b, size]
    picked = vals[:, :, a.ids.clamp(min=0)]  # [n_b, T_b, n_a, T_a]
    picked = picked * (a.ids >= 0).to(picked.dtype)
    return picked.permute(2, 0, 3, 1).unsqueeze(-1)


@dataclass
class Segment:
    """One sum over tokens: sum_t L_t (x) R_t. A ``Dense`` factor with one token beside a factor with T tokens
    stands for the same vector at every token (LAI's aligned pairing: a sample's flattened output gradient beside
    its token ids); the Gram form uses it as it is, the other forms expand it (``_expanded``)."""

    left: Factor
    right: Factor

    def rows(self, index: slice) -> "Segment":
        return Segment(self.left.rows(index), self.right.rows(index))

    @property
    def n(self) -> int:
        return self.left.n

    @property
    def tokens(self) -> int:
        return max(self.left.tokens, self.right.tokens)


def _expanded(seg: Segment) -> Segment:
    """``seg`` with a one-token ``Dense`` factor expanded (a view) to its partner's tokens."""
    left, right = seg.left, seg.right
    if left.tokens == right.tokens:
        return seg
    if left.tokens == 1 and isinstance(left, Dense):
        return Segment(left.expand_tokens(right.tokens), right)
    if right.tokens == 1 and isinstance(right, Dense):
        return Segment(left, right.expand_tokens(left.tokens))
    raise ValueError(f"a segment pairs {left.tokens} tokens with {right.tokens}")


def _oriented(seg: Segment) -> tuple[Factor, Factor, bool]:
    """(index-or-dense, dense, swapped): put an Index factor on the left (tokens expanded, ``_expanded``)."""
    seg = _expanded(seg)
    if isinstance(seg.right, Index):
        if isinstance(seg.left, Index):
            raise NotImplementedError("a segment with two one-hot factors")
        return seg.right, seg.left, True
    return seg.left, seg.right, False


def segment_gram(a: Segment, b: Segment) -> Tensor:
    """[n_a, n_b]: sum over token pairs and groups of (L.L')(R.R')."""
    left = gram(a.left, b.left)  # [n_a, n_b, T, T', G], or [n_a, n_b, 1, 1, G] for a one-token factor
    right = gram(a.right, b.right)
    prod = left.to(right.dtype) * right if left.dtype == torch.bool else left * right.to(left.dtype)
    return prod.sum((2, 3, 4))


def _rows(x: Tensor, g: int) -> Tensor:
    """Group ``g`` of a dense factor [n, T, G, d] as rows [n*T, d] (a strided view whenever the layout allows,
    which BLAS reads without a copy)."""
    n, t, groups, d = x.shape
    return x.reshape(n * t, d) if groups == 1 else x[:, :, g, :].reshape(n * t, d)


def _dense_matrix(left: Dense, right: Dense, weights: Tensor | None) -> Tensor:
    """sum_i w_i sum_t L_{i,t} (x) R_{i,t} per group, [G, p, q]: one GEMM per group over the n*T rows (the
    weights applied to the narrower factor); a ones column becomes the (weighted) column sums of the other."""
    lm, rm, lo, ro = left.data, right.data, left.ones, right.ones
    n, t, groups, p = lm.shape
    q = rm.shape[-1]
    out = torch.empty(groups, p + lo, q + ro, dtype=torch.promote_types(lm.dtype, rm.dtype), device=lm.device)
    w = None if weights is None else weights.to(out.dtype).view(n, 1, 1).expand(n, t, 1).reshape(n * t, 1)
    for g in range(groups):
        a, b = _rows(lm, g), _rows(rm, g)
        if w is not None:
            a, b = (a * w, b) if p <= q else (a, b * w)
        torch.mm(a.T, b, out=out[g, :p, :q])  # written in place (BLAS takes the strided view)
        if ro:
            if w is None:
                torch.sum(_rows(lm, g), 0, out=out[g, :p, q])
            else:
                torch.mv(_rows(lm, g).T, w[:, 0], out=out[g, :p, q])
        if lo:
            if w is None:
                torch.sum(_rows(rm, g), 0, out=out[g, p, :q])
            else:
                torch.mv(_rows(rm, g).T, w[:, 0], out=out[g, p, :q])
        if lo and ro:
            out[g, p, q] = n * t if w is None else w.sum()
    return out


NARROW = 32  # at most this many columns of the GEMM output: computed as M R^T (measured faster with MKL)


def _dense_contract(left: Dense, m: Tensor, right: Dense, views: dict | None = None) -> Tensor:
    """[n]: sum_{t,g} L_{i,t,g}^T M_g R_{i,t,g}. One GEMM per group maps the wider factor through M (so the
    product has the narrower width), then a fused multiply-and-sum with the other factor; no per-sample loop,
    no copy of a factor whose layout already allows row views, and ones columns enter as rows/columns of M.
    ``views``: a dict kept with M by the caller, in which the common case keeps the views of M it reads (M's
    weight part and ones column), so that a reference side scoring many batches makes them once."""
    lm, rm, lo, ro = left.data, right.data, left.ones, right.ones
    n, t, groups, p = lm.shape
    q = rm.shape[-1]
    swapped = p > q
    if swapped:  # the GEMM output takes the narrower width
        lm, rm, lo, ro, p, q = rm, lm, ro, lo, q, p
    if groups == 1 and t == 1 and p + lo <= NARROW:  # the common case (LAI, classifier heads) in the fewest ops
        key = (swapped, p, q, ro)
        got = None if views is None else views.get(key)
        if got is None:
            mg = m[0].T if swapped else m[0]
            got = (mg[:, :q], mg[:, q:] if ro else None)
            if views is not None:
                views[key] = got
        weight, ones = got
        r, l = rm.reshape(n, q), lm.reshape(n, p)
        v = torch.addmm(ones, weight, r.T) if ro else weight @ r.T  # [p + lo, n]
        if lo:
            return v[:p].T.mul_(l).sum(1).add_(v[p])
        return v.T.mul_(l).sum(1)
    if swapped:
        m = m.transpose(1, 2)
    out = None
    for g in range(groups):
        mg = m[g]  # [p + lo, q + ro]
        if p + lo <= NARROW:  # M [p, q] times the rows transposed: BLAS is faster this way round for narrow p
            v = (mg[:, :q] @ _rows(rm, g).T if not ro else torch.addmm(mg[:, q:], mg[:, :q], _rows(rm, g).T)).T
        else:
            v = _rows(rm, g) @ mg[:, :q].T  # [n*T, p + lo]
            if ro:
                v += mg[:, q]
        if lo:
            s = (v[:, :p].reshape(n, t, p) * lm[:, :, g, :]).sum((1, 2)) + v[:, p].reshape(n, t).sum(1)
        else:
            s = v.view(n, t, p).mul_(lm[:, :, g, :]).sum((1, 2))
        out = s if out is None else out + s
    return out


def rows_times(f: Dense | Patches, w: Tensor) -> Tensor:
    """A dense-like factor [n, T, G, d] times per-group matrices ``w`` [G, d, k]: [G, n*T, k], without
    materialising it or copying its data: one GEMM per group for ``Dense`` whose rows are views (else a fused
    multiply-sum per column of ``w``; a ones column adds the last row of ``w``), one convolution for ``Patches``
    (the last row of ``w`` as its bias when it carries ones)."""
    if isinstance(f, Patches):
        return conv_rows_times(f, w)
    x, ones = f.data, f.ones
    n, t, g, d = x.shape
    k = w.shape[2]
    if n == 1 or t == 1 or x.stride(0) == t * x.stride(1):  # rows are views: one GEMM per group
        rows = x.permute(2, 0, 1, 3).reshape(g, n * t, d)
        out = (rows[0] @ w[0, :d]).unsqueeze(0) if g == 1 else torch.bmm(rows, w[:, :d])
    else:  # e.g. a convolution's output gradient, a permuted map [n, G, d, T]: products and sums in its order
        xm = x.permute(0, 2, 3, 1)
        out = torch.stack([(xm * w[:, :d, j].unsqueeze(-1)).sum(2) for j in range(k)], -1)  # [n, G, T, k]
        out = out.permute(1, 0, 2, 3).reshape(g, n * t, k)
    return out + w[:, d:d + 1] if ones else out


@dataclass
class RowSparse:
    """A one-group matrix [1, size, q] whose only nonzero rows are ``ids`` (sorted, unique, [U]) holding ``rows``
    [U, q]: the reference matrix of a block whose left factors are one-hot ids (an embedding), which has a row
    only for the ids the reference samples hold, so a vocabulary-sized [V, q] (for LAI's embedding term [V, V])
    is never formed. ``lookup`` maps an id to its row (-1: none), built when first read."""

    ids: Tensor
    rows: Tensor
    size: int
    _lookup: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.rows.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.rows.dtype

    def scaled(self, c: float) -> "RowSparse":
        return RowSparse(self.ids, self.rows * c, self.size)

    def lookup(self) -> Tensor:
        if self._lookup is None:
            self._lookup = torch.full((self.size,), -1, dtype=torch.int64, device=self.ids.device)
            self._lookup[self.ids] = torch.arange(len(self.ids), device=self.ids.device)
        return self._lookup

    def dense(self) -> Tensor:
        out = self.rows.new_zeros(self.size, self.rows.shape[1])
        out[self.ids] = self.rows
        return out.unsqueeze(0)


def add_matrices(a: "Tensor | RowSparse", b: "Tensor | RowSparse") -> "Tensor | RowSparse":
    """a + b for reference matrices, dense or ``RowSparse`` (row-sparse stays row-sparse over the union of ids)."""
    if isinstance(a, RowSparse) and isinstance(b, RowSparse):
        ids, inv = torch.unique(torch.cat([a.ids, b.ids]), return_inverse=True)
        rows = a.rows.new_zeros(len(ids), a.rows.shape[1]).index_add_(0, inv, torch.cat([a.rows, b.rows]))
        return RowSparse(ids, rows, a.size)
    if isinstance(a, RowSparse):
        a, b = b, a
    if isinstance(b, RowSparse):
        out = a.clone()
        out[0].index_add_(0, b.ids, b.rows.to(out.dtype))
        return out
    return a + b


def _index_matrix(left: Index, right: Dense) -> RowSparse:
    """sum_i sum_t onehot(id_{i,t}) (x) R_{i,t} with a row only for the ids present."""
    keep = left.ids >= 0
    ids, inv = torch.unique(left.ids[keep], return_inverse=True)
    rows = right.data.new_zeros(len(ids), right.dim).index_add_(0, inv, right.x[:, :, 0, :][keep])
    return RowSparse(ids, rows, left.size)


def segment_matrix(seg: Segment, weights: Tensor | None = None) -> Tensor:
    """sum_i w_i sum_t L_{i,t} (x) R_{i,t} as [G, p, q] (L oriented so that an Index factor is on the left).
    ``weights`` [n] defaults to ones."""
    left, right, _ = _oriented(seg)
    if isinstance(right, Patches) and isinstance(left, Dense) and not left.ones:
        return conv_matrix(left.data, right, weights)
    left, right = _dense_like(left), _dense_like(right)
    if isinstance(left, Dense):
        return _dense_matrix(left, right, weights)
    r = right.x if weights is None else right.x * weights.view(-1, 1, 1, 1).to(right.dtype)
    out = r.new_zeros(left.size, r.shape[-1])
    keep = left.ids >= 0
    out.index_add_(0, left.ids[keep], r[:, :, 0, :][keep])  # dense: no sort of the ids (``_index_matrix``)
    return out.unsqueeze(0)


def segment_reference_matrix(seg: Segment) -> "Tensor | RowSparse":
    """``segment_matrix`` for a reference side: ``RowSparse`` where the left factor is one-hot ids."""
    left, right, _ = _oriented(seg)
    if isinstance(left, Index):
        return _index_matrix(left, _dense_like(right))
    return segment_matrix(seg)


def segment_contract(seg: Segment, m: Tensor, views: dict | None = None) -> Tensor:
    """[n]: sum_t L_t^T M R_t for every sample, M [G, p, q] from ``segment_matrix`` (``views``: see
    ``_dense_contract``)."""
    left, right, _ = _oriented(seg)
    if isinstance(right, Patches) and isinstance(left, Dense) and not left.ones:
        return conv_contract(left.data, m, right)
    left, right = _dense_like(left), _dense_like(right)
    if isinstance(left, Dense):
        return _dense_contract(left, m, right, views)
    if isinstance(m, RowSparse):
        pos = m.lookup()[left.ids.clamp(min=0)]
        keep = (pos >= 0) & (left.ids >= 0)
        rows = m.rows[pos.clamp(min=0)]  # [n, T, q]: the reference row of each token's id
    else:
        keep = left.ids >= 0
        rows = m[0][left.ids.clamp(min=0)]  # [n, T, q]
    rows = rows.mul_(keep.unsqueeze(-1).to(rows.dtype)).mul_(right.x[:, :, 0, :])
    return rows.sum((1, 2))


def segment_per_sample(seg: Segment) -> Tensor:
    """Materialised per-sample gradient blocks [n, G, p, q]."""
    left, right, _ = _oriented(seg)
    left, right = _dense_like(left), _dense_like(right)
    if isinstance(left, Dense):
        return torch.einsum("itgp,itgq->igpq", left.x, right.x)
    n, t = left.ids.shape
    q = right.dim
    out = right.x.new_zeros(n, left.size, q)
    keep = (left.ids >= 0).unsqueeze(-1).expand(n, t, q)
    idx = left.ids.clamp(min=0).unsqueeze(-1).expand(n, t, q)
    out.scatter_add_(1, idx, right.x[:, :, 0, :] * keep.to(right.x.dtype))
    return out.unsqueeze(1)


def add_all(parts: Iterable[Tensor]) -> Tensor:
    """The sum of fresh tensors, starting from the first (``sum`` would add it to 0: one more op and copy)."""
    it = iter(parts)
    out = next(it)
    for x in it:
        out = out + x
    return out


@dataclass
class Block:
    """A group of parameters whose per-sample gradient is one sum of outer products over ``segments``.

    ``unpack`` maps the [G, p, q] matrix of ``segment_matrix`` (summed over segments) to gradients shaped
    like ``params``; it is None where no parameter gradient is needed (LAI)."""

    name: str
    segments: list[Segment]
    params: list[nn.Parameter] = field(default_factory=list)
    unpack: Callable[[Tensor], list[Tensor]] | None = None

    def rows(self, index: slice) -> "Block":
        return Block(self.name, [s.rows(index) for s in self.segments], self.params, self.unpack)

    @property
    def n(self) -> int:
        return self.segments[0].n

    def gram(self, other: "Block") -> Tensor:
        """Pairwise inner products [n_self, n_other]."""
        return add_all(segment_gram(a, b) for a in self.segments for b in other.segments)

    def matrix(self, weights: Tensor | None = None) -> Tensor:
        """sum_i w_i G_i, [G, p, q]."""
        return add_all(segment_matrix(s, weights) for s in self.segments)

    def reference_matrix(self) -> "Tensor | RowSparse":
        """sum_i G_i for a reference side: ``RowSparse`` when every segment's left factor is one-hot ids."""
        if all(isinstance(_oriented(s)[0], Index) for s in self.segments):
            out = None
            for s in self.segments:
                m = segment_reference_matrix(s)
                out = m if out is None else add_matrices(out, m)
            return out
        return self.matrix()

    def contract(self, m: Tensor, views: dict | None = None) -> Tensor:
        """<G_i, M> for every sample, [n]. ``views``: a dict kept with M across calls (``_dense_contract``)."""
        return add_all(segment_contract(s, m, views) for s in self.segments)

    def per_sample(self) -> Tensor:
        """Materialised per-sample gradients [n, G*p*q]."""
        return add_all(segment_per_sample(s) for s in self.segments).flatten(1)

    def gram_cost(self, n_i: int, n_v: int) -> float:
        """Multiply-adds of the Gram form: n_i n_v T^2 per unit of width, where an ``Index`` factor costs one
        comparison (not its vocabulary) and a ``shared`` factor nothing (its Gram is computed once for all blocks,
        ``shared_grams``)."""
        tok = sum(s.tokens for s in self.segments)
        width = sum(s.left.groups * (_gram_width(s.left) + _gram_width(s.right)) for s in self.segments)
        return float(n_i) * n_v * tok * tok * (width / len(self.segments) + 1)

    def shared_grams(self, n_i: int, n_v: int) -> dict[tuple, float]:
        """The ``shared`` factors' Gram costs, {(dim, tokens): multiply-adds}: paid once for all blocks that take
        the Gram form (``scoring.ReferenceSide``), not by each."""
        return {(s.left.dim, s.left.tokens): float(n_i) * n_v * s.left.tokens ** 2 * s.left.groups * s.left.dim
                for s in self.segments if isinstance(s.left, Dense) and s.left.shared}

    def contract_cost(self, n_i: int, n_v: int) -> float:
        cost = 0.0
        for s in self.segments:
            left, right, _ = _oriented(s)
            p = 1 if isinstance(left, Index) else left.dim
            cost += s.tokens * left.groups * p * right.dim
        # the reference matrix M [G, p, q] is built and read whole (for one-hot factors only the rows of the ids
        # present, ``RowSparse``)
        return float(n_i + n_v) * cost + self.matrix_size(n_v)

    def matrix_size(self, n_v: int | None = None) -> float:
        """Entries of the block's reference matrix M [G, p, q]; for one-hot left factors (``RowSparse``) at most
        one row per reference token (given ``n_v`` reference samples), else the whole space."""
        left, right, _ = _oriented(self.segments[0])
        p = left.dim
        if n_v is not None and all(isinstance(_oriented(s)[0], Index) for s in self.segments):
            p = min(p, n_v * sum(s.tokens for s in self.segments))
        return float(left.groups) * p * right.dim

    def materialize_cost(self, n_i: int, n_v: int) -> float:
        return self.contract_cost(n_i, n_v) + float(n_i) * n_v * self.matrix_size()


def _gram_width(f: Factor) -> int:
    """Multiply-adds per token pair of ``f``'s Gram (``Block.gram_cost``)."""
    if isinstance(f, Index):
        return 1
    if isinstance(f, Dense) and f.shared:
        return 0
    return f.dim
