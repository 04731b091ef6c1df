#!/usr/bin/env bash
# The main job: set up, then run the quick validation profile (bound, fidelity and cost suites on MLP, CNNs and
# the small transformer) and draw the paper figures from its results. Extra arguments go to `validation run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m validation run --profile quick "$@"
.venv/bin/python -m paper_figs
