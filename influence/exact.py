"""Exact influence from per-sample parameter gradients (``torch.func``: vmap of grad of functional_call).

Where ``vmap`` cannot run the model (``nn.GRU``/``nn.LSTM``/``nn.RNN``, data-dependent Python control flow,
``.item()`` calls, ...) the per-sample gradients come from a loop of one autograd backward per sample instead,
with one ``VmapFallbackWarning`` per call: the same numbers (each sample alone, as a batch of one), slower.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from .batch import Batch, LossFn, batch_size, output_tensor, selected_output, take
from .capture import check_modes
from .checks import check_arguments, check_chunk_size, trainable_names
from .errors import InfluenceError
from .losses import per_sample_losses
from .result import InfluenceResult


class VmapFallbackWarning(UserWarning):
    """``torch.func.vmap`` could not run the model; Exact used a per-sample autograd loop (same numbers)."""

DEFAULT_CHUNK = 64


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _functional_output(model: nn.Module, state: dict[str, Tensor], x: Any) -> Tensor:
    if isinstance(x, dict):
        out = functional_call(model, state, args=(), kwargs=x)
    elif isinstance(x, (tuple, list)):
        out = functional_call(model, state, tuple(x))
    else:
        out = functional_call(model, state, (x,))
    return output_tensor(selected_output(model, out))


class _Functional:
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
                raise KeyError(f"checkpoint lacks entries for {missing[:5]}{'...' if len(missing) > 5 else ''}")
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
        """Gradient of the mean loss over ``batch``, accumulated over chunks."""
        total = {k: torch.zeros_like(v) for k, v in self.params.items()}
        for i in range(0, n, chunk):
            part = take(batch, slice(i, i + chunk))
            g = grad(lambda p: self.losses(p, *part).sum())(self.params)
            for k in total:
                total[k] += g[k]
        return {k: v / n for k, v in total.items()}

    def per_sample(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample gradients {name: [n, *shape]}: vmap, or the autograd loop where vmap fails."""
        if self.use_vmap:
            try:
                return vmap(grad(self.sample_loss), in_dims=(None, 0, 0))(self.params, *batch)
            except InfluenceError:
                raise
            except Exception as e:  # vmap cannot run this model: fall back, say so once per call
                self.use_vmap = False
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                warnings.warn(f"influence.exact: torch.func.vmap cannot run {type(self.model).__name__} "
                              f"({type(e).__name__}: {first}); using one autograd backward per sample instead "
                              "(same numbers, slower)", VmapFallbackWarning, stacklevel=3)
        return self.per_sample_loop(batch)

    def per_sample_loop(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample gradients {name: [n, *shape]} from one autograd backward of each sample alone."""
        n = batch_size(batch[0])
        rows: dict[str, list[Tensor]] = {k: [] for k in self.names}
        for i in range(n):
            xi, yi = take(batch, slice(i, i + 1))
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
                loss = self.losses(leaves, xi, yi)[0]
                got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for k, g in zip(leaves, got):
                rows[k].append(torch.zeros_like(leaves[k]) if g is None else g.detach())
        return {k: torch.stack(v) for k, v in rows.items()}


def _check_preconditioner(preconditioner: Mapping[str, Tensor] | None, fn: _Functional) -> dict[str, Tensor]:
    """The preconditioner restricted to the scored parameters, each checked against its parameter's shape."""
    if preconditioner is None:
        return {}
    unknown = sorted(set(preconditioner) - set(dict(fn.model.named_parameters())))
    if unknown:
        raise InfluenceError(f"preconditioner names parameters the model does not have: {unknown[:5]}")
    out = {}
    for k, p in preconditioner.items():
        if k not in fn.params:
            continue
        if tuple(p.shape) != tuple(fn.params[k].shape):
            raise InfluenceError(f"preconditioner[{k!r}] has shape {tuple(p.shape)}; the parameter has "
                                 f"{tuple(fn.params[k].shape)}")
        if not torch.isfinite(p).all():
            raise InfluenceError(f"preconditioner[{k!r}] holds non-finite values")
        out[k] = p.to(fn.params[k].device, fn.params[k].dtype)
    return out


def _group(per_param: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, v in per_param.items():
        m = _module_of(name)
        out[m] = out[m] + v if m in out else v
    return out


def exact(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          params: Iterable[str] | None = None, state: dict[str, Tensor] | None = None,
          chunk_size: int = DEFAULT_CHUNK, preconditioner: Mapping[str, Tensor] | None = None) -> InfluenceResult:
    """Exact first-order influence lr * <grad l_i, grad L_ref> from per-sample gradients.

    ``preconditioner``: {parameter name: P} (same shapes as the parameters), scoring lr * <P (.) grad l_i,
    grad L_ref> instead, the first-order effect of a diagonally preconditioned update such as Adam's (see
    :func:`influence.optim.adam_preconditioner`); parameters without an entry keep P = 1.
    ``params``: restrict to these parameter names (default: all with requires_grad). ``state``: evaluate at
    these parameter/buffer values (a state dict) instead of the model's own. Training samples are processed
    in chunks of ``chunk_size`` (memory ~ chunk_size x number of parameters). ``per_layer`` is keyed by the
    owning module's name.
    """
    n_t, n_v, lr = check_arguments(model, train, ref, lr)
    chunk_size = check_chunk_size(chunk_size, optional=False)
    check_modes(model)
    fn = _Functional(model, loss_fn, params, state)
    fn.check(ref, n_v, "ref")
    precond = _check_preconditioner(preconditioner, fn)
    if pairwise:
        ref_ps = {}
        for i in range(0, n_v, chunk_size):
            for k, v in fn.per_sample(take(ref, slice(i, i + chunk_size))).items():
                ref_ps.setdefault(k, []).append(v.flatten(1))
        ref_flat = {k: torch.cat(v) * precond[k].flatten() if k in precond else torch.cat(v)
                    for k, v in ref_ps.items()}
    else:
        ref_grad = fn.mean_gradient(ref, n_v, chunk_size)
        ref_grad = {k: v * precond[k] if k in precond else v for k, v in ref_grad.items()}
    per_param: dict[str, list[Tensor]] = {k: [] for k in fn.names}
    losses = []
    for i in range(0, n_t, chunk_size):
        part = take(train, slice(i, i + chunk_size))
        losses.append(fn.check(part, min(chunk_size, n_t - i), "train"))
        g = fn.per_sample(part)
        for k in fn.names:
            gk = g[k].flatten(1)
            per_param[k].append(gk @ ref_flat[k].T if pairwise else gk @ ref_grad[k].flatten())
    joined = {k: lr * torch.cat(v) for k, v in per_param.items()}
    per_layer = _group(joined)
    if pairwise:
        per_layer_pw = per_layer
        per_layer = {k: v.mean(1) for k, v in per_layer_pw.items()}
        total_pw = sum(per_layer_pw.values())
        return InfluenceResult("exact", lr, total_pw.mean(1), per_layer, total_pw, per_layer_pw, torch.cat(losses))
    return InfluenceResult("exact", lr, sum(per_layer.values()), per_layer, train_losses=torch.cat(losses))
