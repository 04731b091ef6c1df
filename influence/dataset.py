"""Score a whole data set against a reference set: streamed in batches, resumable, sharded across processes.

    scorer = functools.partial(influence.ghost, model, loss_fn, ref=ref_batch, lr=0.1)   # or a session's .score
    ds = influence.score_dataset(scorer, train_set, batch_size=256, out="scores/ghost")
    ds.scores            # Tensor [N]: score of sample ds.indices[k] (indices are positions in the data set)
    ds.proponents(10)    # (indices, scores) of the 10 samples whose SGD step lowers the reference loss most
    ds.opponents(10)     # ... of the 10 that raise it most (smallest scores), worst first
    # pairwise=True (with a scorer that returns the [n, n_ref] matrix, e.g. Session(..., pairwise=True)):
    ds.pairwise          # Tensor [N, n_ref]: the score of each sample against each reference sample
    ds.proponents(10, reference=3)   # the top 10 against reference sample 3 alone

``data`` is an ``(inputs, targets)`` pair of tensors (or pytrees of tensors) too big for one batch, a map-style
``torch.utils.data.Dataset`` whose items are ``(input, target)``, or a ``DataLoader``. A loader that shuffles is
re-read in order (same data set, batch size and ``collate_fn``) so that every score keeps its sample index.

Memory: one batch of ``batch_size`` samples is scored at a time; what is kept is [N] scores (and [N] per layer
with ``per_layer=True``; [N, n_ref] with ``pairwise=True``) on the CPU. With ``out``, every scored batch is written to
its own file (atomically) next to a manifest; a rerun with the same ``out`` and the same settings skips the batches
already on disk, so a killed run resumes where it stopped; it says so on stderr (how many batches and samples were
read back) and ``DatasetScores.reused`` counts the samples read back. The progress bar counts samples (its rate
reads in samples/s). Under ``torch.distributed`` (or with ``shard=(rank, world)``) batch k is
scored by rank k mod world and the scores are gathered to every rank in sample order, equal to one process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .atomic import atomic_torch_save, atomic_write_json
from .batch import Batch, check_batch, take
from .errors import InfluenceError
from .result import InfluenceResult, Ranking, column, rank

Scorer = Callable[[Batch], InfluenceResult]
MANIFEST = "manifest.json"


class ResumeMismatchError(InfluenceError):
    """The output folder holds scores computed with other settings; refuse to mix them."""


@dataclass
class DatasetScores:
    """Scores of a data set. ``indices`` [N] int64 (positions in the data set, ascending), ``scores`` [N] in the
    estimator's units (lr * <grad l_i, grad L_ref>), ``per_layer``: module name -> [N] (when asked for),
    ``pairwise`` [N, n_ref] (when asked for: ``scores`` is its row mean), ``reused``: samples read back from a
    previous run's files instead of scored."""

    indices: Tensor
    scores: Tensor
    per_layer: dict[str, Tensor] | None
    estimator: str
    lr: float
    pairwise: Tensor | None = None
    reused: int = 0

    def proponents(self, k: int, reference: int | None = None) -> Ranking:
        """``(indices, scores)`` of the k largest scores (the samples that help the reference set most), best
        first; ``reference=v``: against reference sample v alone (needs ``pairwise=True``)."""
        scores = column(self.pairwise, reference, "score_dataset(..., pairwise=True)")
        return rank(self.indices, self.scores if scores is None else scores, k, largest=True)

    def opponents(self, k: int, reference: int | None = None) -> Ranking:
        """``(indices, scores)`` of the k smallest scores (the samples that hurt the reference set most), worst
        first; ``reference`` as in :meth:`proponents`."""
        scores = column(self.pairwise, reference, "score_dataset(..., pairwise=True)")
        return rank(self.indices, self.scores if scores is None else scores, k, largest=False)

    def save(self, path: str | os.PathLike) -> None:
        """One file readable by :meth:`load` (``torch.load(weights_only=True)``), written atomically."""
        atomic_torch_save(path, self._state())

    def _state(self) -> dict[str, Any]:
        return {"indices": self.indices, "scores": self.scores, "per_layer": self.per_layer,
                "estimator": self.estimator, "lr": self.lr, "pairwise": self.pairwise}

    @staticmethod
    def load(path: str | os.PathLike) -> "DatasetScores":
        """The scores :meth:`save` (or ``score_dataset(..., out=)``, as ``scores.pt``) wrote."""
        return DatasetScores(**torch.load(path, weights_only=True))


