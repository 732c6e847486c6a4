#!/usr/bin/env python
"""Export a DeS4 segmenter to ONNX with dynamic batch, height and width, then check it with onnxruntime
(``des4_hf.onnx_export``).

    python scripts/export_onnx.py --model out/best --out model.onnx [--opset 18] [--height 512 --width 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from des4_hf.onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx


def export_onnx_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-export-onnx",
                                     description="Export a DeS4 model to ONNX with dynamic batch/height/width.")
    parser.add_argument("--model", required=True, help="model directory, Hub repo id or short name (des4-voc-aug)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--height", type=int, default=512, help="typical input height used to trace the graph")
    parser.add_argument("--width", type=int, default=512, help="typical input width used to trace the graph")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-export-onnx``: the model to ONNX with dynamic batch/height/width, checked with onnxruntime."""
    args = export_onnx_parser().parse_args(argv)
    try:
        path = export_onnx(args.model, args.out, opset=args.opset, height=args.height, width=args.width,
                           verify=not args.no_verify, overwrite=args.force)
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"des4-export-onnx: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (ValueError, TypeError, FileExistsError)) else 1
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    print(f"wrote {path} ({size / 1e6:.1f} MB): pixel_values (batch, 3, height, width) → logits, dynamic sizes")
    if not args.no_verify and importlib.util.find_spec("onnxruntime") is not None:
        print("verified with onnxruntime against PyTorch at a size other than the export size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
