#!/usr/bin/env bash
# The ceiling study on a GPU machine (issue 30, point 4): the same driver, recipe, splits and rows as on the CPU, at
# CamVid's full resolution, in a report of its own, never mixed with CPU rows. The CPU recipe trains on 160² crops of
# frames kept at ½ (240×180); here the frames stay whole (480×360) and the crops are 360² of frames scaled 0.5–2.0
# (the first study's device run), with loader workers. Everything else is configs/camvid_ceiling.yaml.
#
#   TAG=h100 LIMIT=480 bash benchmarks/camvid_ceiling_device.sh    # on the device machine, carry [".whl", ".devdata"]
#
# Writes $REPORT_DIR/ceiling-<tag>/ (REPORT_DIR: $OUT there, else reports/camvid): ceiling.json, ceiling.md and the
# figure, and study/ with the CPU study's splits (copied: the same frames) and step_ratios.json, measured here first
# at the device recipe (`benchmarks/benchmark.py --only training`). The search stops after LIMIT seconds: every run
# finished by then is in ceiling.json; the run being trained gets SIGTERM and saves a resumable state, which the next
# call on the same warm machine resumes (a fresh machine starts it again). Commit what comes back under
# reports/camvid/ceiling-<tag>/: a later call continues from it. The machine and how to make .whl/ and .devdata/:
# benchmarks/device_env.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh  # wheels, PYTHONPATH, offline, versions; sets PYTHON, DATA_ROOT, TAG, REPORT_DIR
REPORT="$REPORT_DIR/ceiling-$TAG"
RUNS_DIR="${RUNS_DIR:-outputs/camvid_ceiling_$TAG}"
LIMIT="${LIMIT:-480}"
PHASES="${PHASES:-search}"
mkdir -p "$REPORT/study"
if [ "$REPORT" != "reports/camvid/ceiling-$TAG" ] && [ -d "reports/camvid/ceiling-$TAG" ]; then
  cp -rn "reports/camvid/ceiling-$TAG/." "$REPORT/"  # the records of earlier calls (their run folders are gone)
fi
[ -d "$REPORT/study/splits" ] || cp -r reports/camvid/ceiling/splits "$REPORT/study/"
if [ ! -f "$REPORT/study/step_ratios.json" ]; then
  "$PYTHON" benchmarks/benchmark.py --only training --backbone efficientnet_lite0 --crop-size 360 --batch-size 6 \
    --unlabeled-batch-size 2 --separable-convs --num-classes 11 --iterations "${RATIO_ITERATIONS:-15}" \
    --warmup "${RATIO_WARMUP:-3}" --train-precision fp32 --out "$REPORT/study" > "$REPORT/step_ratios.log" 2>&1 \
    || { tail -20 "$REPORT/step_ratios.log"; exit 1; }
fi
# shellcheck disable=SC2086  # PHASES is a list
timeout -s TERM -k 60 "$LIMIT" "$PYTHON" benchmarks/camvid_ceiling.py --data-root "$DATA_ROOT" --runs-dir "$RUNS_DIR" \
  --report-dir "$REPORT/study" --phases $PHASES -- --frame-scale 1.0 --crop-size 360 --scale-range 0.5 2.0 \
  --num-workers "${WORKERS:-8}" --checkpoint-every 500 > "$REPORT/ceiling.log" 2>&1
status=$?
"$PYTHON" benchmarks/camvid_ceiling.py --data-root "$DATA_ROOT" --runs-dir "$RUNS_DIR" --report-dir "$REPORT/study" \
  --summary-only >> "$REPORT/ceiling.log" 2>&1
tail -5 "$REPORT/ceiling.log"
[ "$status" = 124 ] && echo "stopped at LIMIT=$LIMIT s: call again to go on" && exit 0
exit "$status"
