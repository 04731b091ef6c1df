"""The workloads ``lai bench`` measures: a model, a loss, a batch maker and the batch sizes of the cost targets.

Synthetic inputs from a fixed seed (the cost of these models does not depend on the values):

* ``mlp``: MLP 40-512-512-10, 256 train / 128 reference samples;
* ``transformer``: ``CausalTransformer()`` defaults, 32 train / 16 reference sequences of 128 tokens;
* ``cnn``: ``CNN2d()`` on 8x8 images, 256 train / 128 reference samples;
* ``cnn1d``: ``CNN1d(channels=32)`` (the fidelity suite's paper width) on MNIST-1D-shaped inputs of length 40,
  256 train / 128 reference samples.

``tiny=True`` shrinks models and batches to seconds (tests). ``WorkloadSpec`` holds a workload's settings in the
vocabulary of ``validation.settings.config``; ``Workload`` is the built model, loss and batch maker.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import influence
from influence.batch import Batch, LossFn
from influence.estimators import get_estimator
from validation.training.models import build_model

WORKLOADS = ("mlp", "transformer", "cnn", "cnn1d")
CURATED = ("curated-lai", "curated-ghost")  # a curated SGD step (keep score >= 0) with LAI / Ghost scores


@dataclass(frozen=True)
class WorkloadSpec:
    """The settings of one workload (field names as in ``validation.settings.config``).

    dataset "synthetic": seeded random inputs, ``data_kw`` {"shape": input shape, "num_classes": K} (random
    labels) or {"vocab_size": V, "seq_len": T} (random token ids, targets the ids shifted by one); model,
    model_kw: ``validation.training.models.build_model``; n_score training and n_ref reference samples of the cost
    targets; lr; sizes: training batch sizes of the scaling sweep; big_chunk: training samples per chunk of the
    ``--big`` run (bounded memory)."""

    name: str
    model: str
    model_kw: dict[str, Any]
    data_kw: dict[str, Any]
    n_score: int
    n_ref: int
    sizes: tuple[int, ...]
    big_chunk: int
    lr: float = 0.1
    dataset: str = "synthetic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Workload:
    """A built workload: its ``spec``, the model (eval mode, on the device), the loss and a batch maker
    ``make(n, generator) -> (inputs, targets)`` on the device."""

    spec: WorkloadSpec
    model: nn.Module
    loss_fn: LossFn
    make: Callable[[int, torch.Generator], Batch]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def workload_spec(name: str, tiny: bool = False) -> WorkloadSpec:
    """The settings of workload ``name`` (``WORKLOADS``); ``tiny``: seconds-sized models and batches."""
    if name == "mlp":
        return WorkloadSpec(name, "mlp", {"d_in": 40, "hidden": (16, 16) if tiny else (512, 512), "n_classes": 10},
                            {"shape": (40,), "num_classes": 10}, *((16, 8) if tiny else (256, 128)),
                            (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024)
    if name == "transformer":
        kw = dict(d_model=16, n_layers=1, n_heads=2, max_len=16) if tiny else {}
        return WorkloadSpec(name, "transformer", kw, {"vocab_size": 256, "seq_len": kw.get("max_len", 128)},
                            *((4, 2) if tiny else (32, 16)), (2, 4, 8, 16) if tiny else (32, 64, 128, 256, 512), 256)
    if name == "cnn":
        return WorkloadSpec(name, "cnn2d", {"channels": 4 if tiny else 16}, {"shape": (1, 8, 8), "num_classes": 10},
                            *((16, 8) if tiny else (256, 128)),
                            (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024)
    if name == "cnn1d":
        return WorkloadSpec(name, "cnn1d", {"channels": 4 if tiny else 32}, {"shape": (1, 40), "num_classes": 10},
                            *((16, 8) if tiny else (256, 128)),
                            (8, 16, 32, 64) if tiny else (256, 512, 1024, 2048, 4096), 1024)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def _batches(data_kw: dict[str, Any], device: torch.device) -> Callable[[int, torch.Generator], Batch]:
    if "vocab_size" in data_kw:
        vocab, length = int(data_kw["vocab_size"]), int(data_kw["seq_len"])

        def tokens(n: int, gen: torch.Generator) -> Batch:
            ids = torch.randint(0, vocab, (n, length + 1), generator=gen).to(device)
            return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        return tokens
    shape, classes = tuple(data_kw["shape"]), int(data_kw["num_classes"])

    def labelled(n: int, gen: torch.Generator) -> Batch:
        return (torch.randn(n, *shape, generator=gen).to(device),
                torch.randint(0, classes, (n,), generator=gen).to(device))
    return labelled


def _describe(spec: WorkloadSpec) -> dict[str, Any]:
    kw = spec.model_kw
    if spec.model == "mlp":
        text = f"MLP {kw['d_in']}-{'-'.join(map(str, kw['hidden']))}-{kw['n_classes']}"
    elif spec.model == "transformer":
        text = f"CausalTransformer({kw or 'defaults'})"
    else:
        text = f"{'CNN1d' if spec.model == 'cnn1d' else 'CNN2d'}({', '.join(f'{k}={v}' for k, v in kw.items())})"
    extra = {"seq_len": spec.data_kw["seq_len"]} if "seq_len" in spec.data_kw else {}
    return {"model": text, **extra, "spec": spec.to_dict()}


def build_workload(name: str, tiny: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> Workload:
    """The issue's reference workloads (models initialised under ``torch.manual_seed(seed)``, in eval mode on
    ``device``)."""
    spec = workload_spec(name, tiny)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_model(spec.model, **spec.model_kw).eval().to(dev)
    return Workload(spec, model, influence.cross_entropy, _batches(spec.data_kw, dev), _describe(spec))


def estimator_call(w: Workload, name: str, train: Batch, ref: Batch, chunk: int | None = None
                   ) -> Callable[[], Any]:
    """A zero-argument call of the registered estimator ``name`` (``influence.estimate``) on ``w`` returning the
    scores; ``chunk`` is passed as ``chunk_size`` to those without per-sample gradients (Ghost, LAI: Exact and
    TracIn keep their own chunking)."""
    per_sample = get_estimator(name).caps.per_sample_gradients
    kw = {"chunk_size": chunk} if chunk is not None and not per_sample else {}
    return lambda: influence.estimate(name, w.model, w.loss_fn, train, ref, w.spec.lr, **kw).scores


def curated_steps(w: Workload, train: Batch, ref: Batch) -> dict[str, Callable[[], Any]]:
    """``CURATED``: one curated SGD step each (``influence.curation.curation_step``, keep score >= 0,
    the whole batch when nothing is kept) on a private copy of the model."""
    from influence.curation import curation_step

    def step_fn(method: str) -> Callable[[], Any]:
        model = copy.deepcopy(w.model)
        opt = torch.optim.SGD(model.parameters(), lr=w.spec.lr)

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            return curation_step(model, w.loss_fn, opt, train, ref, method, on_empty="keep_all")
        return step

    return {"curated-lai": step_fn("lai"), "curated-ghost": step_fn("ghost")}


__all__ = ["Workload", "WorkloadSpec", "WORKLOADS", "CURATED", "workload_spec", "build_workload", "estimator_call",
           "curated_steps"]
