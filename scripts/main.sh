#!/usr/bin/env bash
# The main job: set up, then `lai figures --run quick`, which runs the quick validation profile (`lai run
# --profile quick`: bound, fidelity and cost suites on the MLP, both CNNs and the small transformer), the quick
# curated-training comparison (`lai curate`, the commands of paper_figs.figures.CURATION_COMMANDS["quick"])
# and draws every paper figure from those results. Extra arguments go to `lai run`, e.g.
# `bash scripts/main.sh --threads 2`. Exit status 0 when everything ran, every theory check passed and every
# validation figure was drawn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lai figures --run quick "${@/#/--run-arg=}"
