"""The factors of a per-sample gradient and their token-pair Grams.

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
(``factors.segments``) avoid it where they can.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ..errors import InvalidArgumentError
from ..patches import Patches


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
            raise InvalidArgumentError("factor already carries a ones column")
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
