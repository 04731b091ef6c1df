"""Curated training inside a Hugging Face ``transformers.Trainer``: score every batch, keep samples by a policy.

Any ``Trainer`` — the stock one, TRL's, your own subclass — is curated by one call::

    from influence.hf_trainer import curate
    trainer = curate(MyTrainer(model=model, args=args, train_dataset=train), reference=ref_batch)
    trainer.train()
    trainer.curation_log        # per optimizer step: step, scored, kept (this process), kept_global, lr, score_dtype,
                                # passes, preconditioned (and ids/dropped with index_key)

``curate`` puts :class:`CurationMixin` in front of the trainer's own class (its other methods, and its
``compute_loss`` for evaluation, are untouched) and adds :class:`CurationGuard`, a callback that raises
:class:`CurationNotAppliedError` at the end of any optimizer step that was not curated (a subclass that bypasses
the hooks, a loop that does not call them). ``CuratedTrainer`` is the mixin on ``transformers.Trainer`` itself.
This module adapts the Trainer to the library ``influence.curation``: its policies (``keep_nonnegative``,
``keep_top_fraction``), the estimators of the registry, its DDP collectives and the model's own loss.

What one optimizer step does (``gradient_accumulation_steps`` = A micro-batches, on W processes):

0. LAI without gradient accumulation, mixed precision or DDP (and with no active dropout) scores and trains from ONE
   forward: ``influence.Session.score(batch, keep_graph=True)`` keeps the scoring forward's graph and the loss of
   the kept samples is backpropagated through it (``one_pass=False`` turns this off). Otherwise:
1. Before the first micro-batch of the step (in ``Trainer.get_batch_samples``), every micro-batch of the step is
   scored against the reference with the parameters of this step, in eval mode and outside autocast (scores in
   the model's dtype, never cast down), and ``policy(scores) -> keep mask`` decides what is kept. The kept count
   K is summed over micro-batches and processes.
2. Each micro-batch's loss is sum_{kept i} l_i * W / K (the per-sample loss that was scored, in the Trainer's
   autocast context), and the Trainer backpropagates it as usual (its ``GradScaler``, ``no_sync`` and DDP
   averaging included). The accumulated gradient is then exactly the mean gradient over all kept samples of the
   global step, as one process with one big batch would compute it; the Trainer's own division by A is turned
   off (``loss_is_scaled_for_ga``), and nothing here touches ``.grad`` or calls ``zero_grad`` (pitfall 9).
3. A step whose policy keeps nothing contributes a zero gradient (the optimizer still steps, with zero gradient).

Inputs are the Trainer's dict batches; ``label_key`` (default ``"labels"``) is popped from them to form the
``(inputs, targets)`` pair the estimators take, and the model is called without labels. ``loss_fn(outputs,
targets) -> [n]`` is optional: for a causal LM, a sequence/token/image classifier (``transformers``' auto
classes) the model's own loss is used per sample (:func:`model_loss_fn`); any other model raises
:class:`LossNotDerivableError` naming it. ``reference``: every form ``influence.Session`` takes — an ``(inputs,
targets)`` pair, a list of batches, a ``DataLoader`` — plus the Trainer's dict batches (with ``label_key``), or a
callable returning any of these each step (a fresh reference subset per step).

``index_key`` names a batch entry of sample ids, logged for the scored and dropped samples and removed before the
model sees the batch; ``curate`` adds it to the columns ``remove_unused_columns=True`` keeps, and a batch that
still lacks it raises :class:`IndexKeyError` (set ``TrainingArguments(remove_unused_columns=False)``).

Optimizer: with Adam/AdamW (the Trainer's default) the scores of Ghost and Exact are Adam-aware — the first-order
change of the reference loss under Adam's update, through ``influence.Session(optimizer=...)`` — from the second
step on (before its first step Adam has no second moment; that step is scored by the SGD formula, and the log's
``preconditioned`` says which); LAI keeps the SGD formula under Adam and says so (``OptimizerWarning``).

Requires ``transformers >= 4.46.3`` (:data:`MIN_TRANSFORMERS`; 4.46 first fetches a step's micro-batches through
``Trainer.get_batch_samples``); an older one is refused at import with :class:`TransformersVersionError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, call_model, output_tensor, to_device
from .compat import BATCHNORM, patched_original_forward, shadow_forward
from .curation.distributed import Shards, sum_across
from .curation.errors import LossNotDerivableError
from .curation.hf_loss import model_loss_fn
from .curation.policies import Policy, keep_nonnegative, keep_top_fraction
from .curation.reference import map_reference
from .errors import ArgumentTypeError, InfluenceError, InvalidArgumentError, OptimizerWarning
from .estimators import estimator_names, get_estimator
from .optim import is_adaptive
from .session import Session

MIN_TRANSFORMERS = "4.46.3"
"""The lowest ``transformers`` release supported (and tested in CI: scripts/test_min_versions.sh)."""


class TransformersVersionError(ImportError):
    """The installed ``transformers`` is older than :data:`MIN_TRANSFORMERS` (its training loop would not call the
    hooks curation works through, and training would run on every sample)."""


class CurationNotAppliedError(InfluenceError):
    """An optimizer step of a curated trainer trained on samples that were not scored and selected."""


class IndexKeyError(InfluenceError):
    """The training batch has no ``index_key`` entry."""


def check_transformers(module: Any) -> None:
    """Raise :class:`TransformersVersionError` unless ``module`` (``transformers``) is at least
    :data:`MIN_TRANSFORMERS` and its ``Trainer`` has ``get_batch_samples``."""
    from packaging.version import Version  # a dependency of transformers
    version = str(getattr(module, "__version__", "0"))
    if Version(version) < Version(MIN_TRANSFORMERS) or not hasattr(module.Trainer, "get_batch_samples"):
        raise TransformersVersionError(
            f"influence.hf_trainer needs transformers >= {MIN_TRANSFORMERS} (found {version}): older training loops do "
            "not fetch a step's batches through Trainer.get_batch_samples, so curation would silently not happen; "
            f'pip install "transformers>={MIN_TRANSFORMERS}"')


try:
    import transformers
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('influence.hf_trainer needs the Hugging Face extra: pip install "lai[hf]"') from e
check_transformers(transformers)


def __getattr__(name: str) -> Any:
    """``ESTIMATORS``: the registered estimators a Trainer can score with (those that need no checkpoints),
    read from ``influence.estimators`` at every access."""
    if name == "ESTIMATORS":
        return tuple(estimator_names(checkpoints=False))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CurationGuard(transformers.TrainerCallback):
    """Raises :class:`CurationNotAppliedError` at the end of an optimizer step that the trainer did not curate."""

    def __init__(self, trainer: "CurationMixin") -> None:
        self.trainer = trainer
        self.steps = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start counting the optimizer steps of this ``train()`` call."""
        self.steps = 0
        self.trainer._curated_steps = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Raise :class:`CurationNotAppliedError` unless every step so far was scored and selected."""
        self.steps += 1
        if self.trainer._curated_steps < self.steps:
            raise CurationNotAppliedError(
                f"optimizer step {state.global_step} trained on samples that were not scored: the training loop did "
                f"not go through CurationMixin's get_batch_samples/compute_loss (a subclass overriding them without "
                f"calling super(), or an unsupported transformers {transformers.__version__})")


class CurationMixin:
    """Curation hooks for any ``transformers.Trainer`` subclass (put in front of it by :func:`curate`)."""

    def _setup_curation(self, reference: Any, loss_fn: LossFn | None = None, estimator: str = "lai",
                        policy: Policy = keep_nonnegative, label_key: str = "labels", index_key: str | None = None,
                        one_pass: bool = True) -> None:
        names = estimator_names(checkpoints=False)
        if estimator not in names:
            raise InvalidArgumentError(f"estimator must be one of {tuple(names)}, got {estimator!r}")
        model = getattr(self.model, "module", self.model)
        self.reference, self.policy, self.label_key = reference, policy, label_key
        self.loss_fn = loss_fn if loss_fn is not None else model_loss_fn(model)
        self.index_key, self.one_pass, self.estimator_name = index_key, one_pass, estimator
        self.loss_is_scaled_for_ga = True  # the curated loss already normalises over the whole accumulation window
        self.curation_log: list[dict[str, Any]] = []
        self._masks: list[Tensor] = []
        self._scale, self._curated_steps, self._batch_ids = 1.0, 0, None
        self._preconditioned = self._warned_optimizer = False
        if index_key is not None and self.args.remove_unused_columns:
            self._set_signature_columns_if_needed()
            if index_key not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, index_key]
        self.add_callback(CurationGuard(self))

    # ---------------------------------------------------------------- helpers

    def _split(self, inputs: dict[str, Any]) -> Batch:
        if self.label_key not in inputs:
            raise KeyError(f"the training batch has no {self.label_key!r} entry (targets for loss_fn)")
        x = {k: v for k, v in inputs.items() if k not in (self.label_key, self.index_key)}
        return x, inputs[self.label_key]

    def _ids(self, inputs: dict[str, Any]) -> Tensor:
        if self.index_key not in inputs:
            raise IndexKeyError(
                f"the training batch has no {self.index_key!r} entry: the Trainer removes columns the model's forward "
                f"does not take unless TrainingArguments(remove_unused_columns=False), and the dataset's items must "
                f"hold it (keys seen: {', '.join(map(str, inputs))})")
        return torch.as_tensor(inputs[self.index_key]).cpu()

    def _reference_batch(self) -> Any:
        """The reference as ``influence.Session`` takes it, on the Trainer's device (dict batches split)."""
        ref = self.reference() if callable(self.reference) else self.reference
        device = self.args.device

        def one(batch: Any) -> Batch:
            if isinstance(batch, dict):
                return self._split(to_device({k: v for k, v in batch.items() if k != self.index_key}, device))
            if isinstance(batch, (tuple, list)) and len(batch) == 2:
                return to_device(batch[0], device), to_device(batch[1], device)
            raise InfluenceError(f"a reference batch must be a dict with {self.label_key!r} or an (inputs, targets) "
                                 f"pair; got {type(batch).__name__}")
        return map_reference(ref, one)

    def _current_lr(self) -> float:
        try:
            return float(self._get_learning_rate())
        except Exception:  # before the scheduler exists
            return float(self.args.learning_rate)

    def _adam(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """The torch optimizer when Ghost/Exact can score under it exactly: Adam/AdamW holding a second moment for
        every trainable parameter it updates (from its second step on); else None (the SGD formula), with a
        warning, once, when the optimizer is adaptive."""
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        carries = get_estimator(self.estimator_name).caps.preconditioner
        if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and carries:
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            trainable = [p for p in model.parameters() if p.requires_grad and id(p) in held]
            return opt if trainable and all("exp_avg_sq" in opt.state.get(p, {}) for p in trainable) else None
        if is_adaptive(opt) and not self._warned_optimizer:
            warnings.warn(f"curated training scores with the SGD formula lr * <grad l_i, grad L_ref>, but the optimizer "
                          f"({type(opt).__name__}) preconditions its update: {self.estimator_name} cannot carry the "
                          f"preconditioner (Adam-aware scores: estimator in {estimator_names(preconditioner=True)} "
                          "with Adam/AdamW)", OptimizerWarning, stacklevel=3)
            self._warned_optimizer = True
        return None

    def _session(self, model: nn.Module, ref: Any, lr: float) -> Session:
        opt = self._adam(model)
        self._preconditioned = opt is not None
        return Session(model, self.loss_fn, ref, estimator=self.estimator_name, lr=lr, optimizer=opt)

    def _single_pass(self, model: nn.Module) -> bool:
        """Score and train from ONE forward (LAI's scoring forward, kept with its graph): for an estimator without a
        backward pass (LAI) without gradient accumulation (the kept count of the step is known after one
        micro-batch), without mixed precision (the scores must not be computed under autocast), on one process,
        with no active stochastic module."""
        from .capture import STOCHASTIC
        if not (self.one_pass and not get_estimator(self.estimator_name).caps.needs_backward):
            return False
        if self.args.gradient_accumulation_steps != 1 or self.args.fp16 or self.args.bf16 or self._world() > 1:
            return False
        # the mixed precision the accelerator actually runs (older accelerate keeps it in a state shared between
        # Accelerator instances, whatever these arguments say) and an autocast wrapper around model.forward
        if str(getattr(self.accelerator, "mixed_precision", "no")) != "no" or \
                patched_original_forward(model) is not None:
            return False
        return not any((isinstance(m, STOCHASTIC) and getattr(m, "p", 1) > 0)
                       or isinstance(m, BATCHNORM)
                       for m in model.modules())

    def _world(self) -> int:
        return getattr(Shards.default(), "world", 1)  # processes of the default group (1: not distributed)

    @torch.no_grad()
    def _scores(self, model: nn.Module, batch: Batch, ref: Any, lr: float) -> Tensor:
        """Scores in eval mode and the model's own dtype: outside autocast, and past the autocast wrapper that
        ``accelerate`` puts around ``model.forward`` for mixed precision (its unwrapped forward is kept in
        ``model._original_forward``)."""
        was_training = model.training
        original = patched_original_forward(model)
        model.eval()
        restore = shadow_forward(model, original) if original is not None else None
        try:
            device = self.args.device.type if hasattr(self.args.device, "type") else "cpu"
            with torch.autocast(device_type=device, enabled=False), torch.enable_grad():
                r = self._session(model, ref, lr).score(batch)
        finally:
            model.train(was_training)
            if restore is not None:
                restore()
        return r.scores.detach()

    def _check_mask(self, mask: Tensor, scores: Tensor) -> Tensor:
        mask = mask.to(torch.bool)
        if mask.shape != scores.shape:
            raise InvalidArgumentError(f"policy returned a mask of shape {tuple(mask.shape)} for {len(scores)} scores")
        return mask

    # ---------------------------------------------------------------- Trainer hooks

    def _prepare_inputs(self, inputs: Any) -> Any:
        """The Trainer's own preparation, with ``index_key`` taken out (kept for the log) so the model never sees it."""
        prepared = super()._prepare_inputs(inputs)
        if self.index_key is not None and isinstance(prepared, dict) and self.index_key in prepared:
            prepared = dict(prepared)
            self._batch_ids = torch.as_tensor(prepared.pop(self.index_key)).cpu()
        return prepared

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, *args: Any, **kwargs: Any) -> tuple[list, Any]:
        """Fetch the step's micro-batches (as the Trainer does), then score and select all of them."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        if not batch_samples:
            return batch_samples, num_items
        model = self.accelerator.unwrap_model(self.model)
        if self._single_pass(model):
            self._masks = []
            return batch_samples, num_items
        lr = self._current_lr()
        ref = self._reference_batch()
        masks, scored, dtypes, ids, dropped = [], 0, set(), [], []
        for inputs in batch_samples:
            if self.index_key is not None:
                batch_ids = self._ids(inputs)
            batch = self._split(self._prepare_inputs(dict(inputs)))
            scores = self._scores(model, batch, ref, lr)
            mask = self._check_mask(self.policy(scores), scores)
            masks.append(mask)
            scored += len(scores)
            dtypes.add(str(scores.dtype).removeprefix("torch."))
            if self.index_key is not None:
                ids += batch_ids.tolist()
                dropped += batch_ids[~mask.cpu()].tolist()
        kept = torch.tensor(float(sum(int(m.sum()) for m in masks)), device=self.args.device)
        sh = Shards.default()  # the kept count K of the step over every process (DDP)
        total = float(kept if sh is None else sum_across(kept, sh))
        self._masks = masks
        self._scale = getattr(sh, "world", 1) / total if total > 0 else 0.0
        self._curated_steps += 1
        self.curation_log.append({"step": self.state.global_step, "scored": scored, "kept_global": int(total),
                                  "kept": int(sum(int(m.sum()) for m in masks)), "lr": lr,
                                  "score_dtype": ",".join(sorted(dtypes)), "passes": 2,
                                  "preconditioned": self._preconditioned,
                                  **({"ids": ids, "dropped": dropped} if self.index_key is not None else {})})
        return batch_samples, num_items

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     *args: Any, **kwargs: Any) -> Any:
        """Training: the mean over the step's kept samples of the scored per-sample loss. Evaluation: the
        trainer's own ``compute_loss``."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, *args, **kwargs)
        if self._single_pass(self.accelerator.unwrap_model(model)):
            return self._one_pass_loss(self.accelerator.unwrap_model(model), inputs, return_outputs)
        if not self._masks:
            raise CurationNotAppliedError(
                "compute_loss got a training batch that was not scored: get_batch_samples did not run for this step "
                "(a subclass overriding it without calling super(), or a training loop that does not call it)")
        mask = self._masks.pop(0)
        x, y = self._split(inputs)
        out = call_model(model, x)
        losses = self.loss_fn(output_tensor(out), y)
        if losses.shape != mask.shape:
            raise InvalidArgumentError(f"loss_fn returned shape {tuple(losses.shape)}; expected per-sample losses "
                             f"{tuple(mask.shape)}")
        loss = (losses * mask.to(losses.dtype)).sum() * self._scale
        return (loss, out) if return_outputs else loss

    def _one_pass_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool) -> Any:
        """LAI scores and the training loss from one forward: ``Session.score(batch, keep_graph=True)`` records the
        activations and keeps the per-sample losses on the forward's graph; the loss is the mean over kept samples."""
        batch, lr = self._split(inputs), self._current_lr()
        ids = self._batch_ids
        if self.index_key is not None and ids is None:
            self._ids(inputs)  # raises IndexKeyError
        self._batch_ids = None
        r = self._session(model, self._reference_batch(), lr).score(batch, keep_graph=True)
        mask = self._check_mask(self.policy(r.scores.detach()), r.scores)
        kept = int(mask.sum())
        entry = {"step": self.state.global_step, "scored": len(mask), "kept_global": kept, "kept": kept, "lr": lr,
                 "score_dtype": str(r.scores.dtype).removeprefix("torch."), "passes": 1,
                 "preconditioned": self._preconditioned}
        if ids is not None:
            entry.update(ids=ids.tolist(), dropped=ids[~mask.cpu()].tolist())
        self._curated_steps += 1
        self.curation_log.append(entry)
        losses = r.graph_losses
        loss = (losses * mask.to(losses.dtype)).sum() / kept if kept else losses.sum() * 0.0
        return (loss, r.train_outputs) if return_outputs else loss


