#!/usr/bin/env bash
# Install des4-hf with its test extras into ./.venv (created if missing) and run the whole test suite offline.
# Usage: bash scripts/test.sh [extra pytest arguments]    e.g. the fast tier: bash scripts/test.sh -m "not slow"
# Without arguments (CI): the whole suite with oneDNN's native-bf16 answer forced to no, then the tests marked
# onednn_bf16 (reduced precision, inductor: the only paths that read that answer) with it forced to yes. A CPU answers
# one or the other, so both are covered.
# Then the fast tier once more (with the tests marked lowest) in ./.venv-lowest, against the lowest versions setup.cfg
# allows (constraints/lowest.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The web demo's browser test drives Debian's Chromium, headless, through its driver (selenium); installed beside
# the Python packages (in the background: it waits on the network and dpkg, not on pip).
APT_PID=""
if ! command -v chromium > /dev/null 2>&1 || ! command -v chromedriver > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver > .venv/apt-chromium.log 2>&1) &
    APT_PID=$!
  else
    echo "chromium and chromium-driver are not installed (installing them needs root and apt-get): the browser test skips"
  fi
fi
# Reinstall only when the package metadata changed since the last install (the fast tier stays fast).
STAMP=".venv/.des4-installed-$(cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  rm -f .venv/.des4-installed-* && touch "$STAMP"
fi
if [ -n "$APT_PID" ] && ! wait "$APT_PID"; then
  echo "apt-get could not install chromium (.venv/apt-chromium.log): the browser test skips"
fi
# transformers' common test mixins (tests/test_transformers_common.py) come from the source distribution of the installed
# transformers, unpacked once into the venv: never copied into this repository.
transformers_tests() {  # $1: a venv; prints the folder holding that transformers' tests/
  local version folder tmp
  version="$("$1/bin/python" -c 'import transformers; print(transformers.__version__)')"
  folder="$1/transformers-tests-$version"
  if [ ! -f "$folder/test_modeling_common.py" ]; then
    tmp="$(mktemp -d)"
    "$1/bin/python" -m pip download --quiet --no-deps --no-binary :all: "transformers==$version" -d "$tmp" >&2
    mkdir -p "$folder" && tar xzf "$tmp"/transformers-*.tar.gz -C "$folder" --strip-components=2 \
      "transformers-$version/tests" && rm -rf "$tmp"
  fi
  echo "$(cd "$folder" && pwd)"
}
DES4_TRANSFORMERS_TESTS="$(transformers_tests .venv)"
export DES4_TRANSFORMERS_TESTS
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# pytest exits 5 when it collected no test: that is a failure here too.
.venv/bin/python -m ruff check des4_hf scripts tests benchmarks
if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest -q "$@"
else  # CI
  echo "whole suite with torch.ops.mkldnn._is_mkldnn_bf16_supported() forced to 0"
  DES4_MKLDNN_BF16=0 .venv/bin/python -m pytest -q
  echo "tests marked onednn_bf16 with torch.ops.mkldnn._is_mkldnn_bf16_supported() forced to 1"
  DES4_MKLDNN_BF16=1 .venv/bin/python -m pytest -q -m onednn_bf16
  # The lowest versions setup.cfg allows (constraints/lowest.txt), in their own venv: the fast tier again.
  echo "fast tier against the lowest versions allowed (constraints/lowest.txt)"
  LOWEST_STAMP=".venv-lowest/.des4-installed-$(cat setup.cfg pyproject.toml constraints/lowest.txt | cksum | cut -d' ' -f1)"
  if [ ! -f "$LOWEST_STAMP" ]; then
    [ -x .venv-lowest/bin/python ] || "$PYTHON" -m venv .venv-lowest
    .venv-lowest/bin/python -m pip install --quiet --upgrade pip
    .venv-lowest/bin/python -m pip install --quiet -e ".[test]" -c constraints/lowest.txt
    rm -f .venv-lowest/.des4-installed-* && touch "$LOWEST_STAMP"
  fi
  .venv-lowest/bin/python -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(torch|torchvision|timm|transformers|accelerate|datasets|huggingface.hub|numpy)==' | tr '\n' ' '; echo
  DES4_TRANSFORMERS_TESTS="$(transformers_tests .venv-lowest)" \
    .venv-lowest/bin/python -m pytest -q -m "not slow or lowest" -p no:cacheprovider
fi
