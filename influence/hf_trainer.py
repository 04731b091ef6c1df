"""Curated training inside a Hugging Face ``transformers.Trainer``: score every batch, keep samples by a policy.

    from influence.hf_trainer import CuratedTrainer
    trainer = CuratedTrainer(model=model, args=args, train_dataset=train, data_collator=collate,
                             reference=ref_inputs, loss_fn=influence.hf.causal_lm_loss(), estimator="lai")
    trainer.train()
    trainer.curation_log        # per optimizer step: step, scored, kept (this process), kept_global, lr, score_dtype,
                                # passes (1: scored and trained from one forward, 2: scoring pass + training pass)
                                # (and "ids", "dropped": the scored and the dropped samples' ids when index_key
                                # names a batch entry that holds them)

What one optimizer step does (``gradient_accumulation_steps`` = A micro-batches, on W processes):

0. LAI without gradient accumulation, mixed precision or DDP (and with no active dropout) scores and trains from ONE
   forward: ``influence.Session.score(batch, keep_graph=True)`` keeps the scoring forward's graph and the loss of
   the kept samples is backpropagated through it (``one_pass=False`` turns this off). Otherwise:
1. Before the first micro-batch of the step, every micro-batch of the step is scored against the reference batch
   with the parameters of this step (which do not change within the step), in eval mode and outside autocast
   (scores in the model's dtype, never cast down), and ``policy(scores) -> keep mask`` decides what is kept.
   The kept count K is summed over micro-batches and processes.
2. Each micro-batch's loss is sum_{kept i} l_i * W / K (per-sample losses from ``loss_fn``, in the Trainer's
   autocast context), and the Trainer backpropagates it as usual (its ``GradScaler``, ``no_sync`` and DDP
   averaging included). The accumulated gradient is then exactly the mean gradient over all kept samples of the
   global step, as one process with one big batch would compute it; the Trainer's own division by A is turned
   off (``loss_is_scaled_for_ga``), and nothing here touches ``.grad`` or calls ``zero_grad`` (pitfall 9).
3. A step whose policy keeps nothing contributes a zero gradient (the optimizer still steps, with zero gradient).

Inputs are the Trainer's dict batches; ``label_key`` (default ``"labels"``) is popped from them to form the
``(inputs, targets)`` pair the estimators take (``index_key``, if given, names an entry holding sample ids that
is removed too and logged for the dropped samples), and the model is called without labels (the loss is ``loss_fn``'s
per-sample loss, not the model's batch-mean loss). ``reference``: a dict batch like the training batches, or a
callable returning one per step (for a fresh reference subset each step).

Optimizer: the scores are ``lr * <grad l_i, grad L_ref>``, the first-order change of the reference loss under
an SGD step. The Trainer's default optimizer is AdamW, whose update is preconditioned; ranking by the SGD score
then approximates the Adam update's effect, and a warning says so once (keep >= 0 is unaffected by the lr scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, call_model, output_tensor
from .session import Session

try:
    import transformers
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('influence.hf_trainer needs the Hugging Face extra: pip install "lai[hf]"') from e

Policy = Callable[[Tensor], Tensor]


def keep_nonnegative(scores: Tensor) -> Tensor:
    """The reference policy: keep samples whose step does not raise the reference loss (score >= 0)."""
    return scores >= 0


def keep_top_fraction(fraction: float) -> Policy:
    """Keep the ``ceil(fraction * n)`` highest-scoring samples of every micro-batch."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")

    def policy(scores: Tensor) -> Tensor:
        k = max(1, int(-(-fraction * len(scores) // 1)))
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[scores.topk(k).indices] = True
        return mask
    return policy


ESTIMATORS = ("lai", "lai-last", "ghost", "exact")  # influence.Session's names that need no checkpoints


class CuratedTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains each step on the samples ``policy`` keeps (see the module docs).

    ``reference``: dict batch (or a callable returning one); ``loss_fn(logits, targets) -> [n]`` per-sample
    losses (e.g. ``influence.hf.causal_lm_loss()``); ``estimator``: ``"lai"``, ``"lai-last"``, ``"ghost"`` or
    ``"exact"``; ``policy``: scores [n] -> bool mask [n] (default keep score >= 0)."""

    def __init__(self, *args: Any, reference: dict[str, Tensor] | Callable[[], dict[str, Tensor]],
                 loss_fn: LossFn, estimator: str = "lai", policy: Policy = keep_nonnegative,
                 label_key: str = "labels", index_key: str | None = None, one_pass: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference, self.loss_fn, self.policy, self.label_key = reference, loss_fn, policy, label_key
        self.index_key, self.one_pass = index_key, one_pass
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator_name = estimator
        self.loss_is_scaled_for_ga = True  # compute_loss already normalises over the whole accumulation window
        self.curation_log: list[dict[str, Any]] = []
        self._masks: list[Tensor] = []
        self._scale = 1.0
        self._warned_adam = False

    # ---------------------------------------------------------------- helpers

    def _split(self, inputs: dict[str, Any]) -> Batch:
        if self.label_key not in inputs:
            raise KeyError(f"the training batch has no {self.label_key!r} entry (targets for loss_fn)")
        x = {k: v for k, v in inputs.items() if k not in (self.label_key, self.index_key)}
        return x, inputs[self.label_key]

    def _reference_batch(self) -> Batch:
        ref = self.reference() if callable(self.reference) else self.reference
        return self._split(self._prepare_inputs(dict(ref)))

    def _current_lr(self) -> float:
        try:
            return float(self._get_learning_rate())
        except Exception:  # before the scheduler exists
            return float(self.args.learning_rate)

    def _warn_optimizer(self) -> None:
        if self._warned_adam or self.optimizer is None:
            return
        if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)) or "adam" in \
                type(getattr(self.optimizer, "optimizer", self.optimizer)).__name__.lower():
            warnings.warn("CuratedTrainer scores with the SGD first-order formula lr * <grad l_i, grad L_ref>, but "
                          "the optimizer is Adam-type (preconditioned update): the scores rank samples by their "
                          "effect under an SGD step, an approximation of the Adam step's effect", stacklevel=3)
            self._warned_adam = True

    def _single_pass(self, model: nn.Module) -> bool:
        """Score and train from ONE forward (LAI's scoring forward, kept with its graph): for LAI without gradient
        accumulation (the kept count of the step is known after one micro-batch), without mixed precision (the
        scores must not be computed under autocast), on one process, with no active stochastic module."""
        from .capture import STOCHASTIC
        if not (self.one_pass and self.estimator_name in ("lai", "lai-last")):
            return False
        if self.args.gradient_accumulation_steps != 1 or self.args.fp16 or self.args.bf16 or self._world() > 1:
            return False
        return not any((isinstance(m, STOCHASTIC) and getattr(m, "p", 1) > 0)
                       or isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def _world(self) -> int:
        import torch.distributed as dist
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @torch.no_grad()
    def _scores(self, model: nn.Module, batch: Batch, ref: Batch, lr: float) -> Tensor:
        """Scores in eval mode and the model's own dtype: outside autocast, and past the autocast wrapper that
        ``accelerate`` puts around ``model.forward`` for mixed precision (its unwrapped forward is kept in
        ``model._original_forward``)."""
        was_training = model.training
        wrapped = model.__dict__.get("forward")
        original = model.__dict__.get("_original_forward")
        model.eval()
        if original is not None:
            model.forward = original
        try:
            device = self.args.device.type if hasattr(self.args.device, "type") else "cpu"
            with torch.autocast(device_type=device, enabled=False), torch.enable_grad():
                r = Session(model, self.loss_fn, ref, estimator=self.estimator_name, lr=lr).score(batch)
        finally:
            model.train(was_training)
            if original is not None:
                model.forward = wrapped
        return r.scores.detach()

    # ---------------------------------------------------------------- Trainer hooks

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device
                          ) -> tuple[list, Any]:
        """Fetch the step's micro-batches (as the Trainer does), then score and select all of them."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, num_items
        self._warn_optimizer()
        model = self.accelerator.unwrap_model(self.model)
        if self._single_pass(model):
            self._masks = []
            return batch_samples, num_items
        lr = self._current_lr()
        ref = self._reference_batch()
        masks, scored, dtypes, ids, dropped = [], 0, set(), [], []
        for inputs in batch_samples:
            batch = self._split(self._prepare_inputs(dict(inputs)))
            scores = self._scores(model, batch, ref, lr)
            mask = self.policy(scores).to(torch.bool)
            if mask.shape != scores.shape:
                raise ValueError(f"policy returned a mask of shape {tuple(mask.shape)} for {len(scores)} scores")
            masks.append(mask)
            scored += len(scores)
            dtypes.add(str(scores.dtype).removeprefix("torch."))
            if self.index_key is not None:
                ids += inputs[self.index_key].tolist()
                dropped += inputs[self.index_key][~mask.cpu()].tolist()
        kept = torch.tensor(float(sum(int(m.sum()) for m in masks)), device=self.args.device)
        world = self._world()
        if world > 1:
            import torch.distributed as dist
            dist.all_reduce(kept)
        total = float(kept)
        self._masks = masks
        self._scale = world / total if total > 0 else 0.0
        self.curation_log.append({"step": self.state.global_step, "scored": scored, "kept_global": int(total),
                                  "kept": int(sum(int(m.sum()) for m in masks)), "lr": lr,
                                  "score_dtype": ",".join(sorted(dtypes)), "passes": 2,
                                  **({"ids": ids, "dropped": dropped} if self.index_key is not None else {})})
        return batch_samples, num_items

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if model.training and self._single_pass(self.accelerator.unwrap_model(model)):
            return self._one_pass_loss(self.accelerator.unwrap_model(model), inputs, return_outputs)
        if not model.training or not self._masks:  # evaluation, or a call outside the curated loop
            x, y = self._split(inputs)
            out = call_model(model, x)
            loss = self.loss_fn(output_tensor(out), y).mean()
            return (loss, out) if return_outputs else loss
        mask = self._masks.pop(0)
        x, y = self._split(inputs)
        out = call_model(model, x)
        losses = self.loss_fn(output_tensor(out), y)
        if losses.shape != mask.shape:
            raise ValueError(f"loss_fn returned shape {tuple(losses.shape)}; expected per-sample losses "
                             f"{tuple(mask.shape)}")
        loss = (losses * mask.to(losses.dtype)).sum() * self._scale
        return (loss, out) if return_outputs else loss

    def _one_pass_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool) -> Any:
        """LAI scores and the training loss from one forward: ``Session.score(batch, keep_graph=True)`` records the
        activations and keeps the per-sample losses on the forward's graph; the loss is the mean over kept samples."""
        batch, lr = self._split(inputs), self._current_lr()
        r = Session(model, self.loss_fn, self._reference_batch(), estimator=self.estimator_name, lr=lr
                    ).score(batch, keep_graph=True)
        mask = self.policy(r.scores.detach()).to(torch.bool)
        if mask.shape != r.scores.shape:
            raise ValueError(f"policy returned a mask of shape {tuple(mask.shape)} for {len(r.scores)} scores")
        kept = int(mask.sum())
        entry = {"step": self.state.global_step, "scored": len(mask), "kept_global": kept, "kept": kept, "lr": lr,
                 "score_dtype": str(r.scores.dtype).removeprefix("torch."), "passes": 1}
        if self.index_key is not None:
            entry.update(ids=inputs[self.index_key].tolist(), dropped=inputs[self.index_key][~mask.cpu()].tolist())
        self.curation_log.append(entry)
        losses = r.graph_losses
        loss = (losses * mask.to(losses.dtype)).sum() / kept if kept else losses.sum() * 0.0
        return (loss, r.train_outputs) if return_outputs else loss
