"""The workloads ``lai bench`` measures: a model, a loss, a batch maker and the batch sizes of the cost targets.

Synthetic inputs from a fixed seed (the cost of these models does not depend on the values):

* ``mlp``: MLP 40-512-512-10, 256 train / 128 reference samples;
* ``transformer``: ``CausalTransformer()`` defaults, 32 train / 16 reference sequences of 128 tokens;
* ``cnn``: ``CNN2d()`` on 8x8 images, 256 train / 128 reference samples.

``tiny=True`` shrinks models and batches to seconds (tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import influence
from influence.batch import Batch, LossFn

from .estimators import get as get_estimator
from .models import MLP, CNN2d, CausalTransformer

WORKLOADS = ("mlp", "transformer", "cnn")
CURATED = ("curated-lai", "curated-ghost")  # a curated SGD step (keep score >= 0) with LAI / Ghost scores


@dataclass
class Workload:
    """A model, a loss, a batch maker ``make(n, generator) -> (inputs, targets)`` on ``device`` and the sizes."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    make: Callable[[int, torch.Generator], Batch]
    n_train: int
    n_ref: int
    lr: float
    sizes: tuple[int, ...]
    big_chunk: int  # training samples per chunk for the --big run (bounded memory)
    meta: dict[str, Any] = field(default_factory=dict)


def _classification(d_in: tuple[int, ...], classes: int, device: torch.device
                    ) -> Callable[[int, torch.Generator], Batch]:
    def make(n: int, gen: torch.Generator) -> Batch:
        return (torch.randn(n, *d_in, generator=gen).to(device),
                torch.randint(0, classes, (n,), generator=gen).to(device))
    return make


def _language(vocab: int, length: int, device: torch.device) -> Callable[[int, torch.Generator], Batch]:
    def make(n: int, gen: torch.Generator) -> Batch:
        ids = torch.randint(0, vocab, (n, length + 1), generator=gen).to(device)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    return make


def build_workload(name: str, tiny: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> Workload:
    """The issue's reference workloads (models in eval mode on ``device``)."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    ce = influence.cross_entropy
    if name == "mlp":
        hidden = (16, 16) if tiny else (512, 512)
        return Workload(name, MLP(40, hidden, 10).eval().to(dev), ce, _classification((40,), 10, dev),
                        *((16, 8) if tiny else (256, 128)), 0.1,
                        (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024,
                        {"model": f"MLP 40-{'-'.join(map(str, hidden))}-10"})
    if name == "transformer":
        kw = dict(d_model=16, n_layers=1, n_heads=2, max_len=16) if tiny else {}
        model = CausalTransformer(**kw).eval().to(dev)
        length = model.pos.num_embeddings
        return Workload(name, model, ce, _language(model.tok.num_embeddings, length, dev),
                        *((4, 2) if tiny else (32, 16)), 0.1,
                        (2, 4, 8, 16) if tiny else (32, 64, 128, 256, 512), 256,
                        {"model": f"CausalTransformer({kw or 'defaults'})", "seq_len": length})
    if name == "cnn":
        channels = 4 if tiny else 16
        return Workload(name, CNN2d(channels=channels).eval().to(dev), ce, _classification((1, 8, 8), 10, dev),
                        *((16, 8) if tiny else (256, 128)), 0.1,
                        (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024,
                        {"model": f"CNN2d(channels={channels})"})
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def estimator_call(w: Workload, name: str, train: Batch, ref: Batch, chunk: int | None = None
                   ) -> Callable[[], Any]:
    """A zero-argument call of estimator ``name`` (``validation.estimators``) on ``w`` returning the scores;
    ``chunk`` is passed as ``chunk_size`` to Ghost and LAI (Exact and TracIn keep their own chunking)."""
    est = get_estimator(name)
    kw = {"chunk_size": chunk} if chunk is not None and est.fn in (influence.ghost, influence.lai) else {}
    return lambda: est(w.model, w.loss_fn, train, ref, w.lr, **kw).scores


def curated_steps(w: Workload, train: Batch, ref: Batch) -> dict[str, Callable[[], Any]]:
    """``CURATED``: one curated SGD step each (``validation.curation.step.curation_step``, keep score >= 0,
    the whole batch when nothing is kept) on a private copy of the model."""
    from .curation.step import curation_step

    def step_fn(method: str) -> Callable[[], Any]:
        model = copy.deepcopy(w.model)
        opt = torch.optim.SGD(model.parameters(), lr=w.lr)

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            return curation_step(model, w.loss_fn, opt, train, ref, method, on_empty="keep_all")
        return step

    return {"curated-lai": step_fn("lai"), "curated-ghost": step_fn("ghost")}


__all__ = ["Workload", "WORKLOADS", "CURATED", "build_workload", "estimator_call", "curated_steps"]
