"""Segmentation datasets as ``datasets.DatasetDict`` objects (VOC, Cityscapes, CamVid, folders, Hub copies).

Every loader returns ``"train"`` and ``"val"`` (where the source has them) with the columns ``id`` (as the standard
split lists name it), ``image`` (RGB) and ``label`` (uint8 class indices, 255 = ignore; absent for unlabeled
folders), files referenced by path. Class names travel in ``Dataset.info.description`` (JSON that survives
``select``/``map``/``save_to_disk``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from ..utils import atomic_path, des4_cache_dir
from .classes import (  # noqa: F401 - CITYSCAPES_EVAL_LABEL_IDS: part of this module's names
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_EVAL_LABEL_IDS,
    IGNORE_INDEX,
    VOC_CLASSES,
    cityscapes_label_id_to_train_id,
    voc_palette,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_METADATA_MARKER = "des4_hf-metadata:"

class DataError(ValueError):
    """Bad or missing data. The message names the file (or split) and says how to fix it."""


FEATURES_UNLABELED = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
FEATURES_LABELED = datasets.Features({**FEATURES_UNLABELED, "label": datasets.Image()})


def _info(metadata: Mapping[str, Any], title: str, features: datasets.Features) -> datasets.DatasetInfo:
    return datasets.DatasetInfo(description=f"{title}\n{_METADATA_MARKER} {json.dumps(dict(metadata))}",
                                features=features)


def get_dataset_metadata(ds: datasets.Dataset | datasets.DatasetDict) -> dict[str, Any]:
    """The metadata the loaders store in ``info.description`` (class_names, ignore_index...); ``{}`` if none."""
    if isinstance(ds, datasets.DatasetDict):
        if not ds:
            return {}
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    description = ds.info.description or ""
    for line in description.splitlines():
        if line.startswith(_METADATA_MARKER):
            return json.loads(line[len(_METADATA_MARKER) :])
    return {}


def set_dataset_metadata(ds: datasets.Dataset, metadata: Mapping[str, Any]) -> datasets.Dataset:
    """Write ``metadata`` into ``ds.info.description`` in place (and return ``ds``)."""
    description = ds.info.description or ""
    kept = [line for line in description.splitlines() if not line.startswith(_METADATA_MARKER)]
    kept.append(f"{_METADATA_MARKER} {json.dumps(dict(metadata))}")
    ds.info.description = "\n".join(kept)
    return ds


def get_class_names(ds: datasets.Dataset | datasets.DatasetDict) -> list[str]:
    """Class names in index order, as stored by the loader that built ``ds``."""
    meta = get_dataset_metadata(ds)
    names = meta.get("class_names")
    if not names:
        where = f" (none found in or beside {meta.get('root')})" if meta.get("source") == "folder" else ""
        raise DataError(f"this dataset carries no class names{where}. Fix: write them one per line in a classes.txt "
                        "beside the images or masks folder (e.g. <data-root>/train/classes.txt); from Python, pass "
                        "class_names=[...] to load_segmentation_dataset.")
    return list(names)


@dataclass
class _Pairs:
    """Rows of one split before they become a ``datasets.Dataset``."""

    ids: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    labels: list[str] | None = field(default_factory=list)

    def add(self, id_: str, image: Path, label: Path) -> None:
        self.ids.append(id_)
        self.images.append(str(image))
        self.labels.append(str(label))  # type: ignore[union-attr]


def _to_dataset(pairs: _Pairs, split: str, metadata: dict[str, Any], title: str, where: str) -> datasets.Dataset:
    if not pairs.ids:
        raise DataError(f"split {split!r} from {where} is empty. Fix: check the path and the id list / folder "
                        "content.")
    meta = dict(metadata, split=split)
    columns = {"id": pairs.ids, "image": pairs.images, **({"label": pairs.labels} if pairs.labels is not None else {})}
    features = FEATURES_LABELED if pairs.labels is not None else FEATURES_UNLABELED
    return datasets.Dataset.from_dict(columns, features=features, info=_info(meta, title, features), split=split)


def read_id_list(path: Path) -> list[str]:
    """The non-empty lines of a list file (ids, or class names); an id or name listed twice is refused, named."""
    if not path.is_file():
        raise DataError(f"{path} does not exist. Fix: check the dataset root (it must contain this list file).")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    repeated = sorted({line for line in lines if lines.count(line) > 1}) if len(set(lines)) < len(lines) else []
    if repeated:
        raise DataError(f"{path} lists {repeated[:5]} more than once. Fix: keep one line each.")
    return lines


def _voc_layout_split(root: Path, ids: Sequence[str], mask_dirs: Sequence[str]) -> _Pairs:
    pairs = _Pairs()
    image_files = _stems(root / "JPEGImages")
    mask_files = [_stems(root / d) for d in mask_dirs]
    for id_ in ids:
        image = image_files.get(id_)
        mask = next((m[id_] for m in mask_files if id_ in m), None)
        if image is None:
            raise DataError(f"missing image for id {id_!r}: {root / 'JPEGImages' / (id_ + '.jpg')} does not exist. "
                            "Fix: restore the file or remove the id from the list.")
        if mask is None:
            raise DataError(f"missing mask for id {id_!r}: {root / mask_dirs[0] / (id_ + '.png')} does not exist. "
                            "Fix: restore the mask or remove the id from the list.")
        pairs.add(id_, image, mask)
    return pairs


def _check_file_name(folder: str | os.PathLike[str], name: str) -> None:
    """A name that is not UTF-8 (decoded with surrogates) cannot be stored in a dataset's text columns: named."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise DataError(f"{folder}: the file name {raw!r} is not valid UTF-8. Fix: rename it (e.g. "
                        f"{raw.decode('utf-8', 'replace').replace(chr(0xFFFD), '_')!r}).") from None


