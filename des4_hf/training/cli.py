"""``des4-train`` / ``scripts/train.py``: parse a recipe (+ overrides) and run the trainer."""

from __future__ import annotations

import logging
import sys

import torch.distributed as dist

from .config import parse_config
from .trainer import NonFiniteLossError, Trainer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)  # bad values fail here, before any data is loaded
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    try:
        Trainer(config).train()
    except NonFiniteLossError as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
