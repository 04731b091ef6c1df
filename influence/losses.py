"""Per-sample losses in the package's one convention, and the loss-to-output gradient g = dl/df.

Convention: ``loss_fn(f, targets)`` returns one loss per sample, shape [n]. A token-level language-model
loss is the mean over the sample's counted tokens (targets equal to ``ignore_index`` count for nothing).
The reference loss is the mean of the per-sample losses over the reference batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .batch import LossFn
from .errors import LossShapeError, NonFiniteLossError


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Per-sample cross-entropy. logits [n, C] with targets [n], or [n, T, C] with [n, T] (mean over the
    sample's tokens whose target is not ``ignore_index``; a sample with no counted token has loss 0)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)
    n, t, c = logits.shape
    tok = F.cross_entropy(logits.reshape(n * t, c), targets.reshape(n * t), reduction="none",
                          ignore_index=ignore_index).view(n, t)
    counted = (targets != ignore_index).sum(1).clamp(min=1).to(tok.dtype)
    return tok.sum(1) / counted


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared error, summed over output dimensions, halved: 0.5 * ||f - y||^2."""
    return 0.5 * (outputs - targets).pow(2).flatten(1).sum(1)


def per_sample_losses(loss_fn: LossFn, f: Tensor, targets: Any, n: int, where: str) -> Tensor:
    """Call ``loss_fn`` and check it returned finite per-sample losses of shape [n]."""
    losses = loss_fn(f, targets)
    if not isinstance(losses, Tensor) or losses.shape != (n,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise LossShapeError(
            f"loss_fn must return per-sample losses of shape [{n}] for the {where} batch; got {shape}. "
            "Use reduction='none' (and average token losses within each sample).")
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten()[:10].tolist()
        raise NonFiniteLossError(f"non-finite loss for {where} samples {idx} (of {n})")
    return losses


def output_gradient(loss_fn: LossFn, f: Tensor, targets: Any, where: str = "train") -> tuple[Tensor, Tensor]:
    """g = d l_i / d f_i for every sample, from the outputs alone (no backward through the network).

    Returns (losses [n], g with the shape of f). Cross-entropy from this module uses the closed form
    (softmax - onehot, divided by the number of counted tokens); any other loss uses autograd on f only.
    """
    n = f.shape[0]
    if loss_fn is cross_entropy and f.dim() in (2, 3):
        with torch.no_grad():
            losses = per_sample_losses(loss_fn, f, targets, n, where)
            g = f.softmax(-1)
            counted = targets != -100
            safe = targets.clamp(min=0)
            g.scatter_add_(-1, safe.unsqueeze(-1), -torch.ones_like(safe, dtype=g.dtype).unsqueeze(-1))
            g = g * counted.unsqueeze(-1).to(g.dtype)
            if f.dim() == 3:
                g = g / counted.sum(1).clamp(min=1).to(g.dtype).view(n, 1, 1)
        return losses, g
    f = f.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = per_sample_losses(loss_fn, f, targets, n, where)
        (g,) = torch.autograd.grad(losses.sum(), f)
    return losses.detach(), g
