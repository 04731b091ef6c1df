#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch 2.13.0 (CPU build, installed first so the
# package's own torch requirement is already met) and this package, editable, with the extras the main job and
# the tests need (validation: data sets, figures, progress bars; hf: Hugging Face; test: pytest, hypothesis,
# hatchling; docs: mkdocs + mkdocstrings for the API site). Reinstalls when pyproject.toml is newer than the last
# install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.lai-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ! -x .venv/bin/lai ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[validation,hf,test,docs]"
    touch "$stamp"
fi
