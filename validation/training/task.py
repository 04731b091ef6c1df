"""The shared training run of the validation suites: model + data + noise + plain SGD, with hooks at scored steps.

A :class:`Task` holds everything one (model, seed) run needs: the model at initialisation, the training set
with injected noise (``is_noisy`` marks the samples whose label or text was corrupted), a clean reference
batch from the test split, and the *scored batch* (``probe``): a fixed, seeded set of training samples that
every suite scores at every scored step, so a sample's score can be followed across training.

Training is plain SGD on the mean loss of a minibatch, ``w <- w - lr * mean_j grad l_j``, the step the
influence scores are the first-order effect of. The minibatch of step s (the update that takes the model
from step s to step s + 1) depends only on (seed, s): each epoch is a seeded permutation, the last partial
batch dropped. So a run resumed from a checkpoint at step s continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import influence
from influence.batch import Batch
from validation.data import datasets as vdata
from validation.settings.profiles import MODELS, ModelSettings
from validation.training.models import build_model


@dataclass
class Task:
    """One model's training run and scoring data.

    x_train, y_train: training inputs and (noisy) targets, [n_train, ...]; is_noisy bool [n_train];
    ref: clean reference batch (x [n_ref, ...], y); probe: int64 [n_score] indices into the training set
    (the scored batch); noise: JSON-ready description of the injected noise.
    """

    name: str
    settings: ModelSettings
    seed: int
    model: nn.Module
    x_train: Tensor
    y_train: Tensor
    is_noisy: Tensor
    ref: Batch
    probe: Tensor
    noise: dict[str, Any] = field(default_factory=dict)
    loss_fn: Callable[[Tensor, Any], Tensor] = influence.cross_entropy

    @property
    def lr(self) -> float:
        return float(self.settings.lr)

    def scored_batch(self) -> Batch:
        """The scored batch (inputs [n_score, ...], targets)."""
        return self.x_train[self.probe], self.y_train[self.probe]

    def to(self, device: torch.device | str) -> "Task":
        """Move model and tensors to ``device`` (in place); returns self."""
        self.model.to(device)
        self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)
        self.ref = (self.ref[0].to(device), self.ref[1].to(device))
        return self


# ------------------------------------------------------------------------------------------------- data

def _text_data(s: ModelSettings, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
    """pydoc topics split by document; a share of the *training* documents corrupted before tokenising."""
    seq_len = int(s.data_kw.get("seq_len", 64))
    docs = vdata.pydoc_documents()
    train_docs, test_docs = vdata.split_documents(docs, float(s.data_kw.get("val_fraction", 0.1)), seed)
    rec = s.noise.apply_documents(train_docs, seed=seed)
    x, y, doc = vdata.tokenize_documents(rec.texts, seq_len)
    x_te, y_te, _ = vdata.tokenize_documents(test_docs, seq_len)
    is_noisy = rec.is_noisy[doc]
    info = {**rec.to_dict(), "noisy_documents": [train_docs[i][0] for i in rec.is_noisy.nonzero().flatten()],
            "sequence_noise_rate": float(is_noisy.float().mean()) if len(is_noisy) else 0.0}
    return x, y, is_noisy, x_te, y_te, info


def _label_data(s: ModelSettings, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
    ds = vdata.get_dataset(s.dataset, seed=seed, **s.data_kw)
    k = int(ds.meta.get("num_classes", int(ds.y_train.max()) + 1))
    rec = s.noise.apply_labels(ds.y_train, k, seed=seed)
    info = {k_: v for k_, v in rec.to_dict().items() if k_ not in ("y_noisy", "y_clean")}
    return ds.x_train, rec.y_noisy, rec.is_noisy, ds.x_test, ds.y_test, info


def stratified_probe(is_noisy: Tensor, n: int, seed: int) -> Tensor:
    """n training indices, seeded, with round(n * noise share) noisy ones (at least 1 of each kind when both
    exist and n >= 2, so the noisy-sample AUROC is defined). Sorted int64 [n]."""
    noisy, clean = is_noisy.nonzero().flatten(), (~is_noisy).nonzero().flatten()
    if n > len(is_noisy):
        raise ValueError(f"scored batch of {n} > {len(is_noisy)} training samples")
    share = len(noisy) / max(len(is_noisy), 1)
    k = round(n * share)
    if n >= 2 and len(noisy) and len(clean):
        k = min(max(k, 1), n - 1)
    k = min(k, len(noisy))
    k = max(k, n - len(clean))
    gen = torch.Generator().manual_seed(seed)
    pick_noisy = noisy[torch.randperm(len(noisy), generator=gen)[:k]]
    pick_clean = clean[torch.randperm(len(clean), generator=gen)[:n - k]]
    return torch.cat([pick_noisy, pick_clean]).sort().values


def build_task(name: str, settings: ModelSettings, seed: int, device: torch.device | str = "cpu") -> Task:
    """Data, noise, model (initialised with ``torch.manual_seed(seed)``), reference and scored batches."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    make = _text_data if settings.noise.kind == "documents" else _label_data
    x, y, is_noisy, x_te, y_te, info = make(settings, seed)
    if len(x_te) < settings.n_ref:
        raise ValueError(f"{name}: reference batch of {settings.n_ref} > {len(x_te)} test samples")
    gen = torch.Generator().manual_seed(seed + 1)
    ref_idx = torch.randperm(len(x_te), generator=gen)[:settings.n_ref].sort().values
    probe = stratified_probe(is_noisy, settings.n_score, seed + 2)
    torch.manual_seed(seed)
    model = build_model(settings.model, **settings.model_kw).eval()
    task = Task(name, settings, seed, model, x, y, is_noisy, (x_te[ref_idx], y_te[ref_idx]), probe, info)
    return task.to(device)


