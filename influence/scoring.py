"""Train-reference inner products of factorised blocks, choosing the cheaper form per block.

Modes: ``"gram"`` (token-pair Gram products, never forming a gradient), ``"materialize"`` (for scores:
contract each training sample with the mean reference gradient of the block; for pairwise output:
materialise per-sample gradient blocks), ``"auto"`` (whichever the cost model says is cheaper, per block).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from torch import Tensor

from .factors import Block

MODES = ("auto", "gram", "materialize")
DEFAULT_BUDGET = 1 << 30  # bytes for one Gram chunk


def choose_mode(block: Block, n_train: int, n_ref: int, pairwise: bool, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    other = block.materialize_cost(n_train, n_ref) if pairwise else block.contract_cost(n_train, n_ref)
    return "gram" if block.gram_cost(n_train, n_ref) <= other else "materialize"


def chunked_gram(train: Block, ref: Block, budget: int) -> Tensor:
    """[n_train, n_ref] Gram products, over row chunks sized so one chunk's token-pair tensor fits ``budget``."""
    tok_t = sum(s.left.tokens for s in train.segments)
    tok_v = sum(s.left.tokens for s in ref.segments)
    groups = max(s.left.groups for s in train.segments)
    item = getattr(train.segments[0].right, "dtype", torch.float64).itemsize
    per_row = max(1, ref.n * tok_t * tok_v * groups * item * 3)
    rows = max(1, budget // per_row)
    return torch.cat([train.rows(slice(i, i + rows)).gram(ref) for i in range(0, train.n, rows)])


def chunked_materialized(train: Block, ref_grads: Tensor, budget: int) -> Tensor:
    """[n_train, n_ref] = per-sample gradients of ``train`` times ``ref_grads`` [n_ref, size]ᵀ, materialising the
    training gradients over row chunks of at most ``budget`` bytes."""
    size = ref_grads.shape[1]
    rows = max(1, budget // max(1, size * ref_grads.element_size()))
    if rows >= train.n:
        return train.per_sample() @ ref_grads.T
    return torch.cat([train.rows(slice(i, i + rows)).per_sample() @ ref_grads.T for i in range(0, train.n, rows)])


class ReferenceSide:
    """Reference-batch statistics computed once and reused for every chunk of training samples.

    ``blocks`` may be any mapping; its values are read one at a time, so a mapping that builds each block on
    access (and does not cache it) keeps only one block's factors alive (see ``influence.lai``)."""

    def __init__(self, blocks: Mapping[Hashable, Block], n_train: int, pairwise: bool, mode: str = "auto",
                 budget: int = DEFAULT_BUDGET) -> None:
        self.pairwise, self.budget = pairwise, budget
        self.n_ref = 0
        self.modes: dict[Hashable, str] = {}
        self.stats: dict[Hashable, Block | Tensor] = {}
        self.names: dict[Hashable, str] = {}
        for key in blocks:
            block = blocks.get(key)
            if block is None:
                continue
            self.n_ref = block.n
            m = choose_mode(block, n_train, self.n_ref, pairwise, mode)
            self.modes[key], self.names[key] = m, block.name
            if m == "gram":
                self.stats[key] = block
            elif pairwise:
                self.stats[key] = block.per_sample()
            else:
                self.stats[key] = block.matrix() / self.n_ref

    def score(self, blocks: Mapping[Hashable, Block], n: int, like: Tensor) -> dict[Hashable, Tensor]:
        """Per block: [n] mean over the reference (or [n, n_ref] when pairwise) of <G_i, G_v>."""
        out = {}
        shape = (n, self.n_ref) if self.pairwise else (n,)
        for key, m in self.modes.items():
            block = blocks.get(key)
            if block is None:
                out[key] = like.new_zeros(shape)
            elif m == "gram":
                p = chunked_gram(block, self.stats[key], self.budget)
                out[key] = p if self.pairwise else p.mean(1)
            elif self.pairwise:
                out[key] = chunked_materialized(block, self.stats[key], self.budget)
            else:
                out[key] = block.contract(self.stats[key])
            del block
        for key in blocks.keys() - self.modes.keys():
            out[key] = like.new_zeros(shape)
            self.names[key] = blocks[key].name
        return out

    def by_name(self, scores: dict[Hashable, Tensor]) -> dict[str, Tensor]:
        named: dict[str, Tensor] = {}
        for key, s in scores.items():
            name = self.names[key]
            named[name] = named[name] + s if name in named else s
        return named
