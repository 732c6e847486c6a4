#!/usr/bin/env bash
# Install des4-hf with its test extras into ./.venv (created if missing) and run the whole test suite offline.
# Usage: bash scripts/test.sh [extra pytest arguments]    e.g. the fast tier: bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the package metadata changed since the last install (the fast tier stays fast).
STAMP=".venv/.des4-installed-$(cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  rm -f .venv/.des4-installed-* && touch "$STAMP"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# pytest exits 5 when it collected no test: that is a failure here too.
.venv/bin/python -m ruff check des4_hf scripts tests benchmarks
.venv/bin/python -m pytest -q "$@"
