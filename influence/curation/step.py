"""One curated training step, usable from any PyTorch training loop.

    info = curation_step(model, loss_fn, optimizer, batch, ref, "lai")

scores ``batch`` against ``ref`` with the method's signal, chooses samples with its policy, ADDS the
gradient of the kept samples' loss to every parameter's ``.grad`` (creating it when None, as
``loss.backward()`` would) and, unless ``step=False``, calls ``optimizer.step()``. It never calls
``zero_grad``: zero the gradients yourself, as in any loop, so gradient accumulation works unchanged
(``step=False`` on all micro-batches but the last, with ``reduction='batch_mean'`` and
``loss_scale=1/num_micro_batches``, or ``reduction='sum'`` and your own scale).

Gradient added: loss_scale * sum_{i kept} grad l_i / D, with D = number kept (``reduction='mean'``), 1
(``'sum'``) or the batch size (``'batch_mean'``); under DDP the kept count and batch size are global (see
``distributed``). What the update reuses from the scoring pass is described in ``signals``.

A policy that keeps nothing raises ``EmptySelectionError`` (``on_empty='error'``), or falls back to
training on the whole batch (``'keep_all'``) or on the single best-scored sample (``'best'``); the fallback
used is reported in ``StepInfo.fallback``. The update is never skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

import influence
from influence.batch import Batch, LossFn, call_model, check_batch, model_device, output_tensor
from influence.errors import InvalidArgumentError
from influence.losses import per_sample_losses

from .cadence import KeptSession, check_refresh_every
from .distributed import Shards, gather_batch, gather_rows, sum_gradients, unwrap
from .errors import CurationError, EmptySelectionError
from .methods import Method, get_method
from .policies import greats_select, keep_count, keep_random, keep_threshold, keep_top_k, rank_sum
from .reference import ReferencePolicy
from .signals import global_pairwise, keeps_session, score_batch, trainable_params

ON_EMPTY = ("error", "keep_all", "best")
REDUCTIONS = ("mean", "sum", "batch_mean")


@dataclass
class StepInfo:
    """What one curated step did. ``kept`` bool [n_local]; ``kept_global`` bool [N] (N = global batch);
    ``values`` [n_local] the method's signal (None for random/vanilla); losses are per-sample means before
    the update; times in seconds: ``score_s`` = forward pass(es) + estimator + selection (+ gathers), and
    under a ``Curator`` that keeps reference statistics, their recomputation when it falls due at this step
    (the reference forward/backward); ``update_s`` = kept-sample gradient + reduction + optimizer step."""

    method: str
    kept: Tensor
    kept_global: Tensor
    values: Tensor | None
    loss: float
    kept_loss: float
    kept_fraction: float
    noisy_kept: int | None
    noisy_dropped: int | None
    score_s: float
    update_s: float
    fallback: str | None
    reused: str
    stepped: bool

    def row(self) -> dict[str, Any]:
        """Scalar fields for a per-step log."""
        return {"n": int(self.kept_global.numel()), "kept": int(self.kept_global.sum()), "loss": self.loss,
                "kept_loss": self.kept_loss, "kept_fraction": self.kept_fraction, "noisy_kept": self.noisy_kept,
                "noisy_dropped": self.noisy_dropped, "score_s": self.score_s,
                "update_s": self.update_s, "fallback": self.fallback or ""}


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work before reading a clock (CUDA; nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose(method: Method, values: Tensor | None, n: int, lr: float, pairwise: Callable[[], Tensor] | None,
           generator: torch.Generator | None, on_empty: str, *, is_noisy: Tensor | None = None,
           ref_loss: float | None = None) -> tuple[Tensor, str | None]:
    """Keep mask [n] of ``method`` on the (global) values, and the fallback used (None if none).

    ``is_noisy`` bool [n]: the injected-noise mask (``oracle`` only); ``ref_loss``: the mean reference loss
    (``loss-threshold`` only)."""
    p = method.policy
    k = keep_count(n, method.keep_fraction) if method.needs_fraction else n
    if p == "all":
        return torch.ones(n, dtype=torch.bool), None
    if p in ("oracle", "loss_threshold"):
        if p == "oracle":
            if is_noisy is None:
                raise CurationError(f"{method.name}: the oracle needs the injected-noise mask (is_noisy=...)")
            mask = ~is_noisy.to(values.device).bool()
        else:
            if ref_loss is None:
                raise CurationError(f"{method.name}: the loss threshold needs the reference loss")
            mask = values <= ref_loss
        if mask.any():
            return mask, None
        if on_empty == "error":
            raise EmptySelectionError(f"{method.name}: no sample of the batch passed the filter; pass "
                                      "on_empty='keep_all' or 'best' for a fallback")
        if on_empty == "keep_all":
            return torch.ones(n, dtype=torch.bool, device=values.device), "keep_all"
        return keep_top_k(-values, 1), "best"  # the smallest loss
    if p == "random":
        return keep_random(n, k, generator), None
    if p == "bottom_k":
        return keep_top_k(-values, k), None
    if p in ("top_k", "rank_sum"):  # rank_sum: the values are the combined rank (``curation_step``)
        return keep_top_k(values, k), None
    if p == "greats":
        if pairwise is None:
            raise CurationError(f"{method.name}: signal {method.signal!r} gives no pairwise form for GREATS")
        return greats_select(values, pairwise(), k, lr), None
    mask = keep_threshold(values, method.threshold)
    if mask.any():
        return mask, None
    if on_empty == "error":
        raise EmptySelectionError(
            f"{method.name}: no sample of the batch scored >= {method.threshold} (max score "
            f"{values.max().item():.3g}); nothing to train on. Pass on_empty='keep_all' or 'best' for a fallback, "
            "lower the threshold, or check the reference batch")
    if on_empty == "keep_all":
        return torch.ones(n, dtype=torch.bool, device=values.device), "keep_all"
    return keep_top_k(values, 1), "best"


@torch.no_grad()
def _mean_loss(model: nn.Module, loss_fn: LossFn, batch: Batch) -> float:
    """Mean per-sample loss of ``batch`` (no graph)."""
    n = check_batch(batch, "ref")
    return float(per_sample_losses(loss_fn, output_tensor(call_model(model, batch[0])), batch[1], n, "ref").mean())


def _add_to_grad(grads: list[tuple[nn.Parameter, Tensor]]) -> None:
    with torch.no_grad():
        for p, g in grads:
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g)


def step_lr(lr: float | None, optimizer: torch.optim.Optimizer | None) -> float | None:
    """The scores' step size: ``lr``, else the optimizer's first group's lr (None when neither is given)."""
    if lr is not None:
        return lr
    return None if optimizer is None else float(optimizer.param_groups[0]["lr"])


