"""Exact influence from per-sample parameter gradients (``influence.gradients``: vmap of grad of functional_call,
or an autograd loop where vmap cannot run the model): lr * <grad l_i, grad L_ref>, in chunks of training samples.

Where ``vmap`` cannot run the model (``nn.GRU``/``nn.LSTM``/``nn.RNN``, data-dependent Python control flow,
``.item()`` calls, ...) the per-sample gradients come from a loop of one autograd backward per sample instead,
with one ``VmapFallbackWarning`` per call: the same numbers (each sample alone, as a batch of one), slower.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..batch import Batch, LossFn, take
from ..capture import plan
from ..checks import check_chunk_size
from ..coupling import check_cached
from ..errors import InfluenceError
from ..gradients import DEFAULT_CHUNK, Functional
from ..memory import require_fits, resolve_budget
from ..result import Chunk
from .protocol import BaseBackend, Routed, Settings
from .registry import Capabilities, Estimator


def _check_preconditioner(preconditioner: Mapping[str, Tensor] | None, fn: Functional) -> dict[str, Tensor]:
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


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _group(per_param: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, v in per_param.items():
        m = _module_of(name)
        out[m] = out[m] + v if m in out else v
    return out


class ExactBackend(BaseBackend):
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
        self.fn = Functional(model, loss_fn, params, state)
        self.precond = _check_preconditioner(preconditioner, self.fn)
        self.pairwise = False
        self.budget = resolve_budget(memory_budget, next(iter(self.fn.params.values()), torch.zeros(())).device)
        # one sample's gradient of every scored parameter: chunks of per-sample gradients fit the budget
        self.sample_bytes = sum(v.numel() * v.element_size() for v in self.fn.params.values())
        require_fits(self.sample_bytes, self.budget, "influence.exact: one sample's gradient",
                     "score fewer parameters (params=...) or use ghost / lai")
        self.chunk = max(1, min(self.chunk, self.budget // max(1, self.sample_bytes)))

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

    def add_reference(self, batch: Batch, n: int) -> Routed:
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
        return {}

    def _reference(self) -> dict[str, Tensor]:
        if self.pairwise:
            return {k: torch.cat(v) for k, v in self.ref.items()}
        return {k: (v / self.n_ref) * self.precond[k] if k in self.precond else v / self.n_ref
                for k, v in self.ref.items()}

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
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


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed) -> ExactBackend:
    return ExactBackend(model, loss_fn, s.lr, params=s.params, state=s.state, chunk_size=s.chunk,
                        preconditioner=s.preconditioner, memory_budget=s.budget)


ENTRIES = (
    Estimator("exact", "Exact", build, Capabilities(per_sample_gradients=True, preconditioner=True,
                                                    parameter_subset=True, exact=True), family="exact",
              description="per-sample gradients dotted with the reference gradient"),
)
