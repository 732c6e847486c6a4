#!/usr/bin/env python
"""Speed and memory benchmark of DeS4 (issue 8, part 1); the logic lives in :mod:`des4_hf.benchmark`.

    python scripts/benchmark.py --out reports/                 # CPU or GPU, device auto
    python scripts/benchmark.py --quick --out /tmp/bench       # seconds, tiny model (tests)
"""

import sys

from des4_hf.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