def curation_step(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer | None, batch: Batch,
                  ref: Batch | None, method: str | Method = "lai", *, lr: float | None = None,
                  on_empty: str = "error", reduction: str = "mean", loss_scale: float = 1.0, step: bool = True,
                  generator: torch.Generator | None = None, is_noisy: Tensor | None = None, group: Any = "auto",
                  mode: str = "auto", session: influence.Session | None = None) -> StepInfo:
    """Score, select and update on one batch. See the module docstring.

    model: an ``nn.Module`` or a DDP-wrapped one (then ``batch`` is this rank's shard and selection is global).
    loss_fn(outputs, targets) -> [n] per-sample losses. batch / ref: (inputs, targets); ``ref=None`` scores
    against the batch itself. lr: the step size in the scores (default: the optimizer's first group's lr).
    generator: seeds random selection (seed it identically on every rank). is_noisy: bool [n] of injected
    noise, for the noisy kept/dropped counts. group: a process group, None (one process) or 'auto' (the
    DDP wrapper's). mode: Gram/materialise choice passed to the estimators. session: a persistent
    ``influence.Session`` of the method's signal holding the reference statistics (``Curator`` keeps one when
    ``refresh_every`` is set); ``ref`` is then only read by the loss baselines.
    """
    m = get_method(method)
    if m.needs_fraction and m.keep_fraction is None:
        raise InvalidArgumentError(f"{m.name}: policy {m.policy!r} needs keep_fraction (get_method(name, keep_fraction=...))")
    if on_empty not in ON_EMPTY:
        raise InvalidArgumentError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    lr = step_lr(lr, optimizer)
    if lr is None:
        raise InvalidArgumentError("pass lr (the scores' step size) when no optimizer is given")
    sh = Shards.of(model, group)
    net = unwrap(model)
    n = check_batch(batch, "train")
    if n == 0:
        raise CurationError("the training batch is empty")

    device = model_device(net)  # (looked up once: a walk over the parameters costs more than a small step's ops)
    _sync(device)
    t0 = time.perf_counter()
    if m.needs_reference and ref is None and sh is not None:
        ref = gather_batch(batch, sh)
    scored = score_batch(net, loss_fn, batch, ref if m.needs_reference else None, m.signal, lr, mode, session)
    values, losses = scored.values, scored.losses
    offset = 0
    if sh is not None:
        losses, counts = gather_rows(losses, sh)
        offset = sum(counts[:sh.rank])
        if values is not None:
            values = gather_rows(values, sh)[0]
        pairwise = lambda: global_pairwise(net, loss_fn, gather_batch(batch, sh), m.signal, lr)  # noqa: E731
    else:
        pairwise = scored.pairwise
    n_global = losses.shape[0]
    noisy = None
    if is_noisy is not None:
        noisy = is_noisy.to(losses.device).bool()
        if sh is not None:
            noisy = gather_rows(noisy.to(torch.int64), sh)[0].bool()
    ref_loss = None
    if m.policy == "loss_threshold":  # mean reference loss (the batch's own when there is no reference batch)
        ref_loss = float(losses.mean()) if ref is None else _mean_loss(net, loss_fn, ref)
    if m.policy == "rank_sum":
        values = rank_sum(values, losses)
    mask, fallback = choose(m, values, n_global, lr, pairwise, generator, on_empty, is_noisy=noisy,
                            ref_loss=ref_loss)
    mask = mask.to(losses.device)
    kept = mask[offset:offset + n]
    _sync(device)
    t1 = time.perf_counter()

    n_kept = int(mask.sum())
    denom = {"mean": n_kept, "sum": 1, "batch_mean": n_global}[reduction]
    weights = kept.to(scored.losses.dtype) * (loss_scale / denom)
    grads = scored.gradient(weights)
    if sh is not None:
        have = {id(p): g for p, g in grads}
        params = trainable_params(net)
        total = sum_gradients([have.get(id(p), torch.zeros_like(p)) for p in params], sh)
        grads = list(zip(params, total))
    _add_to_grad(grads)
    if step and optimizer is not None:
        optimizer.step()
    _sync(device)
    t2 = time.perf_counter()

    noisy_kept = noisy_dropped = None
    if noisy is not None:
        noisy = noisy.to(mask.device)
        noisy_kept, noisy_dropped = int((noisy & mask).sum()), int((noisy & ~mask).sum())
    return StepInfo(m.name, kept, mask, scored.values, float(losses.mean()), float(losses[mask].mean()),
                    n_kept / n_global, noisy_kept, noisy_dropped, t1 - t0, t2 - t1, fallback, scored.reused,
                    bool(step and optimizer is not None))


