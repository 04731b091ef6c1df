"""Time the README's commands and write docs/timings.md, the committed record its time statements cite.

    .venv/bin/python scripts/time_commands.py                 # every command below (about 10 min of CPU)
    .venv/bin/python scripts/time_commands.py figures-paper   # one of them

Each command runs in a child process (into a temporary folder); the table gives its CPU time (user + system of
the child and its children), its wall time and the load average while it ran, with the machine's core count,
the date and the code revision. CPU time is the number to compare across machines: wall time grows with the load.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "timings.md"
LAI = [sys.executable, "-m", "lai"]
COMMANDS: dict[str, list[str]] = {
    "figures-paper": ["figures", "--paper", "--out", "{tmp}/figs", "--quiet"],
    "tightness": ["tightness", "--out", "{tmp}/tight"],
    "bench-mlp": ["bench", "--models", "mlp", "--repeats", "3", "--tasks", "none", "--out", "{tmp}/bench", "--quiet"],
    "run-quick": ["run", "--profile", "quick", "--out", "{tmp}/results", "--no-progress"],
    "curate-quick": ["curate", "--profile", "quick", "--out", "{tmp}/results", "--no-progress"],
}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_one(name: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [a.format(tmp=tmp) for a in COMMANDS[name]]
        cpu0, wall0, load0 = children_cpu(), time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.run([*LAI, *argv], cwd=ROOT, capture_output=True, text=True)
        cpu, wall = children_cpu() - cpu0, time.perf_counter() - wall0
    shown = "lai " + " ".join(a.replace(tmp, "TMP") for a in argv)
    return {"name": name, "command": shown, "status": proc.returncode, "cpu_s": cpu, "wall_s": wall,
            "load": (load0 + os.getloadavg()[0]) / 2}


def main(names: list[str]) -> None:
    rows = [time_one(n) for n in (names or list(COMMANDS))]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    old = OUT.read_text().splitlines() if OUT.exists() else []
    kept = [ln for ln in old if ln.startswith("| `") and not any(f"| `{r['name']}`" in ln for r in rows)]
    lines = ["# Measured times", "",
             "What the README's time statements cite: `scripts/time_commands.py` ran each command in a child process "
             "(1 torch thread, the default) and recorded its CPU time (user + system), wall time and the load average "
             "while it ran. CPU time is comparable across machines; wall time grows with the load.", "",
             "| name | command | exit | CPU (s) | wall (s) | load | cores | date | code |", "|---|---|---|---|---|---|---|---|---|"]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    new = [f"| `{r['name']}` | `{r['command']}` | {r['status']} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
           f"{r['load']:.1f} | {os.cpu_count()} | {date} | {rev.strip()} |" for r in rows]
    OUT.write_text("\n".join(lines + sorted(kept + new)) + "\n")
    for ln in new:
        print(ln)


if __name__ == "__main__":
    main(sys.argv[1:])
