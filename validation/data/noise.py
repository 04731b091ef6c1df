"""Seeded, recorded label and document noise.

Same arguments (seed included) give identical results; every record's mask is exactly the set of
samples whose label (or text) differs from the clean one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch


@dataclass
class NoiseRecord:
    """Labels after noise. y_noisy, y_clean int64 [n]; is_noisy bool [n] (== y_noisy != y_clean);
    transition float64 [K, K] (row c: distribution of the noisy label of a class-c sample) or None."""

    y_noisy: torch.Tensor
    is_noisy: torch.Tensor
    y_clean: torch.Tensor
    rate: float
    kind: str
    seed: int | None
    num_classes: int
    transition: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_rate(self) -> float:
        """Fraction of labels actually changed."""
        return int(self.is_noisy.sum()) / len(self.is_noisy) if len(self.is_noisy) else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (tensors as lists)."""
        return {"kind": self.kind, "rate": self.rate, "seed": self.seed, "num_classes": self.num_classes,
                "noise_rate": self.noise_rate, "y_noisy": self.y_noisy.tolist(), "y_clean": self.y_clean.tolist(),
                "noisy_indices": self.is_noisy.nonzero().flatten().tolist(),
                "transition": None if self.transition is None else self.transition.tolist(), "meta": self.meta}


def _labels(y: Any, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(torch.int64).flatten().clone()
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return y


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")


def symmetric_label_noise(y: Any, rate: float, num_classes: int, seed: int = 0) -> NoiseRecord:
    """Flip exactly round(rate * n) labels (chosen by a seeded permutation), each to a different class
    drawn uniformly. ``y``: int labels [n] (tensor or array-like)."""
    _check_rate(rate)
    y = _labels(y, num_classes)
    n_flip = int(round(rate * len(y)))
    if n_flip and num_classes < 2:
        raise ValueError("symmetric noise needs at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=gen)[:n_flip]
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + torch.randint(1, max(num_classes, 2), (n_flip,), generator=gen)) % num_classes
    off = rate / (num_classes - 1) if num_classes > 1 else 0.0
    transition = torch.full((num_classes, num_classes), off, dtype=torch.float64)
    transition.fill_diagonal_(1.0 - rate if num_classes > 1 else 1.0)
    return NoiseRecord(y_noisy, y_noisy != y, y, rate, "symmetric", seed, num_classes, transition)


def class_dependent_label_noise(y: Any, rate: float, num_classes: int, seed: int = 0,
                                mapping: Sequence[int] | Mapping[int, int] | None = None) -> NoiseRecord:
    """Asymmetric noise: each class-c sample becomes mapping[c] with probability ``rate`` (seeded Bernoulli).

    ``mapping`` defaults to the pair flip c -> (c + 1) % K; a dict may omit classes (they stay clean).
    """
    _check_rate(rate)
    y = _labels(y, num_classes)
    if mapping is None:
        m = [(c + 1) % num_classes for c in range(num_classes)]
    elif isinstance(mapping, Mapping):
        m = [int(mapping.get(c, c)) for c in range(num_classes)]
    else:
        m = [int(v) for v in mapping]
    if len(m) != num_classes or any(not 0 <= v < num_classes for v in m):
        raise ValueError(f"mapping must send each of the {num_classes} classes to a class in 0..{num_classes - 1}")
    m = torch.tensor(m, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    flip = (torch.rand(len(y), generator=gen, dtype=torch.float64) < rate) & (m[y] != y)
    y_noisy = torch.where(flip, m[y], y)
    transition = torch.eye(num_classes, dtype=torch.float64)
    moved = m != torch.arange(num_classes)
    transition[moved] *= 1.0 - rate
    transition[moved.nonzero().flatten(), m[moved]] += rate
    return NoiseRecord(y_noisy, y_noisy != y, y, rate, "class_dependent", seed, num_classes, transition,
                       meta={"mapping": m.tolist()})


# ---------------------------------------------------------------------------------------------- documents

@dataclass
class DocumentNoiseRecord:
    """Documents after corruption: ``texts`` mirrors the input (str or (name, text) items); is_noisy bool [n]."""

    texts: list[Any]
    is_noisy: torch.Tensor
    rate: float
    mode: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (indices of the corrupted documents, not the texts)."""
        return {"kind": "documents", "mode": self.mode, "rate": self.rate, "seed": self.seed,
                "n": len(self.texts), "noisy_indices": self.is_noisy.nonzero().flatten().tolist()}


_PRINTABLE = np.frombuffer(bytes(range(32, 127)) + b"\n", dtype=np.uint8)
DOC_MODES = ("shuffle", "shuffle_chars", "random_bytes")


def _corrupt(text: str, mode: str, rng: np.random.Generator) -> str:
    if mode == "shuffle":  # word order shuffled, joined by single spaces
        words = text.split()
        return " ".join(words[i] for i in rng.permutation(len(words)))
    if mode == "shuffle_chars":
        return "".join(text[i] for i in rng.permutation(len(text)))
    # random printable ASCII of the same UTF-8 byte length (one byte per character)
    return rng.choice(_PRINTABLE, size=len(text.encode("utf-8"))).tobytes().decode("ascii")


def corrupt_documents(texts: Sequence[str] | Sequence[tuple[str, str]], rate: float, seed: int = 0,
                      mode: str = "shuffle", max_tries: int = 10) -> DocumentNoiseRecord:
    """Corrupt round(rate * n) documents chosen by a seeded permutation.

    Modes: "shuffle" (shuffle words), "shuffle_chars", "random_bytes" (random printable ASCII, same byte
    length). A chosen document is redrawn up to ``max_tries`` times until it differs; one that cannot
    change (e.g. empty) stays clean, so ``is_noisy`` is exactly the set of changed documents.
    """
    _check_rate(rate)
    if mode not in DOC_MODES:
        raise ValueError(f"mode must be one of {DOC_MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    out, noisy = list(texts), torch.zeros(len(texts), dtype=torch.bool)
    for i in sorted(rng.permutation(len(texts))[:int(round(rate * len(texts)))].tolist()):
        item = out[i]
        text = item if isinstance(item, str) else item[1]
        for _ in range(max_tries):
            new = _corrupt(text, mode, rng)
            if new != text:
                out[i] = new if isinstance(item, str) else (item[0], new)
                noisy[i] = True
                break
    return DocumentNoiseRecord(out, noisy, rate, mode, seed)
