#!/usr/bin/env python
"""Train DeS4 / mean-teacher / supervised: ``accelerate launch scripts/train.py --config configs/camvid_demo.yaml``."""

from des4_hf.cli import train as main

if __name__ == "__main__":
    raise SystemExit(main())
