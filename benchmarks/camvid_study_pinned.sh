#!/usr/bin/env bash
# Resume the CamVid study (issue 14) at the commit it started with, so that every row and seed runs the same
# code: a git worktree of STUDY_COMMIT beside this clone, sharing this clone's outputs/ (the runs) and venv.
# Finished runs come from this clone's reports/camvid/study.json; copy the worktree's study.{json,md} and
# study_curves.png back here (step 3 below) after each session.
#
#   bash benchmarks/camvid_study_pinned.sh            # 1. start or resume in the background (niced)
#   tail -f outputs/camvid_study.log                  # 2. watch
#   bash benchmarks/camvid_study_pinned.sh collect    # 3. copy the report back here (then commit it)
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY_COMMIT="${STUDY_COMMIT:-4c38bcb}"
TREE="${STUDY_TREE:-../study}"
if [ "${1:-run}" = "collect" ]; then
  cp "$TREE"/reports/camvid/study.json "$TREE"/reports/camvid/study.md "$TREE"/reports/camvid/study_curves.png \
    reports/camvid/
  exit 0
fi
if [ ! -d "$TREE" ]; then
  git worktree add --detach "$TREE" "$STUDY_COMMIT"
fi
mkdir -p outputs
[ -e "$TREE/outputs" ] || ln -s "$(pwd)/outputs" "$TREE/outputs"
cp reports/camvid/study.json "$TREE/reports/camvid/study.json"
PYTHON="$(pwd)/.venv/bin/python"
TREE_ABS="$(cd "$TREE" && pwd)"
cd "$TREE_ABS"
PYTHONPATH="$TREE_ABS" nohup nice -n 5 "$PYTHON" benchmarks/camvid_study.py "$@" > outputs/camvid_study.log 2>&1 &
echo "study running at $STUDY_COMMIT in $TREE_ABS (log: outputs/camvid_study.log)"
