"""A block: the parameters whose per-sample gradient is one sum of outer products over segments, with its Gram,
reference matrix, contraction and per-sample forms, and the cost estimates that choose between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from torch import Tensor, nn

from .factor import Dense, Factor, Index
from .matrices import RowSparse, add_matrices
from .segments import (
    Segment,
    oriented,
    segment_contract,
    segment_gram,
    segment_matrix,
    segment_per_sample,
    segment_reference_matrix,
)


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
        if all(isinstance(oriented(s)[0], Index) for s in self.segments):
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
        width = sum(s.left.groups * (gram_width(s.left) + gram_width(s.right)) for s in self.segments)
        return float(n_i) * n_v * tok * tok * (width / len(self.segments) + 1)

    def shared_grams(self, n_i: int, n_v: int) -> dict[tuple, float]:
        """The ``shared`` factors' Gram costs, {(dim, tokens): multiply-adds}: paid once for all blocks that take
        the Gram form (``scoring.ReferenceSide``), not by each."""
        return {(s.left.dim, s.left.tokens): float(n_i) * n_v * s.left.tokens ** 2 * s.left.groups * s.left.dim
                for s in self.segments if isinstance(s.left, Dense) and s.left.shared}

    def contract_cost(self, n_i: int, n_v: int) -> float:
        cost = 0.0
        for s in self.segments:
            left, right, _ = oriented(s)
            p = 1 if isinstance(left, Index) else left.dim
            cost += s.tokens * left.groups * p * right.dim
        # the reference matrix M [G, p, q] is built and read whole (for one-hot factors only the rows of the ids
        # present, ``RowSparse``)
        return float(n_i + n_v) * cost + self.matrix_size(n_v)

    def matrix_size(self, n_v: int | None = None) -> float:
        """Entries of the block's reference matrix M [G, p, q]; for one-hot left factors (``RowSparse``) at most
        one row per reference token (given ``n_v`` reference samples), else the whole space."""
        left, right, _ = oriented(self.segments[0])
        p = left.dim
        if n_v is not None and all(isinstance(oriented(s)[0], Index) for s in self.segments):
            p = min(p, n_v * sum(s.tokens for s in self.segments))
        return float(left.groups) * p * right.dim

    def materialize_cost(self, n_i: int, n_v: int) -> float:
        return self.contract_cost(n_i, n_v) + float(n_i) * n_v * self.matrix_size()


def gram_width(f: Factor) -> int:
    """Multiply-adds per token pair of ``f``'s Gram (``Block.gram_cost``)."""
    if isinstance(f, Index):
        return 1
    if isinstance(f, Dense) and f.shared:
        return 0
    return f.dim
