"""Where datasets come from beyond the local layouts: Hub copies of the benchmarks (:data:`HUB_PRESETS`,
:func:`load_hub`, label formats converted to class indices) and :func:`load_segmentation_dataset`, the one entry
point over every source."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from .datasets import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    LABEL_FORMATS,
    VOC_CLASSES,
    DataError,
    cityscapes_id_kind,
    labels_to_indices,
    load_camvid,
    load_cityscapes,
    load_folder,
    load_voc,
    open_image_record,
    set_dataset_metadata,
)


@dataclass(frozen=True)
class HubPreset:
    """Column mapping and label format of a public Hub copy of a benchmark."""

    name: str
    image_column: str = "image"
    label_column: str = "mask"
    id_column: str | None = None
    label_format: str = "auto"
    class_names: tuple[str, ...] = VOC_CLASSES
    note: str = ""


_CITYSCAPES_HUB = HubPreset("Chris1/cityscapes", label_column="semantic_segmentation", label_format="cityscapes",
                            class_names=CITYSCAPES_CLASSES,
                            note="image/semantic_segmentation; the masks hold labelIds as RGB with equal channels; "
                            "labelIds or trainIds are told apart by their values. name= applies it to another copy")
#: Public Hub copies of the benchmarks, by Hub id (``--dataset <id>``; ``name=`` applies a schema to a local copy).
HUB_PRESETS: dict[str, HubPreset] = {
    "jxie/pascal-voc-2012": HubPreset("jxie/pascal-voc-2012", note="train = the 10,582 SBD-augmented images, "
                                      "val = 1,449; no id column, so only random splits apply"),
    "shijli/voc2012": HubPreset("shijli/voc2012", id_column="id",
                                note="has an id column: the standard VOC split lists apply"),
    "nateraw/pascal-voc-2012": HubPreset("nateraw/pascal-voc-2012", note="VOC 2012 without SBD: image/mask, "
                                         "train = 1,464, validation = 1,449; no id column"),
    "Chris1/cityscapes": _CITYSCAPES_HUB,
    "cityscapes-hub": _CITYSCAPES_HUB,  # the earlier name of the Chris1/cityscapes preset
}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}
def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_hub(name: str, image_column: str | None = None, label_column: str | None = None,
             id_column: str | None = None, label_format: str | None = None, class_names: Sequence[str] | None = None,
             split_map: Mapping[str, str] | None = None, num_proc: int | None = None,
             **load_kwargs: Any) -> datasets.DatasetDict:
    """A Hub dataset, a local ``save_to_disk`` folder or parquet files, with columns renamed to ``id``/``image``/
    ``label`` (defaults from :data:`HUB_PRESETS`) and ``validation`` to ``val``. Masks that are not indices are
    converted once with ``Dataset.map``. Without an id column, ids ``"<split>-<row>"`` are generated and marked,
    so that a standard split list fails with the reason instead of selecting nothing."""
    preset = HUB_PRESETS.get(name) or HubPreset(name, class_names=())
    source = preset.name
    image_column = image_column or preset.image_column
    label_column = label_column if label_column is not None else preset.label_column
    id_column = id_column if id_column is not None else preset.id_column
    label_format = label_format or preset.label_format
    class_names = class_names if class_names is not None else (preset.class_names or None)
    if label_format not in LABEL_FORMATS:
        raise DataError(f"label_format={label_format!r} is not one of {LABEL_FORMATS}.")
    path = Path(source)
    if source.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet"))):
        files = source if source.endswith(".parquet") else {
            p.stem.split("-")[0]: str(p) for p in sorted(path.glob("*.parquet"))}
        loaded = datasets.load_dataset("parquet", data_files=files, **load_kwargs)
    elif path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(source, **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    splits = {split: (split_map or {}).get(split, _SPLIT_ALIASES.get(split, split)) for split in loaded}
    return datasets.DatasetDict({new: _normalise_hub_split(loaded[old], new, source, image_column, label_column,
                                                           id_column, label_format, class_names, num_proc)
                                 for old, new in splits.items()})


def _normalise_hub_split(ds: datasets.Dataset, split: str, source: str, image_column: str, label_column: str | None,
                         id_column: str | None, label_format: str, class_names: Sequence[str] | None,
                         num_proc: int | None) -> datasets.Dataset:
    if len(ds) == 0:
        raise DataError(f"split {split!r} of {source} is empty. Fix: check the dataset name / data_files.")
    for column, what in ((image_column, "image_column"), (label_column, "label_column"), (id_column, "id_column")):
        if column is not None and column not in ds.column_names:
            raise DataError(f"{source} split {split!r} has no column {column!r} (columns: {ds.column_names}). "
                            f"Fix: pass {what}=<one of those>" + (" or None." if what != "image_column" else "."))
    has_label = label_column is not None
    renames = {column: new for column, new in ((image_column, "image"), (label_column, "label"), (id_column, "id"))
               if column is not None}
    ds = ds.select_columns(list(renames)).rename_columns({k: v for k, v in renames.items() if k != v})
    ids_generated = id_column is None
    if ids_generated:
        ds = ds.add_column("id", [f"{split}-{i}" for i in range(len(ds))])
    elif ds.features["id"] != datasets.Value("string"):
        ds = ds.cast_column("id", datasets.Value("string"))
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    if has_label:
        if not isinstance(ds.features["label"], datasets.Image):
            ds = ds.cast_column("label", datasets.Image())
        ds = _convert_hub_labels(ds, label_format, source, split, num_proc)
    ds = ds.select_columns(["id", "image", "label"] if has_label else ["id", "image"])
    meta = {"class_names": list(class_names) if class_names else None, "ignore_index": IGNORE_INDEX,
            "source": f"hub:{source}", "split": split, "ids_generated": ids_generated, "label_format": label_format}
    return set_dataset_metadata(ds, meta)


def _convert_hub_labels(ds: datasets.Dataset, label_format: str, source: str, split: str,
                        num_proc: int | None) -> datasets.Dataset:
    raw = ds.cast_column("label", datasets.Image(decode=False))
    first = raw[0]["label"]
    if label_format == "cityscapes":  # one kind for the whole copy, from its first masks' values
        values = set()
        for row in range(min(4, len(raw))):
            where = f"{source} {split} row {row} label"
            with open_image_record(raw[row]["label"], where) as im:
                values |= set(np.unique(labels_to_indices(im, "index", where)).tolist())
        label_format = cityscapes_id_kind(np.array(sorted(values)), f"{source} {split} (first {min(4, len(raw))} masks)")
    if label_format in ("auto", "index", "palette", "cityscapes_train_ids"):
        with open_image_record(first, f"{source} {split} row 0 label") as im:
            if im.mode in ("P", "L", "I", "I;16"):
                return ds  # already indices: decode as is, no rewrite (RGB-stored ids are rewritten as one channel)

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        where = f"{source} {split} id {example['id']!r} label"
        with open_image_record(example["label"], where) as im:
            indices = labels_to_indices(im, label_format, where)
        return {"label": {"bytes": _encode_png(indices), "path": None}}

    converted = raw.map(convert, features=raw.features.copy(), num_proc=num_proc,
                        desc=f"{split}: decoding {label_format} masks to class indices")
    return converted.cast_column("label", datasets.Image())


_LOADERS: dict[str, Callable[..., datasets.DatasetDict]] = {
    "voc": load_voc, "cityscapes": load_cityscapes, "camvid": load_camvid, "folder": load_folder, "hub": load_hub}
#: The kinds :func:`load_segmentation_dataset` accepts: its loaders, then the Hub preset names.
DATASET_KINDS: tuple[str, ...] = (*_LOADERS, *HUB_PRESETS)


def load_segmentation_dataset(kind: str, **kwargs: Any) -> datasets.DatasetDict:
    """A ``DatasetDict`` with ``id``/``image``/``label`` columns. ``kind``: ``voc``, ``cityscapes``, ``camvid``,
    ``folder`` or ``hub`` (their loaders' keyword arguments), or a :data:`HUB_PRESETS` name (``name=`` applies
    its schema to another copy)."""
    if kind in HUB_PRESETS:
        name = kwargs.pop("name", None) or kind
        for key in ("image_column", "label_column", "id_column", "label_format", "class_names"):
            kwargs.setdefault(key, getattr(HUB_PRESETS[kind], key))
        return load_hub(name, **kwargs)
    if kind not in _LOADERS:
        raise DataError(f"unknown dataset kind {kind!r}. Allowed: {list(DATASET_KINDS)}.")
    return _LOADERS[kind](**kwargs)


