"""Selection policies: plain functions from scores to a boolean keep mask.

Every function takes scores ``[n]`` (higher = more useful) and returns a bool mask ``[n]``; none of them
looks at the model. ``keep_count`` turns a keep fraction into a sample count. A :data:`Policy` is a callable
``scores [n] -> keep mask [n]`` (what ``influence.hf_trainer.curate(policy=...)`` takes): :func:`keep_nonnegative`,
:func:`keep_top_fraction`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from influence.errors import InvalidArgumentError

Policy = Callable[[Tensor], Tensor]


def keep_count(n: int, fraction: float) -> int:
    """round(fraction * n), at least 1 for a non-empty batch and a positive fraction; fraction in (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidArgumentError(f"keep fraction must be in (0, 1], got {fraction}")
    return min(n, max(1, int(math.floor(fraction * n + 0.5)))) if n else 0


def keep_threshold(scores: Tensor, threshold: float = 0.0) -> Tensor:
    """Keep samples with score >= threshold (the reference rule with threshold 0: keep what does not hurt)."""
    return scores >= threshold


def keep_nonnegative(scores: Tensor) -> Tensor:
    """The reference policy: keep samples whose step does not raise the reference loss (score >= 0)."""
    return scores >= 0


def keep_top_fraction(fraction: float) -> Policy:
    """A policy keeping the ``ceil(fraction * n)`` highest-scoring samples of every batch (at least one);
    ``fraction`` in (0, 1]."""
    if not 0 < fraction <= 1:
        raise InvalidArgumentError(f"fraction must be in (0, 1], got {fraction}")

    def policy(scores: Tensor) -> Tensor:
        k = max(1, int(-(-fraction * len(scores) // 1)))
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[scores.topk(k).indices] = True
        return mask
    return policy


def keep_top_k(scores: Tensor, k: int) -> Tensor:
    """Keep the k highest scores (ties broken by the lower index, so the choice is deterministic)."""
    n = scores.shape[0]
    if not 0 <= k <= n:
        raise InvalidArgumentError(f"k must be in 0..{n}, got {k}")
    order = torch.sort(scores, descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    mask[order[:k]] = True
    return mask


def keep_bottom_k(values: Tensor, k: int) -> Tensor:
    """Keep the k smallest values (small-loss selection with ``values`` = per-sample losses)."""
    return keep_top_k(-values, k)


def rank_sum(scores: Tensor, losses: Tensor) -> Tensor:
    """The combined rank [n] of a batch: the rank of each score (0 = lowest) plus the rank of each loss from the
    top (0 = highest loss), so a high value means both useful by the influence score and well fitted. Ties are
    ranked by index (a stable sort); the result is a float tensor on the scores' device."""
    if scores.shape != losses.shape:
        raise InvalidArgumentError(f"scores and losses must have the same shape, got {tuple(scores.shape)} and "
                                   f"{tuple(losses.shape)}")
    def ranks(v: Tensor) -> Tensor:
        out = torch.empty(v.shape[0], dtype=torch.float64, device=v.device)
        out[torch.sort(v, stable=True).indices] = torch.arange(v.shape[0], dtype=torch.float64, device=v.device)
        return out
    return ranks(scores) + ranks(-losses.to(scores.device))


def keep_random(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Keep k of n samples chosen uniformly at random (``generator`` seeds it; same seed = same choice)."""
    if not 0 <= k <= n:
        raise InvalidArgumentError(f"k must be in 0..{n}, got {k}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask


def greats_select(scores: Tensor, pairwise: Tensor, k: int, lr: float) -> Tensor:
    """Greedy second-order selection (GREATS).

    ``scores`` [n]: lr * <g_j, g_ref>; ``pairwise`` [n, n]: lr * <g_i, g_j> between the batch's own samples
    (the train-train pairwise form of the same estimator). Start from the scores; pick the argmax; subtract
    lr^2 <g_pick, g_j> = lr * pairwise[pick, j] from every remaining score; repeat k times. Ties go to the
    lower index. ``lr`` is the learning rate the scores were computed with.
    """
    n = scores.shape[0]
    if pairwise.shape != (n, n):
        raise InvalidArgumentError(f"pairwise must be [{n}, {n}], got {tuple(pairwise.shape)}")
    if not 0 <= k <= n:
        raise InvalidArgumentError(f"k must be in 0..{n}, got {k}")
    current = scores.clone()
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    for _ in range(k):
        masked = current.masked_fill(mask, -math.inf)
        pick = int(torch.argmax(masked))  # first maximal index
        mask[pick] = True
        current = current - lr * pairwise[pick]
    return mask

