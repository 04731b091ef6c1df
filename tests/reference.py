"""The one reference the estimator tests compare against: per-sample gradients by plain autograd.

``reference_scores`` = lr * <grad l_i, mean_v grad l_v> with every grad l_i taken by its own
``torch.autograd.grad`` call on one batched forward pass (so coupling between samples, if a model had any, would
show), over all trainable parameters or the named ones. Nothing from ``influence`` but the model-call and
output-selection convention (``call_model``, ``output_tensor``) is used.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from influence.batch import call_model, output_tensor


def _params(model: nn.Module, names: Iterable[str] | None) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    if names is None:
        return [p for p in named.values() if p.requires_grad]
    return [named[n] for n in names]


def per_sample_gradients(model: nn.Module, loss_fn: Any, batch: Any,
                         names: Iterable[str] | None = None) -> torch.Tensor:
    """[n, P]: row i = flattened d l_i / d params from one batched forward (parameters unused by l_i: zeros)."""
    params = _params(model, names)
    with torch.enable_grad():
        losses = loss_fn(output_tensor(call_model(model, batch[0])), batch[1])
        rows = []
        for li in losses:
            got = torch.autograd.grad(li, params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g.to_dense()).flatten()  # sparse: Embedding
                                   for p, g in zip(params, got)]))
    return torch.stack(rows)


def reference_scores(model: nn.Module, loss_fn: Any, train: Any, ref: Any, lr: float,
                     names: Iterable[str] | None = None) -> torch.Tensor:
    """lr * <grad l_i, grad L_ref> [n_train], L_ref the mean reference loss."""
    names = list(names) if names is not None else None
    ref_grad = per_sample_gradients(model, loss_fn, ref, names).mean(0)
    return lr * per_sample_gradients(model, loss_fn, train, names) @ ref_grad


def reference_pairwise(model: nn.Module, loss_fn: Any, train: Any, ref: Any, lr: float,
                       names: Iterable[str] | None = None) -> torch.Tensor:
    """lr * <grad l_i, grad l_v> [n_train, n_ref]."""
    names = list(names) if names is not None else None
    return lr * per_sample_gradients(model, loss_fn, train, names) @ per_sample_gradients(model, loss_fn, ref, names).T
