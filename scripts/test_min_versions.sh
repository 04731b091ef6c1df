#!/usr/bin/env bash
# The Trainer tests against the lowest supported versions (.ci/constraints-min.txt: torch 2.13.0, transformers
# 4.46.3, accelerate 1.1.0), in their own virtual environment .venv-min (created once; pip's cache makes a rebuild
# offline-fast). Extra arguments go to pytest, e.g. `bash scripts/test_min_versions.sh -k ddp`.
# By default the two slowest tests (two-process DDP, the example run) are left to the main suite on the newest
# versions; LAI_MIN_ALL=1 runs the whole file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
C=.ci/constraints-min.txt
stamp=.venv-min/.lai-installed
if [ ! -x .venv-min/bin/python ]; then
    "$PY" -m venv .venv-min
fi
if [ ! -f "$stamp" ] || [ "$C" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv-min/bin/python -m pip install -q -c "$C" torch
    .venv-min/bin/python -m pip install -q -c "$C" transformers accelerate "numpy>=1.24" "scipy>=1.10" "sympy>=1.12" \
        "pytest>=7" "hypothesis>=6"
    .venv-min/bin/python -m pip install -q --no-deps -e .
    touch "$stamp"
fi
.venv-min/bin/python - "$C" <<'PY'
import sys, torch, transformers, accelerate
pins = dict(line.split("==") for line in open(sys.argv[1]) if "==" in line and not line.startswith("#"))
got = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
       "accelerate": accelerate.__version__}
bad = {k: v for k, v in got.items() if v != pins[k].strip()}
print("lowest supported versions:", ", ".join(f"{k} {v}" for k, v in got.items()))
sys.exit(f"not the pinned versions: {bad}" if bad else 0)
PY
if [ "${LAI_MIN_ALL:-0}" = 1 ]; then
    exec .venv-min/bin/python -m pytest -p no:cacheprovider tests/test_hf_trainer.py "$@"
fi
exec .venv-min/bin/python -m pytest -p no:cacheprovider tests/test_hf_trainer.py \
    -k "not two_process_ddp and not example_runs" "$@"
