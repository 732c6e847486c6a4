#!/usr/bin/env python
"""Export a DeS4 model to ONNX with dynamic batch/height/width (see `des4_hf.onnx_export`).

python scripts/export_onnx.py --model out/best --out model.onnx [--opset 18] [--height 512 --width 512]
"""

from des4_hf.cli import export_onnx_main as main

if __name__ == "__main__":
    raise SystemExit(main())
