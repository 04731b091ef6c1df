"""Per-sample parameter gradients from ``torch.func`` (vmap of grad of functional_call, or an autograd loop where
vmap cannot run the model) and the backend that scores with them: Exact's, which TracIn sums over checkpoints and a
session uses for the parameters Ghost cannot factor."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from .batch import Batch, LossFn, batch_size, output_tensor, selected_output, take
from .capture import dense_grad, plan
from .coupling import check_cached
from .checks import check_chunk_size, trainable_names
from .errors import InfluenceError, named_checkpointing_errors
from .losses import per_sample_losses
from .memory import require_fits, resolve_budget
from .result import Chunk


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


class ExactBackend:
    """Exact's reference gradient (mean over the reference samples, streamed batch by batch; per-sample when
    ``pairwise``) and training-batch scores from per-sample gradients in chunks of ``chunk_size``.

    ``params``: parameter names to score (default all trainable); ``state``: evaluate at these parameter and buffer
    values (a checkpoint) instead of the model's own; ``preconditioner``: {name: P} (Adam's update)."""

    estimator = "exact"

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, params: Iterable[str] | None = None,
                 state: dict[str, Tensor] | None = None, chunk_size: int = DEFAULT_CHUNK,
                 preconditioner: Mapping[str, Tensor] | None = None, memory_budget: int | None = None) -> None:
        plan(model)  # the modes, and layer options whose per-sample gradients are undefined: refused as by Ghost
        self.lr, self.chunk = lr, check_chunk_size(chunk_size, optional=False)
        self.fn = _Functional(model, loss_fn, params, state)
        self.precond = _check_preconditioner(preconditioner, self.fn)
        self.pairwise = False
        self.budget = resolve_budget(memory_budget, next(iter(self.fn.params.values()), torch.zeros(())).device)
        # one sample's gradient of every scored parameter: chunks of per-sample gradients fit the budget
        self.sample_bytes = sum(v.numel() * v.element_size() for v in self.fn.params.values())
        require_fits(self.sample_bytes, self.budget, "influence.exact: one sample's gradient",
                     "score fewer parameters (params=...) or use ghost / lai")
        self.chunk = max(1, min(self.chunk, self.budget // max(1, self.sample_bytes)))

    def routed_names(self) -> list[str]:
        return []

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        self.pairwise, self.n_ref = pairwise, 0
        self.ref: dict[str, Tensor] | dict[str, list[Tensor]] = {}

    def _kept(self, n: int) -> None:
        """Pairwise products keep every reference sample's gradient: refuse before the ``n`` next ones would take
        the budget (with one chunk of training gradients beside them)."""
        if self.pairwise:
            require_fits((self.n_ref + n + self.chunk) * self.sample_bytes, self.budget,
                         f"influence.exact(pairwise=True): the gradients of {self.n_ref + n} reference samples",
                         "use fewer reference samples, pairwise=False, or ghost / lai")

    def add_reference(self, batch: Batch, n: int) -> None:
        self.fn.check(batch, n, "ref")
        self._kept(n)
        check_cached(self.fn.model, self.fn.loss_fn, batch, n, "ref")
        if self.pairwise:
            for i in range(0, n, self.chunk):
                for k, v in self.fn.per_sample(take(batch, slice(i, i + self.chunk))).items():
                    v = v.reshape(v.shape[0], -1)  # [n, numel]; a 0-dim parameter gives [n, 1]
                    self.ref.setdefault(k, []).append(v * self.precond[k].flatten() if k in self.precond else v)
        else:
            g = self.fn.mean_gradient(batch, n, self.chunk)
            for k, v in g.items():
                self.ref[k] = self.ref[k] + v * n if k in self.ref else v * n
        self.n_ref += n

    def _reference(self) -> dict[str, Tensor]:
        if self.pairwise:
            return {k: torch.cat(v) for k, v in self.ref.items()}
        return {k: (v / self.n_ref) * self.precond[k] if k in self.precond else v / self.n_ref
                for k, v in self.ref.items()}

    def score(self, batch: Batch, n: int, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` ([n] samples) against the reference; ``keep_graph`` has nothing to keep here (the
        per-sample gradients come from their own passes)."""
        check_cached(self.fn.model, self.fn.loss_fn, batch, n, "train")
        ref = self._reference()
        per_param: dict[str, list[Tensor]] = {k: [] for k in self.fn.names}
        losses = []
        for i in range(0, n, self.chunk):
            part = take(batch, slice(i, i + self.chunk))
            losses.append(self.fn.check(part, min(self.chunk, n - i), "train"))
            g = self.fn.per_sample(part)
            for k in self.fn.names:
                gk = g[k].reshape(g[k].shape[0], -1)  # [n, numel] (a 0-dim parameter: [n, 1])
                per_param[k].append(gk @ ref[k].T if self.pairwise else gk @ ref[k].flatten())
        named = _group({k: self.lr * torch.cat(v) for k, v in per_param.items()})
        return Chunk(named, torch.cat(losses))

    def self_products(self, batch: Batch, n: int) -> Tensor:
        """[n]: lr * ||grad l_i||^2 (preconditioned: lr * <P (.) grad l_i, grad l_i>)."""
        check_cached(self.fn.model, self.fn.loss_fn, batch, n, "train")
        out = []
        for i in range(0, n, self.chunk):
            g = self.fn.per_sample(take(batch, slice(i, i + self.chunk)))
            out.append(sum(((g[k] * self.precond[k] if k in self.precond else g[k]) * g[k]).reshape(g[k].shape[0], -1).sum(1)
                           for k in self.fn.names))
        return self.lr * torch.cat(out)
