#!/usr/bin/env bash
# Early-phase options (issue 14, SPEC §2.7 / §3.8 / §4) probed on the held-out CamVid dev split, never on val.
# Each variant is the demo recipe (configs/camvid_demo.yaml, pinned to first-mean prototypes and per-loss means) at
# 300 steps, seed 0, plus one or more options (CONFIG / STEPS / SEED / OUT override them); two runs go side by side with
# one thread each, niced, resumable (--resume latest) and skipped once finished. Results: the teacher / student
# mIoU lines printed at the end, from <out>/<variant>/last/eval.json.
#   python scripts/make_dev_split.py --out /tmp/camvid_dev
#   bash benchmarks/camvid_dev_probes.sh [variant ...]        # default: every variant below
# The study's question (why does DeS4 trail MT + CutMix at 1000 steps?) on dev, with the study's own recipe:
#   CONFIG=configs/camvid_study.yaml STEPS=1000 OUT=outputs/dev_probes_study bash benchmarks/camvid_dev_probes.sh \
#     study-des4 study-mt-cutmix
# and what might widen DeS4's lead over supervised at 1000 steps: the paper's equal labeled / unlabeled batches at the
# same compute (4 + 4 crops instead of 6 + 2), and a shorter λ2 ramp-up (0.2 of the steps instead of 0.5):
#   ... study-supervised study-des4-equal study-des4-rampup02 study-mt-equal
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV:-/tmp/camvid_dev}"
OUT="${OUT:-outputs/dev_probes}"
STEPS="${STEPS:-300}"
CONFIG="${CONFIG:-configs/camvid_demo.yaml}"
PY="${PY:-.venv/bin/python}"
declare -A ARGS=(
  [base]=""
  [ortho]="--prototype-init orthonormal"
  [balance]="--pixel-balanced-losses"
  [warmup]="--supervised-warmup 0.2"
  [quantile]="--pseudo-label-quantile 0.2"
  [all]="--prototype-init orthonormal --pixel-balanced-losses --supervised-warmup 0.2 --pseudo-label-quantile 0.2"
  [all-noquantile]="--prototype-init orthonormal --pixel-balanced-losses --supervised-warmup 0.2"
  [supervised]="--method supervised"
  [mt-all]="--method mean-teacher --prototype-init orthonormal --pixel-balanced-losses --supervised-warmup 0.2 --pseudo-label-quantile 0.2"
  [study-des4]=""
  [study-mt-cutmix]="--method mean-teacher"
  [study-supervised]="--method supervised"
  [study-des4-equal]="--batch-size 4 --unlabeled-batch-size 4"
  [study-mt-equal]="--method mean-teacher --batch-size 4 --unlabeled-batch-size 4"
  [study-des4-rampup02]="--unsupervised-rampup 0.2"
  [mt-all-mes-bank]="--method mean-teacher --prototype-init orthonormal --pixel-balanced-losses --supervised-warmup 0.2 --pseudo-label-quantile 0.2 --no-ema-teacher-bank"
)
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(ortho balance warmup all supervised quantile all-noquantile base mt-all mt-all-mes-bank)
run() {
  local name="$1"
  [ -f "$OUT/$name/last/eval.json" ] && return 0
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 "$PY" scripts/train.py --config "$CONFIG" \
    --data-root "$DEV" --max-steps "$STEPS" --seed "${SEED:-0}" --num-workers 0 --overlays 0 --resume latest \
    --output-dir "$OUT/$name" ${ARGS[$name]} > "$OUT/$name.log" 2>&1 || echo "[probe] $name failed: $OUT/$name.log"
}
mkdir -p "$OUT"
for ((i = 0; i < ${#VARIANTS[@]}; i += 2)); do
  run "${VARIANTS[i]}" &
  [ $((i + 1)) -lt ${#VARIANTS[@]} ] && run "${VARIANTS[i + 1]}" &
  wait
done
for name in "${VARIANTS[@]}"; do
  "$PY" - "$OUT/$name" "$name" <<'PY'
import json, pathlib, sys
folder, name = pathlib.Path(sys.argv[1]), sys.argv[2]
records = sorted((folder / "eval").glob("step_*.json"))
if not records:
    print(f"{name:16s} not finished"); sys.exit()
record = json.loads(records[-1].read_text())
student = record.get("student", {}).get("mean_iou")
print(f"{name:16s} step {record['step']:5d}  teacher {100 * record['teacher']['mean_iou']:6.2f}"
      + (f"  student {100 * student:6.2f}" if student is not None else ""))
PY
done
