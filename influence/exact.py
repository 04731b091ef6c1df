"""Exact influence from per-sample parameter gradients (``torch.func``: vmap of grad of functional_call).

Where ``vmap`` cannot run the model (``nn.GRU``/``nn.LSTM``/``nn.RNN``, data-dependent Python control flow,
``.item()`` calls, ...) the per-sample gradients come from a loop of one autograd backward per sample instead,
with one ``VmapFallbackWarning`` per call: the same numbers (each sample alone, as a batch of one), slower.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from torch import Tensor, nn

from .batch import Batch, LossFn
from .checks import check_batch
from .gradients import DEFAULT_CHUNK, VmapFallbackWarning  # noqa: F401  (re-exported)
from .result import InfluenceResult


def exact(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          params: Iterable[str] | None = None, state: dict[str, Tensor] | None = None,
          chunk_size: int = DEFAULT_CHUNK, preconditioner: Mapping[str, Tensor] | None = None,
          memory_budget: int | None = None) -> InfluenceResult:
    """Exact first-order influence lr * <grad l_i, grad L_ref> from per-sample gradients.

    ``params``: restrict to these parameter names (default: all with requires_grad). ``state``: evaluate at
    these parameter/buffer values (a state dict) instead of the model's own. Training samples are processed
    in chunks of ``chunk_size`` (memory ~ chunk_size x number of parameters), fewer where that exceeds
    ``memory_budget`` (bytes, default half the free memory; one sample's gradient over it raises
    ``MemoryBudgetError`` before anything is allocated). ``per_layer`` is keyed by the
    owning module's name.
    ``preconditioner``: {parameter name: P} (same shapes as the parameters), scoring lr * <P (.) grad l_i,
    grad L_ref> instead, the first-order effect of a diagonally preconditioned update such as Adam's (see
    :func:`influence.optim.adam_preconditioner`); parameters without an entry keep P = 1.
    """
    from .session import Session
    check_batch(train, "train")
    return Session(model, loss_fn, ref, estimator="exact", lr=lr, pairwise=pairwise, params=params, state=state,
                   chunk_size=chunk_size, preconditioner=preconditioner, memory_budget=memory_budget).score(train)
