"""TracIn: influence summed over training checkpoints, sum_k lr_k <grad l(w_k, z_i), grad L_ref(w_k)>."""

from __future__ import annotations

import os
from typing import Iterable, Union

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, model_device
from .capture import capture_forward, plan
from .batch import check_batch
from .exact import DEFAULT_CHUNK, exact
from .lai import last_layer
from .result import InfluenceResult

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
    cap = capture_forward(model, loss_fn, ref, pl.modules, check_batch(ref, "ref"), "ref")
    own = {id(p) for p in pl.modules[last_layer(cap, pl)].parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) in own]


def tracin(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, checkpoints: Iterable[Checkpoint], *,
           last_layer: bool = False, pairwise: bool = False, chunk_size: int = DEFAULT_CHUNK) -> InfluenceResult:
    """TracIn over ``checkpoints`` = [(state_dict or path, lr), ...]; ``last_layer=True`` restricts every
    checkpoint's gradients to the output layer (the cheap variant). ``lr`` of the result is the sum of lrs."""
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("tracin needs at least one (state_dict, lr) checkpoint")
    names = last_layer_params(model, loss_fn, ref) if last_layer else None
    device = model_device(model)
    total: InfluenceResult | None = None
    for source, lr in checkpoints:
        r = exact(model, loss_fn, train, ref, lr, pairwise=pairwise, params=names,
                  state=load_checkpoint(source, device), chunk_size=chunk_size)
        if total is None:
            total = r
            continue
        total.scores = total.scores + r.scores
        total.per_layer = {k: total.per_layer[k] + r.per_layer[k] for k in total.per_layer}
        if pairwise:
            total.pairwise = total.pairwise + r.pairwise
            total.per_layer_pairwise = {k: total.per_layer_pairwise[k] + r.per_layer_pairwise[k]
                                        for k in total.per_layer_pairwise}
    total.estimator = "tracin-last" if last_layer else "tracin"
    total.lr = float(sum(lr for _, lr in checkpoints))
    return total
