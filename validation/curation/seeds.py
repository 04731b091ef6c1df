"""Independent random streams per purpose: every random choice of a curated-training run has its own.

Drawing two choices from generators seeded with the same integer replays one permutation in both (the training
subset was exactly the noisy samples, pitfall 16). ``stream(seed, purpose)`` mixes the run seed with the
purpose's name through numpy's ``SeedSequence``, so different purposes (and different seeds) give unrelated
streams, and the same (seed, purpose) always gives the same one.

Purposes used: ``split`` (held-out reference pool vs training samples), ``noise`` (which labels flip and to
what), ``subset`` (``max_train``), ``init`` (model initialisation), ``batches`` (batch order, per epoch),
``pretrain`` (batch order of clean pre-training), ``reference`` (reference draws), ``select`` (random selection).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def stream(seed: int, purpose: str, *extra: int) -> int:
    """A 63-bit seed for (``seed``, ``purpose``, ``*extra``) (e.g. extra = (epoch,)), unrelated across purposes."""
    if seed < 0 or any(e < 0 for e in extra):
        raise ValueError(f"seeds must be non-negative, got {seed} {extra}")
    # the count of extras is part of the key: SeedSequence treats trailing zeros as absent ([s, p] == [s, p, 0])
    key = [int(seed), zlib.crc32(purpose.encode("utf-8")), len(extra), *map(int, extra)]
    hi, lo = (int(v) for v in np.random.SeedSequence(key).generate_state(2, dtype=np.uint32))
    return ((hi << 32) | lo) >> 1


def generator(seed: int, purpose: str, *extra: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``stream(seed, purpose, *extra)``."""
    return torch.Generator().manual_seed(stream(seed, purpose, *extra))
