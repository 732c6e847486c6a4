#!/usr/bin/env python
"""Evaluate a saved DeS4 model (same as the ``des4-evaluate`` command).

    accelerate launch scripts/evaluate.py --model out/best --dataset cityscapes --root /data/cityscapes
    python scripts/evaluate.py --model out/best --dataset camvid --flip --out eval/camvid
"""

import sys

from des4_hf.cli import evaluate as main

if __name__ == "__main__":
    sys.exit(main())
