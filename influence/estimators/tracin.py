"""TracIn: influence summed over training checkpoints, sum_k lr_k <grad l(w_k, z_i), grad L_ref(w_k)>."""

from __future__ import annotations

import os
from typing import Iterable, Union

import torch
from torch import Tensor, nn

from ..batch import Batch, LossFn, model_device
from ..capture import capture_forward, output_layer, plan
from ..checks import check_batch, check_lr
from ..errors import InvalidArgumentError
from ..gradients import DEFAULT_CHUNK
from ..memory import require_fits
from ..result import Chunk
from .exact import ExactBackend
from .protocol import BaseBackend, Routed, Settings
from .registry import Capabilities, Estimator

Checkpoint = tuple[Union[dict[str, Tensor], str, os.PathLike], float]


def load_checkpoint(source: dict[str, Tensor] | str | os.PathLike, device: torch.device) -> dict[str, Tensor]:
    """A state dict, or one read from disk with ``torch.load(weights_only=True)`` (no pickled code runs)."""
    if isinstance(source, dict):
        return source
    return torch.load(source, map_location=device, weights_only=True)


def last_layer_params(model: nn.Module, loss_fn: LossFn, ref: Batch) -> list[str]:
    """Parameter names of the output layer (the layer whose output tensor is the model output; it needs a rule
    with an LAI term in ``influence.layers``).

    A weight tied to another layer (GPT-2's lm_head and wte) is listed under its canonical name, and its
    gradient then includes both uses of the shared matrix: it is the gradient of that parameter."""
    pl = plan(model, fallback="exact")
    cap = capture_forward(model, loss_fn, ref, pl.modules, check_batch(ref, "ref"), "ref", rules=pl.rules)
    own = {id(p) for p in pl.modules[output_layer(cap, pl)].parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) in own]


class TracInBackend(BaseBackend):
    """TracIn as a sum over checkpoints of Exact backends, each evaluated at its checkpoint's parameters with its
    learning rate; ``last_layer`` restricts every checkpoint to the output layer's parameters (found on the first
    reference batch). All checkpoints are loaded once and kept with their reference gradients."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, checkpoints: Iterable[Checkpoint], *,
                 last_layer: bool = False, chunk_size: int = DEFAULT_CHUNK, memory_budget: int | None = None) -> None:
        self.checkpoints = list(checkpoints)
        self.budget = memory_budget
        if not self.checkpoints:
            raise InvalidArgumentError("tracin needs at least one (state_dict, lr) checkpoint")
        self.model, self.loss_fn, self.last, self.chunk = model, loss_fn, last_layer, chunk_size
        self.estimator = "tracin-last" if last_layer else "tracin"
        self.lr = float(sum(check_lr(lr) for _, lr in self.checkpoints))
        self.parts: list[ExactBackend] | None = None

    def self_products(self, batch: Batch, n: int) -> Tensor:
        """[n]: sum over checkpoints of lr_k * ||grad l(w_k, z_i)||^2."""
        return sum(part.self_products(batch, n) for part in self.parts)

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        self.args = (n_train, pairwise, streamed)
        self.parts = None

    def add_reference(self, batch: Batch, n: int) -> Routed:
        if self.parts is None:
            names = last_layer_params(self.model, self.loss_fn, batch) if self.last else None
            device = model_device(self.model)
            self.parts = [ExactBackend(self.model, self.loss_fn, check_lr(lr), params=names,
                                       state=load_checkpoint(source, device), chunk_size=self.chunk,
                                       memory_budget=self.budget)
                          for source, lr in self.checkpoints]
            kept = len(self.parts) * self.parts[0].sample_bytes * 2  # each checkpoint's weights and reference gradient
            require_fits(kept, self.parts[0].budget, f"influence.tracin: {len(self.parts)} checkpoints kept with their "
                         "reference gradients", "use fewer checkpoints or tracin-last")
            for part in self.parts:
                part.start(*self.args)
        for part in self.parts:
            part.add_reference(batch, n)
        return {}

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` ([n] samples) against the reference; ``keep_graph`` has nothing to keep here (the
        per-sample gradients come from their own passes)."""
        chunks = [part.score(batch, n) for part in self.parts]
        named: dict[str, Tensor] = {}
        for c in chunks:
            for k, v in c.named.items():
                named[k] = named[k] + v if k in named else v
        return Chunk(named, chunks[-1].losses)


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed) -> TracInBackend:
    return TracInBackend(model, loss_fn, s.checkpoints, last_layer=s.last_layer, chunk_size=s.chunk,
                         memory_budget=s.budget)


CAPS = Capabilities(per_sample_gradients=True, checkpoints=True)
ENTRIES = (
    Estimator("tracin", "TracIn", build, CAPS, family="tracin",
              description="sum over checkpoints of lr_k <grad l(w_k, z_i), grad L_ref(w_k)>"),
    Estimator("tracin-last", "TracIn (last layer)", build, CAPS, {"last_layer": True}, family="tracin",
              description="TracIn on the output layer's parameters only"),
)