# --------------------------------------------------------------------------------------------- training

class BatchSchedule:
    """Minibatch indices of every step: epoch e is ``randperm(n_train)`` seeded with (seed, e), cut into
    floor(n_train / batch_size) batches. ``indices(s)`` is the batch of the update from step s to s + 1."""

    def __init__(self, n_train: int, batch_size: int, seed: int) -> None:
        if not 0 < batch_size <= n_train:
            raise ValueError(f"batch_size must be in 1..{n_train}, got {batch_size}")
        self.n, self.bs, self.seed = n_train, batch_size, seed
        self.per_epoch = n_train // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> Tensor:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[k * self.bs:(k + 1) * self.bs]


def sgd_step(model: nn.Module, loss_fn: Callable[[Tensor, Any], Tensor], batch: Batch, lr: float) -> float:
    """One plain SGD step on the batch mean loss (in place); returns that loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1]).mean()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
    return float(loss.detach())


def train(task: Task, hook: Callable[[int, nn.Module], None] | None = None, stops: Iterable[int] = (),
          start_step: int = 0, state: dict[str, Tensor] | None = None, progress: bool = True,
          desc: str | None = None) -> nn.Module:
    """Train a copy of ``task.model`` from ``start_step`` (weights ``state``, default the initialisation) up to
    max(stops), calling ``hook(step, model)`` at every step in ``stops`` (the model after ``step`` updates;
    the hook must not change it). Returns the trained copy."""
    model = copy.deepcopy(task.model)
    if state is not None:
        model.load_state_dict(state)
    stops = sorted(set(int(s) for s in stops))
    if any(s < start_step for s in stops):
        raise ValueError(f"stops {stops} include steps before start_step={start_step}")
    schedule = BatchSchedule(len(task.x_train), task.settings.batch_size, task.seed)
    last = stops[-1] if stops else start_step
    pending = list(stops)
    bar = tqdm(total=(last - start_step) * task.settings.batch_size, desc=desc or f"train {task.name} seed {task.seed}",
               disable=not progress, leave=False, unit="sample", unit_scale=True)  # the rate reads in samples/s
    step = start_step
    try:
        while True:
            while pending and pending[0] == step:
                pending.pop(0)
                if hook is not None:
                    hook(step, model)
            if step >= last:
                break
            idx = schedule.indices(step)
            loss = sgd_step(model, task.loss_fn, (task.x_train[idx], task.y_train[idx]), task.lr)
            step += 1
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    finally:
        bar.close()
    return model


def scoring_copy(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A detached copy of ``model`` in ``dtype`` and eval mode (the bound suite scores in float64)."""
    return copy.deepcopy(model).to(dtype).eval()


def cast_batch(batch: Batch, dtype: torch.dtype) -> Batch:
    """Floating-point inputs cast to ``dtype`` (token ids and class labels unchanged)."""
    x, y = batch
    return (x.to(dtype) if x.is_floating_point() else x), y


__all__ = ["Task", "build_task", "BatchSchedule", "sgd_step", "train", "scoring_copy", "cast_batch",
           "stratified_probe"]
