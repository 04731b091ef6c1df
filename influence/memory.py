"""The memory budget every estimator works within, and its named refusal.

``memory_budget`` (bytes) bounds the estimator's own working tensors beyond the model's forward and backward: a
Gram chunk, a reference matrix, a chunk of per-sample gradients, the reference factors a Gram form keeps. Each
is sized (rows or samples per chunk) to fit, and where no chunking can fit (one sample's gradient, a reference
matrix that is read whole) the estimator raises :class:`MemoryBudgetError` before allocating it.

The default (``memory_budget=None``) is half of the memory free when the scoring session starts: on CUDA
``torch.cuda.mem_get_info`` of the current device, on the CPU the kernel's ``MemAvailable`` (Linux), else
physical memory / 4.
"""

from __future__ import annotations

import os

import torch

from .errors import MemoryBudgetError

FREE_FRACTION = 0.5




def free_bytes(device: torch.device | str | None = None) -> int:
    """Bytes free on ``device`` now (CUDA: ``mem_get_info``; CPU: ``MemAvailable``, else physical memory / 4)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def resolve_budget(budget: int | None, device: torch.device | str | None = None) -> int:
    """``budget`` as a positive number of bytes: ``None`` is ``FREE_FRACTION`` of ``free_bytes(device)``."""
    if budget is None:
        return max(1, int(free_bytes(device) * FREE_FRACTION))
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise MemoryBudgetError(f"memory_budget must be a positive number of bytes or None, got {budget!r}")
    return budget


def require_fits(nbytes: float, budget: int, what: str, hint: str = "") -> None:
    """Raise :class:`MemoryBudgetError` naming ``what`` when ``nbytes`` exceeds ``budget``."""
    if nbytes > budget:
        raise MemoryBudgetError(f"{what} needs {mib(nbytes)}, over memory_budget = {mib(budget)}, and cannot be "
                                "split into smaller chunks" + (f"; {hint}" if hint else ""))


def mib(nbytes: float) -> str:
    """``nbytes`` in MiB, for messages."""
    return f"{nbytes / 2**20:,.1f} MiB"
