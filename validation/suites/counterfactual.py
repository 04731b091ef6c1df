"""The true one-step counterfactual: how much the reference loss changes when a sample is left out of one SGD step.

For a scored batch B of n samples, weights w and learning rate lr, the step on the batch mean loss is
``w_B = w - (lr / n) * sum_{j in B} grad l_j(w)``. Leaving sample i out of that step (the other samples keep
their weight 1/n) gives ``w_{B-i} = w_B + (lr / n) * grad l_i(w)``. The counterfactual score is

    cf_i = n * (L_ref(w_{B-i}) - L_ref(w_B)),

scaled by n so that to first order cf_i = lr * <grad l_i, grad L_ref> = the influence score, with the same
sign convention: positive = the sample helps (without it the reference loss after the step is higher).
Computed exactly by taking the steps (torch.func: per-sample gradients, then the reference loss at the n
left-out weights, vmapped in chunks). Use float64: the differences are ~lr/n of the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from influence.batch import Batch, LossFn, output_tensor


def _split(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    fixed = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    fixed.update({k: b.detach() for k, b in model.named_buffers()})
    return params, fixed


def _call(model: nn.Module, state: dict[str, Tensor], x: Any) -> Tensor:
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return output_tensor(functional_call(model, state, args))


def per_sample_gradients(model: nn.Module, loss_fn: LossFn, batch: Batch, chunk_size: int = 64
                         ) -> dict[str, Tensor]:
    """{parameter name: [n, *shape]} gradients of each sample's loss (trainable parameters only)."""
    params, fixed = _split(model)
    x, y = batch

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(_call(model, {**fixed, **p}, xi.unsqueeze(0)), yi.unsqueeze(0))[0]

    parts = [vmap(grad(one), in_dims=(None, 0, 0))(params, x[i:i + chunk_size], y[i:i + chunk_size])
             for i in range(0, len(y), chunk_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in params}


def reference_loss(model: nn.Module, loss_fn: LossFn, ref: Batch, params: dict[str, Tensor]) -> Tensor:
    """Mean loss over ``ref`` at the trainable weights ``params`` (other parameters and buffers as in model)."""
    _, fixed = _split(model)
    return loss_fn(_call(model, {**fixed, **params}, ref[0]), ref[1]).mean()


def one_step_counterfactual(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float,
                            chunk_size: int = 16) -> Tensor:
    """cf_i = n * (L_ref(w_{B-i}) - L_ref(w_B)) for every sample of ``train`` (see the module docstring). [n]

    ``model`` is not modified. Inputs must be a tensor (or tuple of tensors) with the sample dimension first.
    """
    params, _ = _split(model)
    n = len(train[1])
    grads = per_sample_gradients(model, loss_fn, train)
    w_full = {k: params[k] - (lr / n) * grads[k].sum(0) for k in params}
    with torch.no_grad():
        base = reference_loss(model, loss_fn, ref, w_full)
        left_out = []
        for i in range(0, n, chunk_size):
            stack = {k: w_full[k].unsqueeze(0) + (lr / n) * grads[k][i:i + chunk_size] for k in params}
            left_out.append(vmap(lambda p: reference_loss(model, loss_fn, ref, p))(stack))
    return n * (torch.cat(left_out) - base)


__all__ = ["one_step_counterfactual", "per_sample_gradients", "reference_loss"]