# ------------------------------------------------------------------ reading the data in order with indices


def _tensor_batches(data: Batch, batch_size: int) -> tuple[int, Callable[[int], Batch]]:
    n = check_batch(data, "data")
    return n, lambda start: take(data, slice(start, start + batch_size))


def _loader_batches(dataset: Dataset, batch_size: int, collate_fn: Callable | None,
                    num_workers: int) -> tuple[int, Callable[[int], Batch]]:
    n = len(dataset)  # type: ignore[arg-type]
    kwargs = {"collate_fn": collate_fn} if collate_fn is not None else {}

    def get(start: int) -> Batch:
        idx = list(range(start, min(start + batch_size, n)))
        loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=len(idx), shuffle=False,
                            num_workers=num_workers, **kwargs)
        return next(iter(loader))
    return n, get


def _source(data: Any, batch_size: int | None, num_workers: int) -> tuple[int, int, Callable[[int], Batch]]:
    """(N, batch size, batch_at(start)) for the supported kinds of ``data``."""
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise InfluenceError("score_dataset needs a map-style data set (with __len__ and indexing) so that "
                                 "every score keeps its sample index; got an IterableDataset")
        bs = batch_size or data.batch_size
        if bs is None:
            raise InfluenceError("the DataLoader has batch_size=None; pass batch_size=")
        n, get = _loader_batches(data.dataset, bs, data.collate_fn, num_workers)
        return n, bs, get
    if isinstance(data, Dataset):
        if isinstance(data, IterableDataset):
            raise InfluenceError("score_dataset needs a map-style data set (with __len__ and indexing)")
        bs = batch_size or 64
        n, get = _loader_batches(data, bs, None, num_workers)
        return n, bs, get
    if isinstance(data, (tuple, list)) and len(data) == 2:
        bs = batch_size or 64
        n, get = _tensor_batches(data, bs)
        return n, bs, get
    raise InfluenceError(f"data must be an (inputs, targets) pair, a map-style Dataset or a DataLoader; "
                         f"got {type(data).__name__}")


# ------------------------------------------------------------------ resumable storage


