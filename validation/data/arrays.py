"""The containers every data set is returned in: train/test tensors (``ArrayDataset``) and byte-level LM data split
by document (``TextDataset``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ArrayDataset:
    """Train/test tensors. Classification: x float32 [n, ...], y int64 [n]. LM: x, y int64 [n, seq_len]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextDataset(ArrayDataset):
    """Byte-level LM data split by document.

    ``docs_train``/``docs_test``: lists of (name, text); ``doc_train``/``doc_test``: int64 [n] index into
    the split's document list of the document each sequence was cut from.
    """

    docs_train: list[tuple[str, str]] = field(default_factory=list)
    docs_test: list[tuple[str, str]] = field(default_factory=list)
    doc_train: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    doc_test: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
