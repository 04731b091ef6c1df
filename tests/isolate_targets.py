"""Functions ``validation.bench.isolate`` runs in a child process in ``tests/test_bench_realsize.py``: one per
outcome the guard must record (each takes the job dict)."""

import os
import signal
import time

from influence.errors import InfluenceError


class BudgetRefusal(InfluenceError):
    """A named refusal, as ``influence.MemoryBudgetError`` is."""


def returns(job):
    return {"echo": job["value"], "pid": os.getpid()}


def raises_runtime(job):
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10108381956 bytes")


def refuses(job):
    raise BudgetRefusal("the reference matrix needs 10.1 GB, over the memory budget of 4 GB")


def grows(job):
    """Touch memory 64 MiB at a time until the guard kills the process (bounded at job['max_gb'])."""
    held = []
    while len(held) * 64 < job["max_gb"] * 1024:
        held.append(bytearray(64 << 20))  # zero-filled: resident at once
        time.sleep(0.01)
    return {"survived_gb": len(held) / 16}


def sleeps(job):
    time.sleep(job["seconds"])
    return {}


def kills_itself(job):
    os.kill(os.getpid(), signal.SIGKILL)


def exits(job):
    os._exit(3)
