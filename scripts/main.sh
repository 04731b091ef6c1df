#!/usr/bin/env bash
# The main job: set up, run the quick validation profile (bound, fidelity and cost suites on MLP, CNNs and the
# small transformer), then the quick curated-training comparison, and draw all paper figures from the results.
# Extra arguments go to `validation run`; `paper_figs --run quick` resumes that run and adds the curation runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m validation run --profile quick "$@"
.venv/bin/python -m paper_figs --run quick
