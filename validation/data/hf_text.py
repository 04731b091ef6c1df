"""Text documents for byte-level language modelling from a local file or a Hugging Face hub data set.

Local .txt/.json/.jsonl files are read by this module's own code (:func:`read_local_text`); only hub names, or
``use_datasets=True``, need the optional ``datasets`` package (``lai[hf]``), imported when called.
:func:`load_hf_lm` cuts the documents into the byte-level LM pairs of :mod:`validation.data.datasets`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from .arrays import TextDataset
from .datasets import make_text_dataset, text_dataset


def read_local_text(path: str | Path, text_field: str = "text", sample_by: str = "line") -> list[str]:
    """Documents from a local file without ``datasets``.

    .txt: one per line (``sample_by="line"``), per blank-line separated paragraph ("paragraph") or the whole
    file ("document"). .json/.jsonl: a JSON list or JSON lines of objects (``text_field`` taken) or strings.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        if sample_by == "line":
            return text.splitlines()
        if sample_by == "paragraph":
            return [p.strip() for p in text.split("\n\n") if p.strip()]
        if sample_by == "document":
            return [text]
        raise ValueError(f"sample_by must be 'line', 'paragraph' or 'document', got {sample_by!r}")
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported suffix (use .txt, .json or .jsonl)")
    try:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r if isinstance(r, str) else r[text_field] for r in rows]


def load_hf_text(name_or_path: str | Path, split: str = "train", text_field: str = "text", *,
                 max_docs: int | None = None, use_datasets: bool | None = None, sample_by: str = "line",
                 **load_kwargs: Any) -> list[str]:
    """Text documents from a Hugging Face hub data set or a local .txt/.json/.jsonl file.

    Local files are read by :func:`read_local_text` unless ``use_datasets=True``; hub names go through
    ``datasets.load_dataset(name, split=split, **load_kwargs)`` (needs ``datasets`` and, usually, network).
    """
    local = Path(name_or_path).is_file()
    if use_datasets is None:
        use_datasets = not local
    if not use_datasets:
        if not local:
            raise FileNotFoundError(f"{name_or_path}: not a local file (hub names need use_datasets=True)")
        docs = read_local_text(name_or_path, text_field, sample_by)
        return docs[:max_docs] if max_docs is not None else docs
    try:
        import datasets
    except ImportError:
        raise ImportError("loading Hugging Face data sets needs `datasets` (pip install 'lai[hf]' or "
                          "pip install datasets); local .txt/.jsonl files work without it") from None
    if local:
        p = Path(name_or_path)
        builder = {".txt": "text", ".json": "json", ".jsonl": "json"}.get(p.suffix)
        if builder is None:
            raise ValueError(f"{p}: unsupported suffix (use .txt, .json or .jsonl)")
        if builder == "text":
            load_kwargs.setdefault("sample_by", sample_by)
        ds = datasets.load_dataset(builder, data_files=str(p), split=split, **load_kwargs)
    else:
        ds = datasets.load_dataset(str(name_or_path), split=split, **load_kwargs)
    rows = ds if max_docs is None else (itertools.islice(ds, max_docs) if isinstance(ds, datasets.IterableDataset)
                                        else ds.select(range(min(max_docs, len(ds)))))
    return [r[text_field] for r in rows]


def load_hf_lm(name_or_path: str | Path, seq_len: int = 64, seed: int = 0, val_fraction: float = 0.1,
               val_split: str | None = None, **kw: Any) -> TextDataset:
    """Byte-level LM data (x, y int64 [n, seq_len]) from :func:`load_hf_text` documents.

    Validation: ``val_split`` loaded separately if given, else a seeded by-document split of ``val_fraction``.
    """
    name = str(name_or_path)

    def named(split: str) -> list[tuple[str, str]]:
        texts = load_hf_text(name_or_path, **{**kw, "split": split})
        return [(f"{name}:{split}:{i}", t) for i, t in enumerate(texts) if t]

    train, meta = named(kw.pop("split", "train")), {"name": name, "source": "hf"}
    if val_split is None:
        return make_text_dataset(train, seq_len, seed, val_fraction, meta)
    test = named(val_split)
    return text_dataset(train, test, seq_len, {**meta, "val_split": val_split})


__all__ = ["read_local_text", "load_hf_text", "load_hf_lm"]