class _Store:
    """Scored batches as ``part-<start>.pt`` files under ``root`` with a manifest of the settings."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        path = root / MANIFEST
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = None
            if old is not None and old != manifest:
                diff = {k: (old.get(k), manifest.get(k)) for k in set(old) | set(manifest)
                        if old.get(k) != manifest.get(k)}
                raise ResumeMismatchError(f"{root} holds scores computed with other settings {diff} (stored, now); "
                                          "use another folder or delete it")
            if old is not None:
                return
        atomic_write_json(path, manifest)

    def part(self, start: int) -> Path:
        return self.root / f"part-{start:012d}.pt"

    def read(self, start: int) -> dict[str, Any] | None:
        """A stored batch, or None when absent or unreadable (it is then scored again)."""
        p = self.part(start)
        if not p.exists():
            return None
        try:
            return torch.load(p, weights_only=True)
        except Exception:  # a truncated or corrupt file: recompute it
            return None


def _shard() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress(total: int, enabled: bool, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the light core has no tqdm: no bar
        enabled = False
    if not enabled:
        class _Null:
            def update(self, k: int) -> None: ...
            def close(self) -> None: ...
        return _Null()
    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, leave=True)  # rate in samples/s


def _entry(r: InfluenceResult, start: int, per_layer: bool, pairwise: bool = False) -> dict[str, Any]:
    n = r.scores.shape[0]
    if pairwise and r.pairwise is None:
        raise InfluenceError("score_dataset(pairwise=True) needs a scorer that returns the per-reference matrix: "
                             "influence.Session(..., pairwise=True) or an estimator called with pairwise=True")
    return {"indices": torch.arange(start, start + n), "scores": r.scores.detach().cpu(),
            "per_layer": {k: v.detach().cpu() for k, v in r.per_layer.items()} if per_layer else None,
            "estimator": r.estimator, "lr": float(r.lr),
            "pairwise": r.pairwise.detach().cpu() if pairwise else None}


def _gather(entries: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    if world == 1:
        return entries
    import torch.distributed as dist
    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, entries)
    return [e for part in everything for e in part]


def score_dataset(scorer: Scorer, data: Any, *, batch_size: int | None = None, per_layer: bool = False,
                  pairwise: bool = False, out: str | os.PathLike | None = None, fingerprint: str | None = None, progress: bool = True,
                  shard: tuple[int, int] | None = None, num_workers: int = 0) -> DatasetScores:
    """Score every sample of ``data`` with ``scorer(batch) -> InfluenceResult``, ``batch_size`` samples at a time.

    ``out``: folder for resumable results (one file per batch, a manifest, and ``scores.pt`` at the end);
    ``fingerprint``: any string that identifies the model state and reference set (default: a session's own),
    stored in the manifest so that a resume with a different one is refused (``ResumeMismatchError``).
    ``shard=(rank, world)``: score only batches k with k % world == rank and gather (default: from
    ``torch.distributed`` when initialised). ``pairwise``: also keep the [N, n_ref] per-reference score matrix
    (the scorer must return it). Returns scores in ascending sample order.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise InfluenceError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, bs, batch_at = _source(data, batch_size, num_workers)
    if n == 0:
        raise InfluenceError("data holds no sample")
    rank, world = shard if shard is not None else _shard()
    starts = list(range(0, n, bs))
    mine = [s for k, s in enumerate(starts) if k % world == rank]
    store = None
    if out is not None:
        if fingerprint is None and callable(getattr(scorer, "fingerprint", None)):
            fingerprint = scorer.fingerprint()
        manifest = {"n": n, "batch_size": bs, "per_layer": per_layer, "fingerprint": fingerprint,
                    **({"pairwise": True} if pairwise else {}),
                    "scorer": getattr(scorer, "describe", lambda: _describe(scorer))()}
        store = _Store(Path(out), manifest)
    stored = [s for s in mine if store is not None and store.part(s).exists()]
    if stored and progress and rank == 0:
        samples = sum(min(bs, n - s) for s in stored)
        print(f"score_dataset: resuming {out}: {len(stored)} of {len(mine)} batches ({samples:,} samples) read back "
              "from its files, the rest scored now", file=sys.stderr, flush=True)
    bar = _progress(sum(min(bs, n - s) for s in mine), progress and rank == 0, "scoring")
    entries, reused = [], 0
    try:
        for start in mine:
            entry = store.read(start) if store is not None else None
            if entry is None:
                entry = _entry(scorer(batch_at(start)), start, per_layer, pairwise)
                if store is not None:
                    atomic_torch_save(store.part(start), entry)
            else:
                reused += len(entry["scores"])
            entries.append(entry)
            bar.update(len(entry["scores"]))
    finally:
        bar.close()
    entries = sorted(_gather(entries, world), key=lambda e: int(e["indices"][0]))
    result = DatasetScores(torch.cat([e["indices"] for e in entries]), torch.cat([e["scores"] for e in entries]),
                           {k: torch.cat([e["per_layer"][k] for e in entries]) for k in entries[0]["per_layer"]}
                           if per_layer else None, entries[0]["estimator"], entries[0]["lr"],
                           torch.cat([e["pairwise"] for e in entries]) if pairwise else None, reused)
    if store is not None and rank == 0:
        result.save(store.root / "scores.pt")
    return result


def fingerprint(*things: Any) -> str:
    """sha256 of every tensor in ``things`` (modules: their parameters and buffers; pytrees of tensors), in order:
    pass ``fingerprint(model, ref_batch)`` to :func:`score_dataset` so a resume against changed weights or another
    reference set is refused."""
    import hashlib

    from .compat import tree_flatten
    h = hashlib.sha256()
    for thing in things:
        tensors = [t for _, t in sorted(thing.state_dict().items())] if isinstance(thing, torch.nn.Module) \
            else [t for t in tree_flatten(thing)[0] if isinstance(t, Tensor)]
        for t in tensors:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _describe(scorer: Any) -> str:
    """A stable text for the manifest: the function name and its bound keyword options (tensors by shape)."""
    func = getattr(scorer, "func", scorer)
    kw = getattr(scorer, "keywords", {}) or {}

    def show(v: Any) -> str:
        if isinstance(v, Tensor):
            return f"Tensor{tuple(v.shape)}"
        if isinstance(v, (int, float, str, bool, type(None))):
            return repr(v)
        return type(v).__name__
    opts = ",".join(f"{k}={show(v)}" for k, v in sorted(kw.items()))
    return f"{getattr(func, '__qualname__', type(func).__name__)}({opts})"
