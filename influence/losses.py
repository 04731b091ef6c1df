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
from .checks import all_finite
from .errors import LossShapeError, NonFiniteLossError, TargetShapeError


def _soft(logits: Tensor, targets: Tensor) -> bool:
    """Probability (soft) targets: floating, with the shape of the logits."""
    return targets.is_floating_point() and targets.shape == logits.shape


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Per-sample cross-entropy. logits [n, C] with targets [n], or [n, T, C] with [n, T] (mean over the
    sample's tokens whose target is not ``ignore_index``; a sample with no counted token has loss 0).
    Soft targets (class probabilities, floating, the shape of the logits) give -sum_c p_c log softmax(z)_c per
    position (every token counts)."""
    if logits.dim() not in (2, 3):
        raise TargetShapeError(f"cross_entropy takes logits [n, C] or [n, T, C]; got {tuple(logits.shape)}")
    if _soft(logits, targets):
        tok = -(targets * logits.log_softmax(-1)).sum(-1)
        return tok if logits.dim() == 2 else tok.mean(1)
    if targets.is_floating_point() or targets.shape != logits.shape[:-1]:
        raise TargetShapeError(
            f"cross_entropy: logits {tuple(logits.shape)} need integer class targets {tuple(logits.shape[:-1])} or "
            f"probabilities {tuple(logits.shape)}; got {'floating' if targets.is_floating_point() else 'integer'} "
            f"targets {tuple(targets.shape)}")
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)
    n, t, c = logits.shape
    tok = F.cross_entropy(logits.reshape(n * t, c), targets.reshape(n * t), reduction="none",
                          ignore_index=ignore_index).view(n, t)
    counted = (targets != ignore_index).sum(1).clamp(min=1).to(tok.dtype)
    return tok.sum(1) / counted


def _trailing_ones(shape: tuple[int, ...], like: tuple[int, ...]) -> bool:
    return shape[:len(like)] == like and all(s == 1 for s in shape[len(like):])


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared error, summed over output dimensions, halved: 0.5 * ||f - y||^2.

    ``outputs`` and ``targets`` must have the same shape up to trailing size-1 dimensions ([n, 1] against [n]
    pairs f_i with y_i); anything else raises ``TargetShapeError`` (a broadcast of [n, 1] against [n] would pair
    every output with every target)."""
    o, t = tuple(outputs.shape), tuple(targets.shape)
    if o != t and not (_trailing_ones(o, t) or _trailing_ones(t, o)):
        raise TargetShapeError(f"mse: outputs {o} and targets {t} differ in shape (beyond trailing size-1 "
                               "dimensions); reshape one of them")
    n = outputs.shape[0] if outputs.dim() else 1
    return 0.5 * (outputs.reshape(n, -1) - targets.reshape(n, -1)).pow(2).sum(1)


def per_sample_losses(loss_fn: LossFn, f: Tensor, targets: Any, n: int, where: str) -> Tensor:
    """Call ``loss_fn`` and check it returned finite per-sample losses of shape [n]."""
    losses = loss_fn(f, targets)
    if not isinstance(losses, Tensor) or losses.shape != (n,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise LossShapeError(
            f"loss_fn must return per-sample losses of shape [{n}] for the {where} batch; got {shape}. "
            "Use reduction='none' (and average token losses within each sample).")
    return _finite(losses, n, where)


def _finite(losses: Tensor, n: int, where: str) -> Tensor:
    """``losses``, after raising ``NonFiniteLossError`` naming the samples whose loss is NaN or infinite."""
    if all_finite(losses):
        return losses
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten()[:10].tolist()
        raise NonFiniteLossError(f"non-finite loss for {where} samples {idx} (of {n})")
    return losses


def output_gradient(loss_fn: LossFn, f: Tensor, targets: Any, where: str = "train") -> tuple[Tensor, Tensor]:
    """g = d l_i / d f_i for every sample, from the outputs alone (no backward through the network).

    Returns (losses [n], g with the shape of f). Cross-entropy from this module with integer targets uses the
    closed form (``cross_entropy_gradient``); so does a loss that carries its own closed form as an attribute
    ``output_gradient(f, targets, where) -> (losses, g)`` (``influence.hf.causal_lm_loss``); any other loss
    (soft targets included) uses autograd on f only.
    """
    n = f.shape[0]
    own = getattr(loss_fn, "output_gradient", None)
    if own is not None:
        return own(f.detach(), targets, where)
    if loss_fn is cross_entropy and f.dim() in (2, 3) and isinstance(targets, Tensor) and \
            not targets.is_floating_point() and targets.shape == f.shape[:-1]:
        return cross_entropy_gradient(f, targets, where)
    f = f.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = per_sample_losses(loss_fn, f, targets, n, where)
        (g,) = torch.autograd.grad(losses.sum(), f)
    return losses.detach(), g


def cross_entropy_gradient(f: Tensor, targets: Tensor, where: str = "train", ignore_index: int = -100
                           ) -> tuple[Tensor, Tensor]:
    """(``cross_entropy(f, targets)``, its gradient in f) in closed form for integer targets, f [n, C] or
    [n, T, C]: one log-softmax gives the token losses and g = softmax - onehot (zero for ignored targets, divided
    by the sample's number of counted tokens for sequences); no autograd."""
    n = f.shape[0]
    f = f.detach()  # outside autograd without a no_grad context (which costs as much as one small op)
    if f.dim() == 2:  # cross_entropy's own 2-D computation, log-softmax then NLL (which checks the targets'
        logp = F.log_softmax(f, -1)  # range), the log-softmax reused for g
        losses = _finite(F.nll_loss(logp, targets, reduction="none", ignore_index=ignore_index), n, where)
        g = logp.exp_()
        if targets.min().item() >= 0:  # no ignored target: softmax - onehot
            g.scatter_(-1, targets.unsqueeze(-1), -1.0, reduce="add")
            return losses, g
        counted = targets != ignore_index
        safe = torch.where(counted, targets, 0)
    else:
        counted = targets != ignore_index
        safe = torch.where(counted, targets, 0)
        if bool((safe < 0).any()) or bool((safe >= f.shape[-1]).any()):
            raise TargetShapeError(f"cross_entropy: a target is outside [0, {f.shape[-1]}) for the {where} batch")
        logp = F.log_softmax(f, -1)
        nll = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1).neg_().mul_(counted.to(logp.dtype))
        count = counted.sum(1).clamp(min=1).to(logp.dtype)
        losses = _finite(nll.sum(1) / count, n, where)
        g = logp.exp_()
    g.scatter_add_(-1, safe.unsqueeze(-1), -counted.unsqueeze(-1).to(g.dtype))
    ignored = (~counted).nonzero(as_tuple=True)
    if ignored[0].numel():
        g[ignored] = 0  # only the ignored positions' rows are written
    if f.dim() == 3:
        g.div_(count.view(n, 1, 1))
    return losses, g
