"""Per-sample parameter gradients from ``torch.func`` (vmap of grad of functional_call, or an autograd loop where
vmap cannot run the model): what Exact scores with (``influence.estimators.exact``), which TracIn sums over
checkpoints and a session uses for the parameters Ghost cannot factor."""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .batch import Batch, LossFn, batch_size, output_tensor, selected_output, take
from .capture import dense_grad
from .checks import trainable_names
from .compat import tree_map
from .errors import CheckpointMismatchError, InfluenceError, VmapFallbackWarning, named_checkpointing_errors
from .losses import per_sample_losses

DEFAULT_CHUNK = 64


def _functional_output(model: nn.Module, state: dict[str, Tensor], x: Any) -> Tensor:
    if isinstance(x, dict):
        out = functional_call(model, state, args=(), kwargs=x)
    elif isinstance(x, (tuple, list)):
        out = functional_call(model, state, tuple(x))
    else:
        out = functional_call(model, state, (x,))
    return output_tensor(selected_output(model, out))


class Functional:
    """The model as a function of a subset of its trainable parameters (others and buffers held fixed)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, names: Iterable[str] | None,
                 state: dict[str, Tensor] | None) -> None:
        self.model, self.loss_fn = model, loss_fn
        values = dict(model.named_parameters())
        values.update(dict(model.named_buffers()))
        if state is not None:
            persistent = model.state_dict().keys()  # non-persistent buffers are never in a checkpoint
            state = {**{k: v for k, v in values.items() if k not in persistent}, **state}
            missing = [k for k in values if k not in state]
            if missing:
                raise CheckpointMismatchError(f"checkpoint lacks entries for {missing[:5]}{'...' if len(missing) > 5 else ''}")
            values = {k: state[k].to(values[k].device, values[k].dtype) for k in values}
        wanted = trainable_names(model, names)
        self.names = wanted
        self.use_vmap = True
        self.params = {n: values[n].detach() for n in wanted}
        self.fixed = {n: v.detach() for n, v in values.items() if n not in self.params}

    def losses(self, params: dict[str, Tensor], x: Any, y: Any) -> Tensor:
        return self.loss_fn(_functional_output(self.model, {**self.fixed, **params}, x), y)

    def sample_loss(self, params: dict[str, Tensor], x: Any, y: Any) -> Tensor:
        xb = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, x)
        yb = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, y)
        return self.losses(params, xb, yb)[0]

    def check(self, batch: Batch, n: int, where: str) -> Tensor:
        with torch.no_grad():
            return per_sample_losses(self.loss_fn, _functional_output(self.model, {**self.fixed, **self.params},
                                                                        batch[0]), batch[1], n, where)

    def mean_gradient(self, batch: Batch, n: int, chunk: int) -> dict[str, Tensor]:
        """Gradient of the mean loss over ``batch``, accumulated over chunks (``torch.func.grad``, or autograd
        where torch.func cannot run the model)."""
        total = {k: torch.zeros_like(v) for k, v in self.params.items()}
        for i in range(0, n, chunk):
            part = take(batch, slice(i, i + chunk))
            g = self._sum_gradient(part)
            for k in total:
                total[k] += g[k]
        return {k: v / n for k, v in total.items()}

    def _sum_gradient(self, part: Batch) -> dict[str, Tensor]:
        if self.use_vmap:
            try:
                return grad(lambda p: self.losses(p, *part).sum())(self.params)
            except InfluenceError:
                raise
            except Exception as e:  # torch.func cannot run this model (a custom autograd.Function, saved-tensor
                self._fall_back(e)  # hooks of activation checkpointing, ...): autograd instead
        return self._autograd(lambda leaves: self.losses(leaves, *part).sum())

    def _autograd(self, loss_of) -> dict[str, Tensor]:
        """{name: d loss / d param} with one ``torch.autograd.grad`` call (a named error for what autograd refuses)."""
        with torch.enable_grad(), named_checkpointing_errors("influence.exact"):
            leaves = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
            got = torch.autograd.grad(loss_of(leaves), list(leaves.values()), allow_unused=True)
        return {k: dense_grad(leaves[k], g).detach() for k, g in zip(leaves, got)}

    def _fall_back(self, e: Exception) -> None:
        """Stop using torch.func for this call and say so once."""
        self.use_vmap = False
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        warnings.warn(f"influence.exact: torch.func cannot run {type(self.model).__name__} "
                      f"({type(e).__name__}: {first}); using autograd instead, one backward per sample "
                      "(same numbers, slower)", VmapFallbackWarning, stacklevel=4)

    def per_sample(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample gradients {name: [n, *shape]}: vmap, or the autograd loop where vmap fails."""
        if self.use_vmap:
            try:
                return vmap(grad(self.sample_loss), in_dims=(None, 0, 0))(self.params, *batch)
            except InfluenceError:
                raise
            except Exception as e:  # vmap cannot run this model: fall back, say so once per call
                self._fall_back(e)
        return self.per_sample_loop(batch)

    def per_sample_loop(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample gradients {name: [n, *shape]} from one autograd backward of each sample alone."""
        n = batch_size(batch[0])
        rows: dict[str, list[Tensor]] = {k: [] for k in self.names}
        for i in range(n):
            xi, yi = take(batch, slice(i, i + 1))
            for k, g in self._autograd(lambda leaves: self.losses(leaves, xi, yi)[0]).items():
                rows[k].append(g)
        return {k: torch.stack(v) for k, v in rows.items()}
