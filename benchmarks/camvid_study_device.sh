#!/usr/bin/env bash
# The CamVid study's largest budget on a GPU machine (issue 14, point 3): the same study script, recipe, split and
# rows as on the CPU, at CamVid's full resolution. The CPU recipe trains on 224² crops of frames scaled 0.5–1.0;
# here the crops are 360² (the frame's full height) of frames scaled 0.5–2.0 (the library's default
# augmentation), so the network trains at the resolution it is evaluated at. Everything else is the recipe's.
# Rows land in <report-dir>/study-<tag>.json (+ .md, _curves.png), their "cpu" field naming the GPU.
#
#   DATA_ROOT=../shared/data/camvid REPORT_DIR=reports/camvid TAG=h200 bash benchmarks/camvid_study_device.sh
#
# On the lent device machine (bare, offline), the packages its image lacks travel as wheels in .whl/ and CamVid
# in .devdata/camvid (both ignored by git, named in the run's carry; how to make them: benchmarks/device_env.sh);
# REPORT_DIR defaults to $OUT there. Run `TAG=h200 bash benchmarks/camvid_study_device.sh` there with carry
# [".whl", ".devdata"] (58 MB in all).
# A later call continues the committed reports/camvid/study-<tag>.json: SEEDS="0 1" ROWS="supervised des4" trains
# only what is missing of those (finished runs are skipped; the report keeps every row).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh  # wheels, PYTHONPATH, offline, versions; sets PYTHON, DATA_ROOT, TAG, REPORT_DIR
RUNS_DIR="${RUNS_DIR:-outputs/camvid_study}"
BUDGET="${BUDGET:-2000}"
SEEDS="${SEEDS:-0}"
ROWS="${ROWS:-}"
mkdir -p "$REPORT_DIR" "$RUNS_DIR"
if [ ! -f "$REPORT_DIR/study-$TAG.json" ] && [ -f "reports/camvid/study-$TAG.json" ]; then
  cp "reports/camvid/study-$TAG.json" "$REPORT_DIR/"  # the runs of earlier calls (their folders are gone)
fi
# The runs' logs (without weights), refreshed while the study trains: what comes back if the time runs out.
pack_runs() {
  tar -czf "$REPORT_DIR/.runs-$TAG.tgz" --exclude='checkpoint*' --exclude=best --exclude=last --exclude=split \
    -C "$RUNS_DIR" . 2> /dev/null && mv "$REPORT_DIR/.runs-$TAG.tgz" "$REPORT_DIR/runs-$TAG.tgz"
}
( while sleep 20; do pack_runs; done ) &
packer=$!
trap 'kill $packer 2> /dev/null' EXIT
# shellcheck disable=SC2086  # SEEDS and ROWS are lists
"$PYTHON" benchmarks/camvid_study.py --budgets "$BUDGET" --seeds $SEEDS ${ROWS:+--rows $ROWS} --tag "$TAG" --data-root "$DATA_ROOT" \
  --report-dir "$REPORT_DIR" --runs-dir "$RUNS_DIR" -- --crop-size 360 --scale-range 0.5 2.0 --num-workers "${WORKERS:-8}" \
  --checkpoint-every 1000 --eval-every "$BUDGET" 2>&1 | tee "$REPORT_DIR/study-$TAG.log"
status=${PIPESTATUS[0]}
pack_runs
exit "$status"
