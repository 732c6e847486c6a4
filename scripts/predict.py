#!/usr/bin/env python
"""Segment images with a saved DeS4 model (same as the ``des4-predict`` command).

python scripts/predict.py --model out/ images/*.jpg some_folder/ --out preds/
"""

import sys

from des4_hf.cli import predict as main

if __name__ == "__main__":
    sys.exit(main())
