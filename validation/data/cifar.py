"""CIFAR-10/100 images and the CIFAR-10N/100N human noisy labels, read by this module's own code.

Reading needs no torchvision; only ``download=True`` does (imported then). CIFAR pickles go through a restricted
unpickler; CIFAR-N label files through ``torch.load(weights_only=True)`` with numpy's array reconstructors allowed.
"""

from __future__ import annotations

import codecs
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arrays import ArrayDataset
from .noise import NoiseRecord

# ------------------------------------------------------------------------------------------------ CIFAR

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR "python version" file holds: dicts, lists, bytes, strings, numbers and numpy
    arrays (whose reconstructors are the only globals admitted); anything else (a ``__reduce__`` payload
    naming ``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError`` before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        # _codecs.encode: how protocol-2 pickles written by Python 3 spell bytes (str -> bytes, nothing else);
        # numeric._frombuffer: how protocol-5 pickles rebuild an array from its buffer
        core = getattr(np, "_core", None) or np.core
        allowed = {qual: obj for obj, qual in _numpy_safe_globals()} | {"_codecs.encode": codecs.encode} | {
            f"{mod}.numeric._frombuffer": core.numeric._frombuffer for mod in ("numpy.core", "numpy._core")}
        obj = allowed.get(f"{module}.{name}")
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds only arrays, lists, "
                                         "dicts and bytes (tampered or not a CIFAR file?)")
        return obj


def read_pickle_arrays(path: str | Path) -> Any:
    """The content of a CIFAR-format pickle (Python 2 strings read as bytes), through the restricted unpickler."""
    with open(path, "rb") as f:
        return _ArraysOnlyUnpickler(f, encoding="bytes").load()


def read_cifar_batch(path: str | Path, label_key: str = "labels") -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled CIFAR "python version" batch: dict with b'data' uint8 [N, 3072] and b'<label_key>' [N].

    Returns x uint8 [N, 3, 32, 32] (channel-major, as stored) and y int64 [N]. Read by a restricted
    unpickler (``read_pickle_arrays``): a file that would run code raises ``pickle.UnpicklingError``.
    """
    d = read_pickle_arrays(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict, got {type(d).__name__}")
    data = np.asarray(d.get(b"data", d.get("data")), dtype=np.uint8)
    labels = np.asarray(d.get(label_key.encode(), d.get(label_key)), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _read_meta(path: Path, key: str) -> list[str] | None:
    if not path.exists():
        return None
    d = read_pickle_arrays(path)
    names = d.get(key.encode(), d.get(key))
    return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar_dir(root: str | Path, sub: str, probe: str, download: bool, which: str) -> Path:
    root = Path(root)
    for d in (root / sub, root):
        if (d / probe).exists():
            return d
    if not download:
        raise FileNotFoundError(f"{which}: no {sub}/{probe} under {root}. Download and extract "
                                f"{CIFAR_URLS[which]} there, or pass download=True (needs torchvision).")
    try:
        import torchvision
    except ImportError:
        raise ImportError(f"{which} download=True needs torchvision (pip install torchvision); or download and "
                          f"extract {CIFAR_URLS[which]} into {root} and use download=False") from None
    cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
    cls(str(root), train=True, download=True)
    return root / sub


def _to_float(x: torch.Tensor, raw: bool) -> torch.Tensor:
    return x if raw else x.to(torch.float32).div_(255.0)


def load_cifar10(root: str | Path, download: bool = False, raw: bool = False) -> ArrayDataset:
    """CIFAR-10 from ``root`` (containing ``cifar-10-batches-py``, or that directory itself).

    x float32 [N, 3, 32, 32] in [0, 1] (uint8 when ``raw``), y int64 [N]; 50000 train / 10000 test.
    """
    d = _cifar_dir(root, CIFAR10_DIR, "data_batch_1", download, "cifar10")
    parts = [read_cifar_batch(d / f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = read_cifar_batch(d / "test_batch")
    x_tr, y_tr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return ArrayDataset(_to_float(x_tr, raw), y_tr, _to_float(x_te, raw), y_te,
                        meta={"name": "cifar10", "num_classes": 10, "root": str(d),
                              "label_names": _read_meta(d / "batches.meta", "label_names")})


def load_cifar100(root: str | Path, download: bool = False, raw: bool = False, coarse: bool = False
                  ) -> ArrayDataset:
    """CIFAR-100 from ``root`` (containing ``cifar-100-python``, or that directory itself).

    x float32 [N, 3, 32, 32] in [0, 1] (uint8 when ``raw``), y int64 [N]: 100 fine labels (20 if ``coarse``).
    """
    d = _cifar_dir(root, CIFAR100_DIR, "train", download, "cifar100")
    key = "coarse_labels" if coarse else "fine_labels"
    x_tr, y_tr = read_cifar_batch(d / "train", key)
    x_te, y_te = read_cifar_batch(d / "test", key)
    return ArrayDataset(_to_float(x_tr, raw), y_tr, _to_float(x_te, raw), y_te,
                        meta={"name": "cifar100", "num_classes": 20 if coarse else 100, "root": str(d),
                              "label_names": _read_meta(d / "meta", "coarse_label_names" if coarse
                                                        else "fine_label_names")})


# ------------------------------------------------------------------------------------------- CIFAR-N

def _numpy_safe_globals() -> list[tuple[Any, str]]:
    """Numpy array/dtype reconstructors only, under the names numpy 1.x and 2.x pickle them with."""
    core = getattr(np, "_core", None) or np.core
    objs: list[tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        objs += [(core.multiarray._reconstruct, f"{mod}._reconstruct"), (core.multiarray.scalar, f"{mod}.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        objs += [(getattr(dtypes, n), f"numpy.dtypes.{n}") for n in dir(dtypes) if n.endswith("DType")]
    return objs


def torch_load_numpy(path: str | Path, trusted: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` plus numpy arrays allow-listed; ``trusted`` allows any pickle."""
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