def _stems(folder: Path) -> dict[str, Path]:
    """``stem → path`` of the image files directly inside ``folder``; two files of one stem are refused, named."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:
        files = sorted((Path(entry.path) for entry in entries if os.path.splitext(entry.name)[1].lower()
                        in IMAGE_EXTENSIONS), key=lambda path: (path.stem, path.name))
    for path in files:
        _check_file_name(folder, path.name)
    twins = [f"{a.name} and {b.name}" for a, b in zip(files, files[1:]) if a.stem == b.stem]
    if twins:  # masks copied into JPEGImages/ by mistake? Either file could be taken for the image
        raise DataError(f"{folder}: {', '.join(twins)} share a name. Fix: keep one file per image id.")
    return {path.stem: path for path in files}


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} is not a folder. Fix: {fix}")


def load_voc(root: str | os.PathLike[str], train_set: str = "auto") -> datasets.DatasetDict:
    """PASCAL VOC 2012 (``VOCdevkit/VOC2012``). ``train_set``: ``"aug"``, the 10,582 SBD-augmented ids
    (``train_aug.txt`` / ``trainaug.txt``, else every ``SegmentationClassAug`` mask not in val), from which both
    semi-supervised protocols draw; ``"fine"``, the 1,464 ``train.txt`` ids; ``"auto"``: aug when its masks exist.
    val: the 1,449 ``val.txt`` ids."""
    root = Path(root)
    sets = root / "ImageSets" / "Segmentation"
    _require_dir(root / "JPEGImages", "VOC JPEGImages/", "pass root=<...>/VOCdevkit/VOC2012")
    _require_dir(sets, "VOC ImageSets/Segmentation/", "pass root=<...>/VOCdevkit/VOC2012")
    has_aug = (root / "SegmentationClassAug").is_dir()
    if train_set == "auto":
        train_set = "aug" if has_aug else "fine"
    if train_set not in ("aug", "fine"):
        raise DataError(f"train_set={train_set!r} is not one of 'auto', 'aug', 'fine'.")
    val_ids = read_id_list(sets / "val.txt")
    if train_set == "aug":
        _require_dir(root / "SegmentationClassAug", "SegmentationClassAug/", "unpack the SBD-augmented masks "
                     "(SegmentationClassAug.zip) into the VOC root, or use train_set='fine'")
        list_file = next((sets / n for n in ("train_aug.txt", "trainaug.txt") if (sets / n).is_file()), None)
        if list_file is not None:
            train_ids = read_id_list(list_file)
        else:
            val = set(val_ids)
            train_ids = sorted(s for s in _stems(root / "SegmentationClassAug") if s not in val)
        train_masks = ["SegmentationClassAug", "SegmentationClass"]
    else:
        train_ids = read_id_list(sets / "train.txt")
        train_masks = ["SegmentationClass", "SegmentationClassAug"]
    meta = {"class_names": list(VOC_CLASSES), "ignore_index": IGNORE_INDEX, "source": "voc", "root": str(root),
            "train_set": train_set}
    splits = {"train": (train_ids, train_masks), "val": (val_ids, ["SegmentationClass"])}
    return datasets.DatasetDict({
        split: _to_dataset(_voc_layout_split(root, ids, masks), split, meta, "PASCAL VOC 2012", str(root))
        for split, (ids, masks) in splits.items()})


def load_camvid(root: str | os.PathLike[str] | None = None) -> datasets.DatasetDict:
    """CamVid 11 classes in VOC layout (367 train, 101 val, 480×360, void = 255); ``root`` defaults to
    ``$DES4_CAMVID_ROOT`` (the package never guesses a data folder from where it is installed)."""
    root = root if root is not None else os.environ.get("DES4_CAMVID_ROOT") or None
    resolved = Path(root) if root is not None else None
    if resolved is None:
        raise DataError("CamVid root not given. Fix: pass root=<folder with JPEGImages/, SegmentationClass/, "
                        "ImageSets/> (--data-root on the command line) or set DES4_CAMVID_ROOT.")
    _require_dir(resolved / "JPEGImages", "CamVid JPEGImages/", "pass root= pointing at the CamVid copy")
    names = read_id_list(resolved / "classes.txt") if (resolved / "classes.txt").is_file() else list(CAMVID_CLASSES)
    meta = {"class_names": names, "ignore_index": IGNORE_INDEX, "source": "camvid", "root": str(resolved)}
    sets = resolved / "ImageSets" / "Segmentation"
    return datasets.DatasetDict({
        split: _to_dataset(_voc_layout_split(resolved, read_id_list(sets / f"{split}.txt"),
                                             ["SegmentationClass"]), split, meta, "CamVid (11 classes)", str(resolved))
        for split in ("train", "val")})


def _convert_label_file(src: Path, dst: Path, lut: np.ndarray) -> None:
    try:
        with PILImage.open(src) as im:
            array = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - any decoder error means the same thing to the user
        raise DataError(f"cannot read mask {src}: {exc}. Fix: re-extract the file.") from exc
    with atomic_path(dst) as temporary:
        PILImage.fromarray(lut[array.astype(np.uint8)]).save(temporary, format="PNG", compress_level=1)


def load_cityscapes(root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                    num_threads: int = 2) -> datasets.DatasetDict:
    """Cityscapes fine (``leftImg8bit/`` + ``gtFine/``), 19 train ids, 255 elsewhere; ``id`` = the image path
    relative to ``root``, as in the split lists. Without ``*_labelTrainIds.png`` the ``*_labelIds.png`` masks are
    mapped once into :func:`des4_cache_dir` (the dataset root may be read-only)."""
    root = Path(root)
    _require_dir(root / "leftImg8bit", "Cityscapes leftImg8bit/", "pass root=<folder with leftImg8bit/ and gtFine/>")
    _require_dir(root / "gtFine", "Cityscapes gtFine/", "download gtFine_trainvaltest.zip into the root")
    root_hash = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    converted_root = des4_cache_dir(cache_dir) / "cityscapes_train_ids" / root_hash
    lut = cityscapes_label_id_to_train_id()
    meta = {"class_names": list(CITYSCAPES_CLASSES), "ignore_index": IGNORE_INDEX, "source": "cityscapes",
            "root": str(root)}
    out = {}
    for split in ("train", "val"):
        image_root = root / "leftImg8bit" / split
        if not image_root.is_dir():
            continue
        pairs = _Pairs()
        to_convert: list[tuple[Path, Path]] = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
            frame = image.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / image.parent.name
            train_ids = gt / f"{frame}_gtFine_labelTrainIds.png"
            label_ids = gt / f"{frame}_gtFine_labelIds.png"
            if train_ids.is_file():
                mask = train_ids
            elif label_ids.is_file():
                mask = converted_root / split / image.parent.name / train_ids.name
                if not mask.is_file():
                    to_convert.append((label_ids, mask))
            else:
                raise DataError(f"missing mask for {image}: neither {train_ids} nor {label_ids} exists. Fix: extract "
                                "gtFine for this city.")
            pairs.add(image.relative_to(root).as_posix(), image, mask)
        if to_convert:
            logger.info("mapping %d Cityscapes labelIds masks to train ids under %s (once)", len(to_convert),
                        converted_root)
            with ThreadPoolExecutor(max(1, num_threads)) as pool:
                list(pool.map(lambda pair: _convert_label_file(pair[0], pair[1], lut), to_convert))
        out[split] = _to_dataset(pairs, split, meta, "Cityscapes (fine, 19 classes)", str(image_root))
    if not out:
        raise DataError(f"no leftImg8bit/train or leftImg8bit/val under {root}. Fix: check the root.")
    return datasets.DatasetDict(out)


def _walk_images(folder: Path) -> dict[str, Path]:
    """``relative path without extension → file`` for every image under ``folder`` (recursive)."""
    out: dict[str, Path] = {}
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                _check_file_name(dirpath, name)
                rel = (Path(dirpath) / stem).relative_to(folder).as_posix()
                if rel in out:  # X.jpg beside X.png: either could be taken for the image, as in the VOC layout
                    twins = " and ".join(sorted((out[rel].name, name)))
                    raise DataError(f"{Path(dirpath)}: {twins} share a name. Fix: keep one file per image id.")
                out[rel] = Path(dirpath) / name
    return dict(sorted(out.items()))


def _folder_split(images: Path, masks: Path | None) -> _Pairs:
    _require_dir(images, "image folder", "pass images=<folder of photos>")
    image_files = _walk_images(images)
    if masks is None:
        return _Pairs(ids=list(image_files), images=[str(p) for p in image_files.values()], labels=None)
    _require_dir(masks, "mask folder", "pass masks=<folder of single-channel PNG masks>, or masks=None")
    mask_files = _walk_images(masks)
    pairs = _Pairs()
    for id_, image in image_files.items():
        if id_ not in mask_files:
            raise DataError(f"missing mask for image {image}: expected {masks / id_}.png (masks are matched to images "
                            "by relative path and stem). Fix: add the mask, or move the image out of the folder.")
        pairs.add(id_, image, mask_files[id_])
    for id_, mask in mask_files.items():
        if id_ not in image_files:
            raise DataError(f"missing image for mask {mask}: no image {images / id_}.* . Fix: add the image or delete "
                            "the mask.")
    return pairs


PathLike = str | os.PathLike[str]


def load_folder(images: PathLike | None = None, masks: PathLike | None = None, val_images: PathLike | None = None,
                val_masks: PathLike | None = None, class_names: Sequence[str] | None = None, num_classes: int | None = None,
                root: PathLike | None = None) -> datasets.DatasetDict:
    """Image/mask pairs matched by relative path + stem (``masks=None``: unlabeled), masks of class indices (palette
    PNGs read as indices, 255 = ignore); ``root`` (training's ``--data-root``) means ``root/{train,val}/{images,masks}``.
    Class names: ``class_names``, ``num_classes`` generic ones, or a ``classes.txt`` in or beside a mask/image folder."""
    if root is not None:
        images, masks, val_images, val_masks = (Path(root) / split / kind for split in ("train", "val")
                                                for kind in ("images", "masks"))
    if images is None:
        raise DataError("load_folder needs images=<folder of photos> or root=<folder with train/ and val/>.")
    images_p = Path(images)
    masks_p = Path(masks) if masks is not None else None
    if class_names is None:
        found = [f for folder in filter(None, (masks_p, images_p)) for f in (folder, folder.parent)
                 if (f / "classes.txt").is_file()]
        class_names = read_id_list(found[0] / "classes.txt") if found else None
    if class_names is None and num_classes is not None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    meta = {"class_names": list(class_names) if class_names else None, "ignore_index": IGNORE_INDEX,
            "source": "folder", "root": str(images_p)}
    out = {"train": _to_dataset(_folder_split(images_p, masks_p), "train", meta, "image folder", str(images_p))}
    if val_images is not None:
        val_pairs = _folder_split(Path(val_images), Path(val_masks) if val_masks is not None else None)
        out["val"] = _to_dataset(val_pairs, "val", meta, "image folder", str(val_images))
    return datasets.DatasetDict(out)


LABEL_FORMATS = ("auto", "index", "palette", "voc_rgb", "cityscapes", "cityscapes_label_ids", "cityscapes_train_ids")


def labels_to_indices(im: PILImage.Image, label_format: str, where: str = "mask") -> np.ndarray:
    """One mask image → ``(H, W)`` uint8 class indices. ``index``/``palette``: the values are the classes;
    ``voc_rgb``: colours of the VOC map (unknown → 255); ``cityscapes_label_ids``: labelIds → train ids;
    ``cityscapes_train_ids``: train ids as stored (0–18, 255); ``cityscapes``: either, told apart by the values;
    ``auto``: RGB masks as ``voc_rgb``, others as indices. Ids stored as RGB with three equal channels (as some Hub
    copies do) are read as one channel in every format but ``voc_rgb``/``auto``."""
    if label_format not in LABEL_FORMATS:
        raise DataError(f"label_format={label_format!r} is not one of {LABEL_FORMATS}.")
    fmt = label_format
    if fmt == "auto":
        fmt = "voc_rgb" if im.mode in ("RGB", "RGBA") else "index"
    if fmt == "voc_rgb":
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(codes.shape, IGNORE_INDEX, dtype=np.uint8)
        for index, (r, g, b) in enumerate(voc_palette(21).astype(np.int64)):
            out[codes == (r << 16) | (g << 8) | b] = index
        return out
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise DataError(f"{where} is a colour image but label_format={label_format!r} expects class ids (one "
                            "channel, or three equal ones). Fix: pass label_format='voc_rgb' for VOC-coloured masks.")
        array = rgb[..., 0]
    else:
        array = np.asarray(im)
    if array.ndim == 3:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{where} holds values outside 0..255 (dtype {array.dtype}). Fix: store class indices "
                            "as uint8 PNG with 255 = ignore.")
        array = array.astype(np.uint8)
    if fmt == "cityscapes":
        fmt = cityscapes_id_kind(np.unique(array), where)
    if fmt == "cityscapes_label_ids":
        array = cityscapes_label_id_to_train_id()[array]
    elif fmt == "cityscapes_train_ids" and array.size and int(array[array != IGNORE_INDEX].max(initial=0)) > 18:
        raise DataError(f"{where} holds values above 18 (up to {int(array[array != IGNORE_INDEX].max())}), so it "
                        "is not trainIds. Fix: pass label_format='cityscapes_label_ids'.")
    return array


def cityscapes_id_kind(values: np.ndarray, where: str) -> str:
    """``cityscapes_label_ids`` or ``cityscapes_train_ids`` from the values a mask (or several) holds: labelIds run
    to 33 (road = 7), trainIds to 18 with 255 = ignore. Values 0–18 alone, without 255, fit both: an error."""
    values = np.asarray(values)
    if bool(((values > 18) & (values != IGNORE_INDEX)).any()):
        return "cityscapes_label_ids"
    if bool((values == IGNORE_INDEX).any()):
        return "cityscapes_train_ids"
    raise DataError(f"{where}: the values {sorted(int(v) for v in values)} fit both Cityscapes labelIds and trainIds. "
                    "Fix: pass label_format='cityscapes_label_ids' or 'cityscapes_train_ids'.")


@contextlib.contextmanager
def open_image_record(record: Mapping[str, Any] | None, where: str) -> Iterator[PILImage.Image]:
    """Open a ``datasets.Image(decode=False)`` record ``{"bytes", "path"}`` with PIL, naming it on failure."""
    if record is None or (not record.get("bytes") and not record.get("path")):
        raise DataError(f"{where}: missing (empty value). Fix: drop the row or supply the file.")
    source = record.get("path") or "<bytes>"
    try:
        image = PILImage.open(io.BytesIO(record["bytes"]) if record.get("bytes") else record["path"])
        image.load()
    except FileNotFoundError as exc:
        raise DataError(f"{where}: file {source} does not exist. Fix: restore it, or drop its row.") from exc
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{where}: cannot decode {source} ({exc}). Fix: re-export the file as PNG/JPEG, or drop "
                        "its row.") from exc
    with image:
        yield image


def decode_mask(record: Mapping[str, Any] | None, where: str) -> np.ndarray:
    """uint8 ``(H, W)`` class indices of a ``datasets.Image(decode=False)`` mask record (a writable copy)."""
    with open_image_record(record, where) as im:
        return np.array(labels_to_indices(im, "index", where), dtype=np.uint8, copy=True)


def iter_label_records(ds: datasets.Dataset) -> Iterable[tuple[str, Mapping[str, Any] | None]]:
    """``(id, raw label record)`` pairs without decoding, for fast scans (class counts, checks)."""
    if "label" not in ds.column_names:
        raise DataError("this dataset has no 'label' column (unlabeled images). Fix: pass the labeled split.")
    raw = ds.cast_column("label", datasets.Image(decode=False)).select_columns(["id", "label"])
    for batch in raw.iter(batch_size=256):
        yield from zip(batch["id"], batch["label"], strict=False)
