"""Per-class pixel counts of the labeled set (MES class ratio R, SPEC §3), computed once and cached under the run's
folder (the dataset root may be read-only), keyed by the split, the class count and the masks' content."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..utils import atomic_write
from .datasets import IGNORE_INDEX, DataError, decode_mask, iter_label_records


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


def _masks_stamp(dataset: datasets.Dataset) -> str:
    """Each mask file's size and modification time (a hash of its bytes when it has no file): edits change it."""
    digest = hashlib.sha256()
    for _, record in iter_label_records(dataset):
        path, data = (record or {}).get("path"), (record or {}).get("bytes") or b""
        stat = os.stat(path) if path and os.path.isfile(path) else None
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode() if stat else data)
    return digest.hexdigest()[:12]


def class_pixel_counts(labeled_dataset: datasets.Dataset, num_classes: int, cache_dir: str | os.PathLike[str],
                       split_fingerprint: str, num_threads: int = 2) -> np.ndarray:
    """``(C,)`` int64 pixel count per class over ``labeled_dataset``, from the cache made from the same masks, else by
    decoding every mask once, which also validates them (an error names the file)."""
    stamp = _masks_stamp(labeled_dataset)
    cache = Path(cache_dir) / f"class_pixel_counts-{split_fingerprint}-{num_classes}c-{stamp}.json"
    if cache.is_file():
        return np.asarray(json.loads(cache.read_text())["counts"], dtype=np.int64)
    if len(labeled_dataset) == 0:
        raise DataError("the labeled dataset is empty; class counts need at least one mask. Fix: check the split "
                        "(labeled ids) against the dataset.")
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        total = np.sum(list(pool.map(lambda item: _count_one(item, num_classes), iter_label_records(labeled_dataset))),
                       axis=0)
    atomic_write(cache, json.dumps({"split_fingerprint": split_fingerprint, "num_classes": num_classes,
                                    "num_images": len(labeled_dataset), "counts": total.tolist()}, indent=1) + "\n")
    return total
