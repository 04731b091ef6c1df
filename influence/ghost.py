"""Ghost influence: exact per-layer inner products from one forward and one truncated backward pass."""

from __future__ import annotations

from typing import Hashable

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, check_batch, take
from .capture import capture_backward, ghost_blocks, plan
from .exact import exact
from .factors import Block
from .result import InfluenceResult
from .scoring import DEFAULT_BUDGET, ReferenceSide


def _concat_chunks(chunks: list[dict[Hashable, Tensor]]) -> dict[Hashable, Tensor]:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _weighted_gradient(blocks: dict[Hashable, Block]):
    def weighted_gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        """sum_i w_i grad l_i for every captured parameter, from the recorded factors (no second backward)."""
        out = []
        for block in blocks.values():
            out += list(zip(block.params, block.unpack(block.matrix(weights))))
        return out
    return weighted_gradient


def finish(estimator: str, lr: float, side: ReferenceSide, chunks: list[dict[Hashable, Tensor]], pairwise: bool,
           losses: Tensor, extra: InfluenceResult | None = None) -> InfluenceResult:
    """Assemble per-layer results (scaled by lr) from scored chunks, adding an exact fallback's layers."""
    named = {k: lr * v for k, v in side.by_name(_concat_chunks(chunks)).items()} if chunks[0] else {}
    if extra is not None:
        named.update(extra.per_layer_pairwise if pairwise else extra.per_layer)
    if pairwise:
        total = sum(named.values())
        return InfluenceResult(estimator, lr, total.mean(1), {k: v.mean(1) for k, v in named.items()}, total,
                               named, losses)
    return InfluenceResult(estimator, lr, sum(named.values()), named, train_losses=losses)


def ghost(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          mode: str = "auto", fallback: str | None = None, chunk_size: int | None = None,
          memory_budget: int = DEFAULT_BUDGET) -> InfluenceResult:
    """Ghost influence: lr * sum_l <a_i (x) b_i, mean_v a_v (x) b_v>, equal to Exact on supported layers.

    One forward/backward over the reference batch, then over the training batch in chunks of ``chunk_size``
    samples (default: all at once). Per block, ``mode`` picks the Gram form or the materialised form
    (see ``influence.scoring``). Trainable layers outside the supported set raise ``UnsupportedLayerError``
    unless ``fallback='exact'``, which scores their parameters with torch.func. When the training batch is
    captured in one chunk and nothing falls back, ``result.weighted_gradient(w)`` returns sum_i w_i grad l_i
    for every parameter from the recorded factors, so a training step needs no second backward pass.
    """
    n_t, n_v = check_batch(train, "train"), check_batch(ref, "ref")
    pl = plan(model, fallback)
    ref_cap = capture_backward(model, loss_fn, ref, pl.modules, n_v, "ref")
    side = ReferenceSide(ghost_blocks(ref_cap, pl), n_t, pairwise, mode, memory_budget)
    del ref_cap
    chunk = chunk_size or n_t
    chunks, losses, blocks = [], [], {}
    for i in range(0, n_t, chunk):
        c = min(chunk, n_t - i)
        cap = capture_backward(model, loss_fn, take(train, slice(i, i + c)), pl.modules, c, "train")
        blocks = ghost_blocks(cap, pl)
        chunks.append(side.score(blocks, c, cap.losses))
        losses.append(cap.losses)
    extra = None
    if pl.unsupported:
        names = [n for n, p in model.named_parameters() if p.requires_grad and n.rpartition(".")[0] in pl.unsupported]
        extra = exact(model, loss_fn, train, ref, lr, pairwise=pairwise, params=names)
    result = finish("ghost", lr, side, chunks, pairwise, torch.cat(losses), extra)
    if len(chunks) == 1 and not pl.unsupported:
        result.weighted_gradient = _weighted_gradient(blocks)
    return result
