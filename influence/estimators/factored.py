"""What the factored backends (Ghost, LAI) share: the products a training step reuses from a scored batch's blocks,
and self-influence from the blocks of a batch (``<G_i, G_i>`` per sample)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import Tensor, nn

from ..batch import Batch
from ..result import Chunk, InfluenceResult
from ..scoring import ReferenceSide, self_products
from .protocol import BaseBackend, Routed


class FactoredBackend(BaseBackend):
    """Base of Ghost's and LAI's backends (``lr``, ``mode``, ``budget``, ``model`` and ``pl`` set by them).

    Subclasses provide ``train_blocks(batch, n)`` (the factored blocks of a batch) and ``update_gradient(chunk)``
    (``weighted_gradient`` for ``InfluenceResult``, or None)."""

    lr: float
    mode: str
    budget: int | None
    model: nn.Module
    routed: Routed

    def train_blocks(self, batch: Batch, n: int) -> Mapping:
        raise NotImplementedError

    def update_gradient(self, result: InfluenceResult, chunk: Chunk) -> Callable | None:
        raise NotImplementedError

    def attach(self, result: InfluenceResult, chunk: Chunk, n: int) -> None:
        """What a training step can reuse from a batch scored in one chunk (see ``InfluenceResult``)."""
        if chunk.blocks is None:
            return
        blocks, lr, budget, mode, like = chunk.blocks, self.lr, self.budget, self.mode, chunk.losses
        result.weighted_gradient = self.update_gradient(result, chunk)

        def pairwise_within() -> Tensor:
            side = ReferenceSide(n, True, mode, budget)
            side.add(blocks, n)
            return lr * sum(side.score(blocks, n, like).values()) if side.modes else like.new_zeros(n, n)

        result.pairwise_within = pairwise_within
        result.self_products = lambda: self.block_self_products(blocks, like)

    def block_self_products(self, blocks: Mapping, like: Tensor) -> Tensor:
        """[n]: lr * sum over the blocks of <G_i, G_i> (Ghost's factored gradients or LAI's pseudo-gradients)."""
        total = [self_products(blocks[k], self.budget) for k in blocks]
        return self.lr * sum(total) if total else like.new_zeros(like.shape[0])

    def self_products(self, batch: Batch, n: int) -> Tensor:
        like = next(self.model.parameters()).new_zeros(n)
        return self.block_self_products(self.train_blocks(batch, n), like)


def graph_gradient(model: nn.Module, losses: Tensor) -> Callable[[Tensor], list[tuple[nn.Parameter, Tensor]]]:
    """``weighted_gradient(w)`` = [(param, sum_i w_i grad l_i)] by one backward through the graph of the scoring
    forward (usable once)."""
    from ..errors import InfluenceError
    params = [p for p in model.parameters() if p.requires_grad]
    used = [False]

    def gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        if used[0]:
            raise InfluenceError("the scoring forward's graph was already used for an update; score the batch again")
        used[0] = True
        grads = torch.autograd.grad((weights.to(losses.dtype) * losses).sum(), params, allow_unused=True)
        return [(p, g) for p, g in zip(params, grads) if g is not None]
    return gradient


__all__ = ["FactoredBackend", "graph_gradient"]
