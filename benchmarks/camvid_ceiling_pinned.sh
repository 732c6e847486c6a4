#!/usr/bin/env bash
# Start or resume the CamVid ceiling study (issue 30) at the commit it is pinned to, so that every run of it trains
# the same code: a git worktree of CEILING_COMMIT beside this clone, sharing this clone's outputs/ (the runs) and
# venv, niced. Finished runs come from this clone's reports/camvid/ceiling.json. A pin older than 2026-12-07 keeps its
# report in reports/camvid/ceiling/ inside the tree: both places are handled.
#
#   bash benchmarks/camvid_ceiling_pinned.sh            # 1. start or resume in the background (phases: below)
#   tail -f outputs/camvid_ceiling.log                  # 2. watch
#   bash benchmarks/camvid_ceiling_pinned.sh collect    # 3. copy the records back here, redraw (then commit)
set -euo pipefail
cd "$(dirname "$0")/.."
CEILING_COMMIT="${CEILING_COMMIT:-$(cat benchmarks/camvid_ceiling.commit)}"
# Without arguments, the phases the study is in, committed beside the pin (e.g. "search options" until the options
# are decided, so that a plain resume never starts val early)
if [ $# -eq 0 ] && [ -f benchmarks/camvid_ceiling.phases ]; then
  read -r -a PHASES < benchmarks/camvid_ceiling.phases
  set -- --phases "${PHASES[@]}"
fi
TREE="${CEILING_TREE:-../ceiling}"
if [ ! -x .venv/bin/python ]; then  # a new machine: nothing but the checkout
  echo "$0: .venv/bin/python is missing: run bash scripts/test.sh -m 'not slow' first (it makes .venv), then again" >&2
  exit 2
fi
if [ "${1:-run}" = "collect" ]; then
  OLD="$TREE"/reports/camvid/ceiling  # the report's folder at pins before 2026-12-07
  if [ "$OLD/ceiling.json" -nt "$TREE/reports/camvid/ceiling.json" ]; then FROM="$OLD"; else FROM="$TREE"/reports/camvid; fi
  cp "$FROM"/ceiling.json reports/camvid/  # the records; the tables and figure are redrawn here
  .venv/bin/python benchmarks/camvid_ceiling.py --summary-only  # the tables and figure as this clone's code draws them
  exit 0
fi
if [ ! -d "$TREE" ]; then
  git worktree add --detach "$TREE" "$CEILING_COMMIT"
fi
if [ "$(git -C "$TREE" rev-parse HEAD)" != "$(git rev-parse "$CEILING_COMMIT^{commit}")" ]; then  # a new pin: never mix
  echo "$0: $TREE is not at the pinned commit $CEILING_COMMIT; once its runs are finished, git worktree remove $TREE" >&2
  exit 2
fi
mkdir -p outputs
[ -e "$TREE/outputs" ] || ln -s "$(pwd)/outputs" "$TREE/outputs"
if [ -f reports/camvid/ceiling.json ]; then  # the finished runs, where the pinned code looks for them
  if git -C "$TREE" ls-files --error-unmatch reports/camvid/ceiling/ceiling.json > /dev/null 2>&1; then
    cp reports/camvid/ceiling.json "$TREE/reports/camvid/ceiling/ceiling.json"  # a pin before 2026-12-07
  else
    cp reports/camvid/ceiling.json "$TREE/reports/camvid/ceiling.json"
  fi
fi
PYTHON="$(pwd)/.venv/bin/python"
TREE_ABS="$(cd "$TREE" && pwd)"
cd "$TREE_ABS"
PYTHONPATH="$TREE_ABS" nohup nice -n 10 "$PYTHON" benchmarks/camvid_ceiling.py "$@" >> outputs/camvid_ceiling.log 2>&1 &
echo "ceiling study running at $CEILING_COMMIT in $TREE_ABS (log: outputs/camvid_ceiling.log)"
