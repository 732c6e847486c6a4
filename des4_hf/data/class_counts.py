"""Per-class pixel counts of the labeled set (MES class ratio R, SPEC §3), computed once and cached under the run's
folder (the dataset root may be read-only), keyed by the split fingerprint and the class count."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..utils import atomic_write
from .datasets import IGNORE_INDEX, DataError, decode_mask, iter_label_records

logger = logging.getLogger(__name__)


def check_mask_values(mask: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Raise :class:`DataError` naming ``where`` when ``mask`` holds values outside ``[0, C) ∪ {255}``; else the
    mask's pixel count per value (256)."""
    counts = np.bincount(mask.reshape(-1), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        raise DataError(f"{where}: mask values {bad[:10]} are outside [0, {num_classes}) and not {IGNORE_INDEX}. Fix: "
                        "remap them to class indices (or 255 = ignore), or check num_classes.")
    return counts


def _count_one(item: tuple[str, Mapping[str, Any] | None], num_classes: int) -> np.ndarray:
    id_, record = item
    where = f"label of id {id_!r}" + (f" ({record.get('path')})" if record and record.get("path") else "")
    return check_mask_values(decode_mask(record, where), num_classes, where)[:num_classes].astype(np.int64)


def class_pixel_counts(labeled_dataset: datasets.Dataset, num_classes: int, cache_dir: str | os.PathLike[str],
                       split_fingerprint: str, num_threads: int = 2) -> np.ndarray:
    """``(C,)`` int64 pixel count per class over ``labeled_dataset``, from the cache when it was made for as many
    images, else by decoding every mask once, which also validates them (an error names the file)."""
    cache = Path(cache_dir) / f"class_pixel_counts-{split_fingerprint}-{num_classes}c.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("num_images") == len(labeled_dataset) and len(stored.get("counts", ())) == num_classes:
            return np.asarray(stored["counts"], dtype=np.int64)
        logger.warning("ignoring stale %s (made for %s images, dataset has %d)", cache, stored.get("num_images"),
                       len(labeled_dataset))
    if len(labeled_dataset) == 0:
        raise DataError("the labeled dataset is empty; class counts need at least one mask. Fix: check the split "
                        "(labeled ids) against the dataset.")
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        total = np.sum(list(pool.map(lambda item: _count_one(item, num_classes), iter_label_records(labeled_dataset))),
                       axis=0)
    atomic_write(cache, json.dumps({"split_fingerprint": split_fingerprint, "num_classes": num_classes,
                                    "num_images": len(labeled_dataset), "counts": total.tolist()}, indent=1) + "\n")
    return total
