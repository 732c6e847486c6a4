#!/usr/bin/env python
"""CamVid ablation reproduction (issue 8, part 2); the logic lives in :mod:`des4_hf.reproduction`.

    python scripts/reproduce_camvid.py                       # all rows, seeds 0 and 1 (main rows), resumable
    python scripts/reproduce_camvid.py --summary-only        # rewrite reports/camvid/ from finished runs
    python scripts/reproduce_camvid.py --rows des4 --seeds 0 --max-steps 20   # extra options go to train.py
"""

import sys

from des4_hf.reproduction import main

if __name__ == "__main__":
    sys.exit(main())
