#!/usr/bin/env bash
# Start or resume the label-next measurement (issue 33) at the commit it is pinned to: a git worktree of
# SUGGEST_COMMIT beside this clone, sharing this clone's outputs/ (the ceiling study's runs and its own) and venv,
# niced, one torch thread (it runs beside the ceiling study on 2 cores; two 1-thread jobs do not contend).
#
#   bash benchmarks/camvid_suggest_pinned.sh dev val     # 1. on dev, to choose, then on val, to report (or one of them)
#   tail -f outputs/camvid_suggest.log                   # 2. watch
#   bash benchmarks/camvid_suggest_pinned.sh collect     # 3. copy the report back here (then commit it)
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT="${SUGGEST_COMMIT:-$(cat benchmarks/camvid_suggest.commit)}"
TREE="${SUGGEST_TREE:-../suggest}"
STEPS="${SUGGEST_STEPS:-2000}"  # DeS4's 1/32 budget, chosen by the ceiling study's dev search
if [ ! -x .venv/bin/python ]; then  # a new machine: nothing but the checkout
  echo "$0: .venv/bin/python is missing: run bash scripts/test.sh -m 'not slow' first (it makes .venv), then again" >&2
  exit 2
fi
if [ "${1:-}" = "collect" ]; then
  if [ -f "$TREE"/reports/camvid/suggest.json ]; then
    cp "$TREE"/reports/camvid/suggest.json "$TREE"/reports/camvid/suggest.md reports/camvid/
  else
    echo "no run of the measurement has finished yet: copying its splits only"
  fi
  cp "$TREE"/reports/camvid/suggested-*.jpg reports/camvid/ 2>/dev/null || true
  cp -r "$TREE"/reports/camvid/suggest reports/camvid/  # the arms' splits and rankings
  # the summaries and tables as this clone's code draws them
  [ ! -f reports/camvid/suggest.json ] || .venv/bin/python benchmarks/camvid_suggest_study.py --summary-only
  exit 0
fi
for SPLIT in "$@"; do
  case "$SPLIT" in dev|val) ;; *) echo "usage: $0 dev|val|dev val|collect" >&2; exit 2 ;; esac
done
[ $# -gt 0 ] || { echo "usage: $0 dev|val|dev val|collect" >&2; exit 2; }
[ -d "$TREE" ] || git worktree add --detach "$TREE" "$COMMIT"
if [ "$(git -C "$TREE" rev-parse HEAD)" != "$(git rev-parse "$COMMIT^{commit}")" ]; then  # a new pin: never mix
  echo "$0: $TREE is not at the pinned commit $COMMIT; once its runs are finished, git worktree remove $TREE" >&2
  exit 2
fi
mkdir -p outputs
[ -e "$TREE/outputs" ] || ln -s "$(pwd)/outputs" "$TREE/outputs"
[ ! -f reports/camvid/suggest.json ] || cp reports/camvid/suggest.json "$TREE/reports/camvid/suggest.json"
[ ! -d reports/camvid/suggest ] || cp -r reports/camvid/suggest "$TREE/reports/camvid/"  # committed splits
PYTHON="$(pwd)/.venv/bin/python"
cd "$(cd "$TREE" && pwd)"
# one split after the other; the model that ranks is the ceiling study's 1/32 DeS4 run, else trained here first
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONPATH="$(pwd)" nohup nice -n 10 bash -c 'for SPLIT in "${@:3}"; do
  "$1" benchmarks/camvid_suggest_study.py --eval-split "$SPLIT" --steps "$2" || exit; done' - "$PYTHON" "$STEPS" "$@" \
  >> outputs/camvid_suggest.log 2>&1 &
echo "label-next measurement ($*) running at $COMMIT in $(pwd) (log: outputs/camvid_suggest.log)"