CIFAR10N_LABELS = ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_LABELS = ("clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label")


def _as_labels(v: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v)).to(torch.int64).flatten()


def load_cifar_n(path: str | Path, label: str | None = None, clean_labels: Any = None,
                 trusted: bool = False) -> NoiseRecord:
    """Human noisy labels from ``CIFAR-10_human.pt`` (CIFAR-10N) or ``CIFAR-100_noisy_label.pt`` (CIFAR-100N).

    ``label``: key to use (default "worse_label" for 10N, "noisy_label" for 100N). ``clean_labels``: the
    CIFAR train labels [50000] (e.g. ``load_cifar10(root).y_train``); the file's clean labels must equal
    them, else ValueError. Returns a NoiseRecord (y_noisy, y_clean int64 [N], is_noisy bool [N]).
    """
    d = torch_load_numpy(path, trusted)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, got {type(d).__name__}")
    is100 = "noisy_label" in d
    label = label or ("noisy_label" if is100 else "worse_label")
    if label not in d:
        raise KeyError(f"{path}: no key {label!r}; available: {sorted(d)}")
    clean_key = "clean_coarse_label" if "coarse" in label else "clean_label"
    if clean_key not in d:
        raise KeyError(f"{path}: no clean labels {clean_key!r}; available: {sorted(d)}")
    y_noisy, y_clean = _as_labels(d[label]), _as_labels(d[clean_key])
    if len(y_noisy) != len(y_clean):
        raise ValueError(f"{path}: {label!r} has {len(y_noisy)} labels but {clean_key!r} has {len(y_clean)}")
    if clean_labels is not None:
        ref = _as_labels(clean_labels)
        if len(ref) != len(y_clean):
            raise ValueError(f"{path}: {len(y_clean)} labels but the CIFAR train set has {len(ref)}; "
                             "CIFAR-N labels are for the 50000 training images in the official order")
        if "coarse" not in label and not torch.equal(ref, y_clean):
            bad = int((ref != y_clean).sum())
            raise ValueError(f"{path}: clean labels differ from the CIFAR train labels at {bad} of {len(ref)} "
                             "images (wrong file, wrong data set or reordered images)")
    k = (20 if "coarse" in label else 100) if is100 else 10
    noisy = y_noisy != y_clean
    return NoiseRecord(y_noisy, noisy, y_clean, int(noisy.sum()) / max(len(noisy), 1),
                       f"{'cifar100n' if is100 else 'cifar10n'}/{label}", None, k, meta={"path": str(path)})


__all__ = ["read_pickle_arrays", "read_cifar_batch", "load_cifar10", "load_cifar100", "torch_load_numpy", "load_cifar_n"]
