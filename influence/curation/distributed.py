"""Collectives for curated training under torch.distributed (DDP): gather scores and batches, sum gradients.

Scheme (every rank runs the same code; Gloo on CPU, NCCL on GPU, nothing backend-specific):

1. each rank scores its own shard of the global batch against the SAME reference batch (every rank holds
   the whole reference batch, and DDP keeps the parameters equal, so the reference gradient is identical
   on all ranks without communication; with ``ref=None`` the global batch is all-gathered and used as
   the reference);
2. the per-sample values are all-gathered in rank order, so the selection rule sees the global batch and
   every rank computes the same global keep mask (random selection draws from a generator seeded the
   same on every rank);
3. each rank forms sum_{kept on this rank} (s / K) grad l_i with K the GLOBAL kept count and s the loss
   scale, and the increments are all-reduced with SUM. That equals DDP's average of per-rank gradients
   (DDP divides each rank's gradient by the world size) of per-rank losses normalised by K / world, i.e.
   one process's mean over all kept samples of the global batch. The increment is added to ``.grad``
   after the reduction, so gradients accumulated earlier (already equal on all ranks) are never re-reduced.

DDP's own backward hooks are not used: Ghost's update runs no backward, so the curation step reduces the
increment itself, for every method alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from influence.compat import tree_flatten, tree_unflatten


@dataclass
class Shards:
    """A process group and this process's place in it."""

    group: Any
    rank: int
    world: int

    @staticmethod
    def of(model: nn.Module, group: Any = "auto") -> "Shards | None":
        """The group of a DDP-wrapped model (``group='auto'``), an explicit group, or None (one process)."""
        if group == "auto":
            if not isinstance(model, nn.parallel.DistributedDataParallel):
                return None
            group = model.process_group
        if group is None or not dist.is_available() or not dist.is_initialized():
            return None  # (an explicit None: one process)
        world = dist.get_world_size(group)
        return Shards(group, dist.get_rank(group), world) if world > 1 else None

    @staticmethod
    def default() -> "Shards | None":
        """The default process group when torch.distributed is initialised with more than one process, else None
        (what a ``transformers.Trainer`` under DDP reduces over)."""
        if not dist.is_available() or not dist.is_initialized():
            return None
        world = dist.get_world_size()
        return Shards(None, dist.get_rank(), world) if world > 1 else None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def gather_rows(x: Tensor, sh: Shards) -> tuple[Tensor, list[int]]:
    """All-gather tensors whose first dimension may differ by rank: returns (concatenation in rank order,
    per-rank sizes)."""
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(sh.world)]
    dist.all_gather(sizes, size, group=sh.group)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(sh.world)]
    dist.all_gather(parts, padded.contiguous(), group=sh.group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), counts


def gather_batch(batch: Any, sh: Shards) -> Any:
    """The global batch: every tensor leaf all-gathered along dim 0 in rank order."""
    leaves, spec = tree_flatten(batch)
    out = [gather_rows(x, sh)[0] if isinstance(x, Tensor) else x for x in leaves]
    return tree_unflatten(out, spec)


def sum_across(values: Tensor, sh: Shards) -> Tensor:
    """All-reduce (SUM) of a small tensor, returned (the input is not modified)."""
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=sh.group)
    return out


def sum_gradients(grads: list[Tensor], sh: Shards) -> list[Tensor]:
    """All-reduce (SUM) a list of gradient tensors in one flat buffer per dtype; same order on every rank."""
    out = [g.clone() for g in grads]
    for dtype in sorted({g.dtype for g in out}, key=str):
        idx = [i for i, g in enumerate(out) if g.dtype == dtype]
        flat = torch.cat([out[i].reshape(-1) for i in idx])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=sh.group)
        offset = 0
        for i in idx:
            n = out[i].numel()
            out[i] = flat[offset:offset + n].view_as(out[i])
            offset += n
    return out
