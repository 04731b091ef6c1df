"""Reference matrices in row-sparse form: the summed gradient of a block whose left factors are one-hot ids (an
embedding) keeps a row only for the ids present."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .factor import Dense, Index


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
