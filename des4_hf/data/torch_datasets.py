"""``torch.utils.data.Dataset`` wrappers the trainer and the evaluator iterate.

Images are read as prediction reads them (:mod:`des4_hf.image_io`: PIL, EXIF orientation applied), straight
from the path or the Arrow bytes; masks by PIL (palette PNGs as indices). Item ``i``'s randomness comes from ``(seed, epoch, i, stream)``: call ``set_epoch`` first. Bad data
raises :class:`DataError` naming the file and the fix. ``frame_scale`` resizes every frame once (image antialiased,
mask by nearest) and ``cache_frames`` keeps the decoded frames in memory, so that a small study decodes each file
once (per loader worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torchvision.transforms.v2.functional import InterpolationMode, resize

from ..image_io import exif_orientation, read_image, rgb_uint8
from .augment import (
    AugmentConfig,
    apply_geometry,
    cutmix_box,
    item_generator,
    normalize,
    sample_geometry,
    strong_photometric,
)
from .class_counts import check_mask_values
from .datasets import DataError, decode_mask, get_dataset_metadata

#: Salts so the labeled and unlabeled datasets do not draw identical crops for the same index.
STREAM_LABELED, STREAM_UNLABELED = 1, 2


def decode_image_record(record: Mapping[str, Any] | None, where: str) -> torch.Tensor:
    """uint8 ``(3, H, W)`` RGB tensor from a ``datasets.Image(decode=False)`` record, read as prediction reads a
    file (:func:`des4_hf.image_io.read_image`: EXIF orientation applied)."""
    if record is None or (not record.get("bytes") and not record.get("path")):
        raise DataError(f"{where}: missing (empty value). Fix: drop the row or supply the file.")
    source = record.get("path") or "<bytes>"
    try:
        image = read_image(record["bytes"] if record.get("bytes") else record["path"])
    except FileNotFoundError as exc:
        raise DataError(f"{where}: file {source} does not exist. Fix: restore it, or drop its row.") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise DataError(f"{where}: cannot decode {source} ({exc}). Fix: re-export the file as PNG/JPEG, or drop "
                        "its row.") from exc
    return torch.from_numpy(np.array(rgb_uint8(image))).permute(2, 0, 1).contiguous()


class _SegmentationBase(torch.utils.data.Dataset):
    """Row access without PIL decoding of images, validation, epochs."""

    stream = 0
    with_labels = True

    def __init__(self, hf_dataset: datasets.Dataset, image_mean: Sequence[float], image_std: Sequence[float], *,
                 seed: int = 0, num_classes: int | None = None, frame_scale: float = 1.0,
                 cache_frames: bool = False) -> None:
        with_labels = self.with_labels
        if not 0 < frame_scale <= 1:
            raise ValueError(f"frame_scale={frame_scale}: a factor in (0, 1] (1 = the files' own size)")
        self.frame_scale, self._cache = float(frame_scale), {} if cache_frames else None
        if isinstance(hf_dataset, datasets.DatasetDict):
            raise TypeError("pass one split (a datasets.Dataset), e.g. ds['train'], not a DatasetDict.")
        if len(hf_dataset) == 0:
            raise DataError("the dataset split is empty. Fix: check the split / the labeled ids.")
        if with_labels and "label" not in hf_dataset.column_names:
            raise DataError(f"this dataset has no 'label' column (columns: {hf_dataset.column_names}); labeled "
                            "training and evaluation need masks. Fix: pass the labeled split.")
        images = ["image", "label"] if with_labels else ["image"]
        self._raw = hf_dataset.select_columns(["id", *images])
        for column in images:  # raw bytes/paths, decoded here (a cheap cast: no table rewrite)
            self._raw = self._raw.cast_column(column, datasets.Image(decode=False))
        names = get_dataset_metadata(hf_dataset).get("class_names")
        self.num_classes = num_classes if num_classes is not None else len(names) if names else None
        self.mean = torch.tensor(list(image_mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(image_std), dtype=torch.float32).view(-1, 1, 1)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._raw)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns (same epoch → same crops)."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return item_generator(self.seed, self.epoch, index, self.stream)

    def load(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """``(id, image uint8 (3,H,W), mask uint8 (H,W) or None)``, validated, resized by ``frame_scale``."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        id_, image, mask = self._decode(index)
        if self.frame_scale != 1:
            size = [max(1, round(side * self.frame_scale)) for side in image.shape[-2:]]
            image = resize(image, size, antialias=True)
            mask = None if mask is None else resize(mask[None], size, InterpolationMode.NEAREST)[0]
        if self._cache is not None:
            self._cache[index] = (id_, image, mask)
        return id_, image, mask

    def _decode(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        row = self._raw[index]
        id_, image_record, label_record = row["id"], row["image"], row.get("label")
        image = decode_image_record(image_record, f"image of id {id_!r}")
        if not self.with_labels:
            return id_, image, None
        where = f"mask of id {id_!r}" + (f" ({label_record['path']})" if (label_record or {}).get("path") else "")
        mask = torch.from_numpy(decode_mask(label_record, where))
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            source = (image_record or {}).get("path") or (image_record or {}).get("bytes")
            turned = exif_orientation(source) not in (1, 2, 3, 4)  # 5-8: the photo is shown turned by 90°
            raise DataError(f"{where}: mask is {tuple(mask.shape)[::-1]} (W×H) but image "
                            f"{(image_record or {}).get('path') or '<bytes>'} is {tuple(image.shape[-2:])[::-1]}"
                            + (" as shown upright (its EXIF orientation turns it by 90°). Fix: draw the mask on the "
                               "upright photo, or save the photo without its orientation tag." if turned else
                               ". Fix: re-export the mask at the image size."))
        if self.num_classes is not None:
            check_mask_values(mask.numpy(), self.num_classes, where)
        return id_, image, mask


class _TrainBase(_SegmentationBase):
    """Random crops as ``augment`` says: an :class:`AugmentConfig`, or a crop size with U2PL's other defaults."""

    def __init__(self, hf_dataset: datasets.Dataset, augment: AugmentConfig | int, image_mean: Sequence[float],
                 image_std: Sequence[float], seed: int = 0, num_classes: int | None = None, frame_scale: float = 1.0,
                 cache_frames: bool = False) -> None:
        super().__init__(hf_dataset, image_mean, image_std, seed=seed, num_classes=num_classes,
                         frame_scale=frame_scale, cache_frames=cache_frames)
        self.config = augment if isinstance(augment, AugmentConfig) else AugmentConfig(crop_size=augment)


class LabeledTrainDataset(_TrainBase):
    """Weakly augmented labeled crops: ``pixel_values`` float (3, c, c), ``labels`` int64 (c, c)."""

    stream = STREAM_LABELED

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = self.generator(index)
        _, image, mask = self.load(index)  # with labels: a mask
        geometry = sample_geometry(image.shape[-2], image.shape[-1], self.config, generator)
        crop, mask_crop, padding = apply_geometry(image, mask, geometry)
        pixel_values = _normalize_masked(crop, self.mean, self.std, padding)
        return {"pixel_values": pixel_values, "labels": mask_crop.to(torch.int64)}


class UnlabeledTrainDataset(_TrainBase):
    """Weak and strong views (same geometry) of one unlabeled crop: ``pixel_values_weak``/``_strong`` (3, c, c),
    ``padding_mask`` (c, c; True outside the image) and ``cutmix_mask`` (the box filled from another sample); with
    ``strong_views=2`` also ``pixel_values_strong_2`` and ``cutmix_mask_2``, drawn after the first."""

    stream = STREAM_UNLABELED
    with_labels = False

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = self.generator(index)
        _, image, _ = self.load(index)
        geometry = sample_geometry(image.shape[-2], image.shape[-1], self.config, generator)
        crop, _, padding = apply_geometry(image, None, geometry)
        item = {"pixel_values_weak": _normalize_masked(crop, self.mean, self.std, padding), "padding_mask": padding}
        for view in range(self.config.strong_views):  # the first view's draws come first: one view is unchanged
            suffix = "" if view == 0 else f"_{view + 1}"
            strong = strong_photometric(crop, self.config, generator)
            item[f"cutmix_mask{suffix}"] = cutmix_box(self.config.crop_size, self.config, generator)
            item[f"pixel_values_strong{suffix}"] = _normalize_masked(strong, self.mean, self.std, padding)
        return item


class EvalDataset(_SegmentationBase):
    """Full-resolution ``pixel_values`` (3, H, W), ``labels`` int64 (H, W) and ``id``; sizes differ between images."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        id_, image, mask = self.load(index)  # with labels: a mask
        return {"pixel_values": normalize(image, self.mean, self.std), "labels": mask.to(torch.int64), "id": id_}


def _normalize_masked(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      padding: torch.Tensor) -> torch.Tensor:
    """Normalise, then set padded pixels to 0 (= the mean colour, a neutral input)."""
    out = normalize(image, mean, std)
    return out.masked_fill_(padding, 0.0) if bool(padding.any()) else out
