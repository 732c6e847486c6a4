#!/usr/bin/env python
"""Carve a held-out development set out of a VOC-layout train split, for tuning recipes without val.

Recipe choices (learning rates, ramp-ups, momenta) must not be picked on the val images the demo reports.
This writes a new dataset folder whose ``train`` list is the source train split minus a held-out block and
whose ``val`` list is that block; images, masks and ``classes.txt`` are symlinks to the source, so nothing
is copied. The block is the *last* ``--holdout`` images (sorted) whose ids start with ``--prefix``: on
CamVid, consecutive frames of one video sequence, so the held-out frames are not near-duplicates of
training frames.

    python scripts/make_dev_split.py --out /tmp/camvid_dev   # CamVid: the last 60 frames of 0016E5
    python scripts/train.py --config configs/camvid_demo.yaml --data-root /tmp/camvid_dev --output-dir runs/dev
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LINKED = ("JPEGImages", "SegmentationClass", "classes.txt")


def split_ids(train_ids: list[str], prefix: str, holdout: int) -> tuple[list[str], list[str]]:
    """(kept train ids, held-out ids): the last ``holdout`` sorted ids starting with ``prefix``."""
    candidates = sorted(i for i in train_ids if i.startswith(prefix))
    if holdout <= 0 or holdout > len(candidates):
        raise ValueError(f"--holdout {holdout}: the train split has {len(candidates)} ids starting with "
                         f"{prefix!r}; pick 1..{len(candidates)} or another --prefix.")
    held = set(candidates[-holdout:])
    return [i for i in train_ids if i not in held], sorted(held)


def make_dev_split(data_root: Path, out: Path, prefix: str, holdout: int) -> tuple[int, int]:
    source_list = data_root / "ImageSets" / "Segmentation" / "train.txt"
    if not source_list.is_file():
        raise FileNotFoundError(f"{source_list} not found: --data-root must be a VOC-layout folder "
                                "(ImageSets/Segmentation/train.txt, JPEGImages/, SegmentationClass/).")
    train_ids = [line.strip() for line in source_list.read_text().splitlines() if line.strip()]
    kept, held = split_ids(train_ids, prefix, holdout)
    if out.resolve() == data_root.resolve():
        raise ValueError("--out must differ from --data-root (the source lists would be overwritten).")
    lists = out / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link, target = out / name, (data_root / name).resolve()
        if link.is_symlink() or link.exists():
            if link.resolve() != target:
                raise FileExistsError(f"{link} exists and does not point at {target}; choose an empty --out.")
            continue
        link.symlink_to(target)
    (lists / "train.txt").write_text("\n".join(kept) + "\n")
    (lists / "val.txt").write_text("\n".join(held) + "\n")
    return len(kept), len(held)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=None,
                        help="VOC-layout source (default: $DES4_CAMVID_ROOT or ../shared/data/camvid)")
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder to write")
    parser.add_argument("--prefix", default="0016E5", help="id prefix of the held-out block (a CamVid sequence)")
    parser.add_argument("--holdout", type=int, default=60, help="number of held-out images")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if args.data_root is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"  # ../shared beside the clone
        env = os.environ.get("DES4_CAMVID_ROOT")
        args.data_root = Path(env) if env else (shared if shared.is_dir() else None)
        if args.data_root is None:
            print("error: no --data-root given and ../shared/data/camvid not found; pass --data-root or set "
                  "DES4_CAMVID_ROOT.", file=sys.stderr)
            return 2
    try:
        kept, held = make_dev_split(args.data_root, args.out, args.prefix, args.holdout)
    except (OSError, ValueError) as error:  # a missing source, an existing --out, an unwritable folder
        if args.debug:
            raise
        print(f"error: {error} (--debug shows the traceback)", file=sys.stderr)
        return 2
    print(f"{args.out}: {kept} train, {held} held-out val (last {held} '{args.prefix}*' ids of {args.data_root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