class Curator:
    """Stateful wrapper for a training loop: warm-up, reference policy, random generator and reference statistics.

    The first ``warmup_steps`` calls train on the whole batch (method ``vanilla``), later ones curate with
    ``method``. Every call draws its reference batch from ``reference`` (default: the batch itself).

    ``refresh_every=k`` (LAI and Ghost against a held-out reference, one process): the reference statistics (LAI's
    per-layer mean of a_v (x) g_v, Ghost's reference gradient) are kept in one ``influence.Session`` (``cadence``)
    whose own counter (``Session(refresh_every=k)``) recomputes them every k curated steps, from a new
    ``reference.sample()`` (so a ``resample`` reference changes every k steps); between refreshes they are up to
    k - 1 steps old. k = 1 (default) recomputes them at every step, which gives the
    scores of a fresh session at every step (tested) without rebuilding the session. ``None``: a new session per
    step (what DDP and the other signals always do).
    """

    def __init__(self, loss_fn: LossFn, method: str | Method = "lai", *, reference: ReferencePolicy | None = None,
                 warmup_steps: int = 0, lr: float | None = None, on_empty: str = "error",
                 reduction: str = "mean", seed: int = 0, mode: str = "auto", refresh_every: int | None = 1) -> None:
        self.loss_fn, self.method = loss_fn, get_method(method)
        self.reference = reference or ReferencePolicy("batch")
        self.warmup_steps, self.lr, self.on_empty, self.reduction, self.mode = warmup_steps, lr, on_empty, \
            reduction, mode
        self.refresh_every = check_refresh_every(refresh_every)
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0
        self.kept = KeptSession(refresh_every)

    @property
    def session(self) -> influence.Session | None:
        """The kept session (None until a step keeps one)."""
        return self.kept.session

    def _session(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, method: Method
                 ) -> influence.Session | None:
        """The kept session of ``method`` (its own counter refreshes it when due, from a new
        ``reference.sample()``), or None when the step builds its own."""
        if (self.refresh_every is None or not keeps_session(method.signal) or self.reference.kind == "batch"
                or Shards.of(model, "auto") is not None):
            return None
        lr = step_lr(self.lr, optimizer)
        if lr is None:
            return None  # curation_step names the missing lr
        return self.kept.get(model, self.loss_fn, self.reference.stream(), method.signal, lr, mode=self.mode,
                             fallback="error")

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, batch: Batch, *,
             is_noisy: Tensor | None = None, step: bool = True, loss_scale: float = 1.0) -> StepInfo:
        """One curated step on ``batch`` (``vanilla`` during the warm-up), against this curator's reference and
        kept statistics; the arguments are ``curation_step``'s."""
        warm = self.calls < self.warmup_steps
        self.calls += 1
        method = get_method("vanilla") if warm else self.method
        device = model_device(model)
        _sync(device)
        t0 = time.perf_counter()
        session = self._session(model, optimizer, method) if method.needs_reference else None
        _sync(device)
        refresh_s = time.perf_counter() - t0  # building or refreshing the kept statistics is part of scoring
        ref = self.reference.sample() if method.needs_reference and session is None else None
        info = curation_step(model, self.loss_fn, optimizer, batch, ref, method, lr=self.lr,
                             on_empty=self.on_empty, reduction=self.reduction, loss_scale=loss_scale, step=step,
                             generator=self.generator, is_noisy=is_noisy, mode=self.mode, session=session)
        if session is not None:
            info.score_s += refresh_s
        return info
