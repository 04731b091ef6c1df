"""Curated training under DDP on a small synthetic problem, checked against one process.

    torchrun --nproc_per_node 2 -m validation.curation.ddp_check --out results/curate/ddp_check.pt

Every rank builds the same model and the same global batches, keeps its contiguous shard, holds the whole
reference batch, and runs a few curated steps per method; rank 0 writes the global keep masks and final
parameters. ``run_curated`` run in one process on the global batches must give the same masks and
parameters. Backend: NCCL when CUDA is available (one GPU per rank), else Gloo; nothing else changes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import influence
from influence.atomic import atomic_torch_save
from influence.batch import Batch, take, to_device
from influence.curation.methods import get_method
from influence.curation.step import curation_step

DEFAULT_METHODS = ("vanilla", "lai", "lai-last", "ghost", "exact", "lai-batchref", "small-loss:0.5", "random:0.5",
                   "large-grad:0.5", "lai-topk:0.4", "greats:0.4")
LR = 0.1


def make_problem(seed: int = 0, n: int = 12, n_ref: int = 6, steps: int = 2, dtype: torch.dtype = torch.float64
                 ) -> tuple[nn.Module, list[Batch], Batch]:
    """A small MLP (one hidden ReLU layer), ``steps`` global batches of n samples and a reference batch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)

    def batch(m: int) -> Batch:
        return torch.randn(m, 6, generator=g, dtype=dtype), torch.randint(0, 4, (m,), generator=g)
    return model, [batch(n) for _ in range(steps)], batch(n_ref)


def parse_method(spec: str) -> tuple[Any, bool]:
    """'name[:fraction]' -> (Method, reference is the batch itself); '-batchref' suffix means ref=None."""
    name, _, frac = spec.partition(":")
    batch_ref = name.endswith("-batchref")
    name = name.removesuffix("-batchref")
    return get_method(name, float(frac) if frac else None), batch_ref


def run_curated(model: nn.Module, batches: list[Batch], ref: Batch, spec: str, seed: int = 0) -> dict[str, Any]:
    """Curated SGD steps on ``batches`` (this rank's shards when ``model`` is DDP-wrapped): global keep masks
    per step and the final parameters."""
    method, batch_ref = parse_method(spec)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for b in batches:
        opt.zero_grad()
        info = curation_step(model, influence.cross_entropy, opt, b, None if batch_ref else ref, method,
                             on_empty="best", generator=gen)
        masks.append(info.kept_global.cpu())
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {"masks": masks, "params": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="rank 0 writes {method: {'masks', 'params'}} here (torch.save)")
    ap.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    out = {}
    for spec in args.methods:
        model, batches, ref = make_problem(args.seed)
        model = model.to(device)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        shards = [to_device(take(b, torch.tensor_split(torch.arange(len(b[1])), world)[rank]), device)
                  for b in batches]
        out[spec] = run_curated(ddp, shards, to_device(ref, device), spec, args.seed)
    if rank == 0:
        atomic_torch_save(args.out, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
