"""The files in ``benchmarks/`` are scripts, not a package: their folder goes on ``sys.path`` as when run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
