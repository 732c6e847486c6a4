#!/usr/bin/env python
"""``des4-demo``: serve the web page of :mod:`des4_hf.demo` for a DeS4 model (Gradio; the ``demo`` extra).

    des4-demo --model outputs/camvid_demo/last        # or a Hub id; then open http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from des4_hf.demo import (
    MAX_PIXELS,
    MAX_UPLOAD_MB,
    SLIDING_WINDOW_ABOVE,
    build_demo,
    example_images,
    launch,
)
from des4_hf.hub_names import set_hub_timeout
from des4_hf.inference import PRECISIONS
from des4_hf.loading import IMAGE_EXTENSIONS, UsageError, add_hub_and_debug_arguments

DEFAULT_PORT = 7860


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-demo", description="A web page to segment your own images with a "
                                     "DeS4 model (Gradio; needs the `demo` extra).")
    parser.add_argument("--model", required=True, help="a saved model folder or a Hugging Face Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: timed on this machine (as des4-predict); fp32, bf16, fp16 (GPU only)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--data-root", default=os.environ.get("DES4_CAMVID_ROOT"),
                        help="a CamVid copy whose first val frames become the example images (default "
                             "$DES4_CAMVID_ROOT); they are read in place")
    parser.add_argument("--examples", nargs="*", default=None, help="example image files (instead of CamVid's)")
    parser.add_argument("--sliding-window-above", type=int, default=SLIDING_WINDOW_ABOVE,
                        help=f"longest side in pixels above which the sliding window is used (default "
                             f"{SLIDING_WINDOW_ABOVE})")
    parser.add_argument("--model-choice", action="store_true",
                        help="let page users load another model (a Hub id, or a folder under --models-dir); off: the "
                             "page serves --model only and has no /load_model endpoint")
    parser.add_argument("--models-dir", default=None, help="with --model-choice: the folder whose model folders page "
                        "users may load (nothing outside it)")
    parser.add_argument("--no-model-choice", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest upload in megabytes (default {MAX_UPLOAD_MB})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"largest image in pixels, checked before decoding (default {MAX_PIXELS})")
    add_hub_and_debug_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-demo``: serve the page until interrupted. Exit status 2: bad arguments or a model that cannot load."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="des4-demo: %(message)s")
    try:
        args = demo_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    examples = args.examples if args.examples is not None else example_images(args.data_root)
    private = None
    if not os.environ.get("GRADIO_TEMP_DIR"):  # Gradio's default, /tmp/gradio, is shared by every app of this user
        private = tempfile.mkdtemp(prefix="des4-demo-gradio-")
        os.environ["GRADIO_TEMP_DIR"] = private
        atexit.register(shutil.rmtree, private, ignore_errors=True)
    try:
        for path in examples:
            if not Path(path).is_file() or Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
                raise UsageError(f"--examples {path}: not an image file")
        if not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port}: must be between 1 and 65535")
        if args.models_dir is not None and not (args.model_choice and Path(args.models_dir).is_dir()):
            raise UsageError(f"--models-dir {args.models_dir}: needs --model-choice and an existing folder")
        set_hub_timeout(args.timeout)
        if args.max_upload_mb <= 0 or args.max_pixels <= 0:
            raise UsageError("--max-upload-mb and --max-pixels must be positive")
        demo = build_demo(args.model, precision=args.precision, device=args.device, examples=examples,
                          allow_model_choice=args.model_choice, models_dir=args.models_dir,
                          sliding_window_above=args.sliding_window_above, max_pixels=args.max_pixels,
                          max_upload_mb=args.max_upload_mb)
    except (UsageError, ValueError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"des4-demo: {error}", file=sys.stderr)
        return 2
    atexit.register(demo.des4_cleanup)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stop request removes the page's files too
    try:  # examples are copied into Gradio's cache when the page is built: no folder needs serving
        launch(demo, server_name=args.host, server_port=args.port)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
        demo.des4_cleanup()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