_CURATED: dict[type, type] = {}


def curate(trainer: transformers.Trainer, reference: Any, *, loss_fn: LossFn | None = None, estimator: str = "lai",
           policy: Policy = keep_nonnegative, label_key: str = "labels", index_key: str | None = None,
           one_pass: bool = True) -> transformers.Trainer:
    """Curate ``trainer`` (any ``transformers.Trainer`` or subclass instance) in place and return it: every optimizer
    step trains on the samples ``policy`` keeps (see the module docs for the arguments)."""
    if not isinstance(trainer, transformers.Trainer):
        raise ArgumentTypeError(f"curate needs a transformers.Trainer (or subclass) instance, got {type(trainer).__name__}")
    if isinstance(trainer, CurationMixin):
        raise InvalidArgumentError("this trainer is already curated")
    cls = type(trainer)
    if cls not in _CURATED:
        _CURATED[cls] = type(f"Curated{cls.__name__}", (CurationMixin, cls), {"__module__": cls.__module__})
    trainer.__class__ = _CURATED[cls]
    trainer._setup_curation(reference, loss_fn, estimator, policy, label_key, index_key, one_pass)
    return trainer


class CuratedTrainer(CurationMixin, transformers.Trainer):
    """``transformers.Trainer`` curated from construction: ``CuratedTrainer(..., reference=..., loss_fn=None,
    estimator="lai", policy=keep_nonnegative, label_key="labels", index_key=None, one_pass=True)`` is
    ``curate(Trainer(...), reference, ...)``."""

    def __init__(self, *args: Any, reference: Any, loss_fn: LossFn | None = None, estimator: str = "lai",
                 policy: Policy = keep_nonnegative, label_key: str = "labels", index_key: str | None = None,
                 one_pass: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_curation(reference, loss_fn, estimator, policy, label_key, index_key, one_pass)


__all__ = ["curate", "CuratedTrainer", "CurationMixin", "CurationGuard", "model_loss_fn", "keep_nonnegative",  # noqa: F822
           "keep_top_fraction", "check_transformers", "MIN_TRANSFORMERS", "ESTIMATORS", "TransformersVersionError",
           "CurationNotAppliedError", "LossNotDerivableError", "IndexKeyError"]  # ESTIMATORS: module __getattr__
