"""One measurement in a child process, guarded: a wall-clock timeout and a resident-memory limit.

    outcome = run_isolated("validation.bench.rows:measure_row", job, timeout_s=600, rss_limit_bytes=6 << 30)

The child (``python -m validation.bench.isolate TARGET JOB RESULT``) imports ``TARGET`` (``module:function``),
calls it with the job (a JSON-able dict) and writes ``{"status", "text", "result"}`` to ``RESULT`` atomically.
The parent polls the child's resident set (``VmRSS`` in ``/proc/<pid>/status``, every ``poll_s`` seconds) and its
age, and kills it (SIGKILL, by its pid) above ``rss_limit_bytes`` or after ``timeout_s``. An address-space limit
in the child is not used: torch reserves far more virtual memory than it touches, so a limit low enough to stop a
10 GB allocation also stops ordinary work.

``Outcome.status`` is one of:

* ``ok``: the function returned (``Outcome.result`` is its dict);
* ``refused``: it raised an ``influence.InfluenceError`` (a named refusal, e.g. ``MemoryBudgetError``);
* ``error``: it raised anything else (e.g. the allocator's ``RuntimeError``), or the child exited without a
  result;
* ``killed``: the guard killed it above the memory limit, or a signal ended it (the kernel's OOM killer
  sends SIGKILL);
* ``timeout``: the guard killed it after ``timeout_s``.

``Outcome.text`` is the one-line form recorded in the results, e.g. ``"refused: MemoryBudgetError: ..."``,
``"killed: over 6.0 GiB resident (6.1 GiB at the kill)"``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIB = float(1 << 30)
STATUSES = ("ok", "refused", "error", "killed", "timeout")
TEXT_CHARS = 400  # characters of an exception message kept in the one-line outcome
TAIL_CHARS = 3000  # characters of the child's stderr kept with a failed outcome


@dataclass
class Outcome:
    """What became of one child: ``status`` (``STATUSES``), ``text`` (one line), ``result`` (the function's dict
    when ok), ``wall_s`` (seconds from start to end), ``rss_peak_bytes`` (largest resident set the parent saw,
    or the child's own high-water mark when it reported one), ``log_tail`` (end of its output when not ok)."""

    status: str
    text: str
    result: dict[str, Any] | None = None
    wall_s: float = 0.0
    rss_peak_bytes: int = 0
    log_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` in bytes (``VmRSS``), None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _classify(exc: BaseException) -> str:
    """"refused" for a named refusal of the package (``influence.InfluenceError``), else "error"."""
    try:
        from influence.errors import InfluenceError
    except ImportError:  # pragma: no cover - the package is always importable next to this module
        return "error"
    return "refused" if isinstance(exc, InfluenceError) else "error"


def one_line(exc: BaseException) -> str:
    """``"<ExceptionName>: <first TEXT_CHARS characters of the message, on one line>"``."""
    msg = " ".join(str(exc).split())
    if len(msg) > TEXT_CHARS:
        msg = msg[:TEXT_CHARS] + " ..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from influence.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, default=float))


def child_main(argv: list[str]) -> int:
    """The child: ``TARGET JOB RESULT`` -> calls ``TARGET(job)`` and writes the result file."""
    target, job_path, result_path = argv
    mod, _, fn_name = target.partition(":")
    job = json.loads(Path(job_path).read_text())
    try:
        result = getattr(importlib.import_module(mod), fn_name)(job)
        data: dict[str, Any] = {"status": "ok", "text": "ok", "result": result}
    except Exception as exc:  # every failure of the measured code is this row's outcome
        status = _classify(exc)
        data = {"status": status, "text": f"{status}: {one_line(exc)}", "result": None,
                "traceback": traceback.format_exc()[-TAIL_CHARS:]}
    data["rss_hwm_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    _write_json(Path(result_path), data)
    return 0


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_isolated(target: str, job: dict[str, Any], *, timeout_s: float, rss_limit_bytes: int,
                 poll_s: float = 0.05, extra_path: list[str] | None = None,
                 workdir: str | os.PathLike | None = None) -> Outcome:
    """Run ``target(job)`` in a child process under the guard (see the module docstring). ``extra_path``:
    folders put first on the child's ``PYTHONPATH``; ``workdir``: where the job, result and log files go
    (default: a temporary folder, removed afterwards)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        job_path, result_path, log_path = d / "job.json", d / "result.json", d / "child.log"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ)
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join([*extra_path, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, "-m", "validation.bench.isolate", target, str(job_path), str(result_path)]
        start = time.perf_counter()
        peak, killed = 0, None
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                while True:
                    try:
                        proc.wait(timeout=poll_s)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    rss = rss_bytes(proc.pid)
                    if rss is not None:
                        peak = max(peak, rss)
                    age = time.perf_counter() - start
                    if rss is not None and rss > rss_limit_bytes:
                        killed = ("killed", f"killed: over {rss_limit_bytes / GIB:.1f} GiB resident "
                                            f"({rss / GIB:.2f} GiB at the kill, after {age:.1f} s)")
                    elif age > timeout_s:
                        killed = ("timeout", f"timeout: after {timeout_s:g} s")
                    if killed:
                        proc.kill()
                        proc.wait()
                        break
            finally:
                if proc.poll() is None:  # interrupted (e.g. KeyboardInterrupt): leave no child behind
                    proc.kill()
                    proc.wait()
        wall = time.perf_counter() - start
        if killed:
            return Outcome(killed[0], killed[1], None, wall, peak, _tail(log_path))
        if result_path.exists():
            data = json.loads(result_path.read_text())
            peak = max(peak, int(data.get("rss_hwm_bytes", 0)))
            tail = "" if data["status"] == "ok" else (data.get("traceback") or _tail(log_path))
            return Outcome(data["status"], data["text"], data.get("result"), wall, peak, tail)
        code = proc.returncode
        if code < 0:
            how = " (SIGKILL not sent by the guard: the kernel's OOM killer?)" if -code == signal.SIGKILL else ""
            return Outcome("killed", f"killed: {_signal_name(code)}{how}", None, wall, peak, _tail(log_path))
        return Outcome("error", f"error: the child exited with status {code} and no result", None, wall, peak,
                       _tail(log_path))


__all__ = ["Outcome", "run_isolated", "rss_bytes", "one_line", "child_main", "STATUSES", "GIB"]

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
