"""Segments (one sum over tokens of outer products, sum_t L_t (x) R_t) and their products: Grams, reference
matrices, contractions with a reference matrix, per-sample gradients.

Two ways to get train-reference inner products, chosen per block by estimated cost (``factors.block``):

* Gram form: <G_i, G_v> = sum_{s,s'} sum_{t,t'} (L_{i,s,t} . L_{v,s',t'}) (R_{i,s,t} . R_{v,s',t'})
  -> [n_i, n_v]; memory n_i * n_v * T^2.
* Contracted form: with M = mean_v G_v (the reference-gradient block, [G, p, q]),
  <G_i, M> = sum_{s,t} L_{i,s,t}^T M R_{i,s,t} -> [n_i]; cost (n_i + n_v) * T * p * q, never a per-sample
  gradient. The reference is aggregated per sample (mean_v of L_v (x) R_v), never as
  (sum_v L_v) (x) (sum_v R_v).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidArgumentError
from ..patches import Patches, conv_contract, conv_matrix, conv_rows_times
from .factor import Dense, Factor, Index, _dense_like, gram
from .matrices import RowSparse, _index_matrix


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
    raise InvalidArgumentError(f"a segment pairs {left.tokens} tokens with {right.tokens}")


def oriented(seg: Segment) -> tuple[Factor, Factor, bool]:
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


def segment_matrix(seg: Segment, weights: Tensor | None = None) -> Tensor:
    """sum_i w_i sum_t L_{i,t} (x) R_{i,t} as [G, p, q] (L oriented so that an Index factor is on the left).
    ``weights`` [n] defaults to ones."""
    left, right, _ = oriented(seg)
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
    left, right, _ = oriented(seg)
    if isinstance(left, Index):
        return _index_matrix(left, _dense_like(right))
    return segment_matrix(seg)


def segment_contract(seg: Segment, m: Tensor, views: dict | None = None) -> Tensor:
    """[n]: sum_t L_t^T M R_t for every sample, M [G, p, q] from ``segment_matrix`` (``views``: see
    ``_dense_contract``)."""
    left, right, _ = oriented(seg)
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
    left, right, _ = oriented(seg)
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
