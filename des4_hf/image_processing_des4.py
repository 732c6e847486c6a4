"""Des4ImageProcessor: images (PIL, NumPy, torch; 8/16-bit, gray, RGBA) → normalised ``pixel_values``, and model
outputs → label maps at each image's own size."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .image_io import to_rgb_array

logger = logging.getLogger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)



_CHANNELS_FIRST = {"channels_first": True, "channels_last": False, "none": None}


class Des4ImageProcessor(BaseImageProcessor):
    r"""Prepares images for [`Des4ForSemanticSegmentation`]: no resizing by default (DeS4 segments at the image's own
    size), else to ``size`` = ``{"height", "width"}`` or ``{"shortest_edge"}``; the normalisation the encoder's
    weights expect. ``do_pad`` with ``pad_size`` pads every image (bottom/right, with the mean) to one size, so that
    a batched ``pipeline`` takes images of mixed sizes; post-processing crops the padding off again.
    ``segmentation_maps`` become ``labels`` (``do_reduce_labels``: 0 → 255, the rest − 1, as ADE20k)."""

    model_input_names = ["pixel_values"]
    # every option preprocess takes, also at call time; anything else is warned about
    _OPTIONS = ("do_resize", "size", "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_reduce_labels",
                "do_pad", "pad_size")

    def __init__(self, do_resize: bool = False, size: dict[str, int] | None = None, do_normalize: bool = True,
                 image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 image_std: Sequence[float] = IMAGENET_DEFAULT_STD, do_convert_rgb: bool = True,
                 do_reduce_labels: bool = False, do_pad: bool = False, pad_size: dict[str, int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else None
        self.do_normalize = do_normalize
        self.image_mean, self.image_std = _statistics(image_mean, image_std)
        self.do_convert_rgb = do_convert_rgb
        self.do_reduce_labels = do_reduce_labels
        self.do_pad = do_pad
        self.pad_size = dict(pad_size) if pad_size is not None else None
        if do_resize:
            _check_size(self.size)
        if do_pad:
            _check_pad_size(self.pad_size)

    @classmethod
    def for_encoder(cls, backbone: str, encoder_weights: str | None, **kwargs: Any) -> Des4ImageProcessor:
        """A processor with the normalisation that ``encoder_weights`` were trained with."""
        from .pretrained import encoder_normalization

        mean, std = encoder_normalization(backbone, encoder_weights)
        return cls(image_mean=mean, image_std=std, **kwargs)

    def preprocess(self, images: Any, segmentation_maps: Any = None,  # type: ignore[override]
                   return_tensors: str | None = "pt", input_data_format: Any = None, **kwargs: Any) -> BatchFeature:
        """Images (one, or a list of same-size ones unless ``do_pad``) → ``BatchFeature(pixel_values=(B, 3, H, W))``,
        with ``labels`` (B, H, W) int64 for ``segmentation_maps``. Every constructor option can be given here too."""
        unknown = sorted(set(kwargs) - set(self._OPTIONS))
        if unknown:
            logger.warning("Des4ImageProcessor.preprocess ignores unknown argument(s) %s; it takes %s.", unknown,
                           ", ".join(self._OPTIONS))
        options = {name: kwargs[name] if kwargs.get(name) is not None else getattr(self, name) for name in self._OPTIONS}
        mean, std = _statistics(options["image_mean"], options["image_std"])
        if options["do_resize"]:
            _check_size(options["size"])
        if options["do_pad"]:
            _check_pad_size(options["pad_size"])
        channels_first = _CHANNELS_FIRST.get(str(getattr(input_data_format, "value", input_data_format)).lower())
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(images) == 0:
            raise ValueError("no images given")
        tensors = []
        for image in images:
            tensor = torch.from_numpy(to_rgb_array(image, channels_first, options["do_convert_rgb"])).permute(2, 0, 1)
            if options["do_resize"]:
                tensor = self._resize(tensor, _target_size(tuple(tensor.shape[-2:]), options["size"]))
            if options["do_normalize"]:  # in place: the array is this call's own copy
                tensor = tensor.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))
            tensors.append(_pad(tensor, options["pad_size"], 0.0) if options["do_pad"] else tensor.contiguous())
        data = {"pixel_values": _stack(tensors, "images")}
        if segmentation_maps is not None:
            maps = list(segmentation_maps) if isinstance(segmentation_maps, (list, tuple)) else [segmentation_maps]
            if len(maps) != len(images):
                raise ValueError(f"got {len(maps)} segmentation maps for {len(images)} images")
            data["labels"] = _stack([self._label_tensor(label_map, tuple(tensor.shape[-2:]), options)
                                     for label_map, tensor in zip(maps, tensors, strict=True)], "segmentation maps")
        if return_tensors in (None, "pt"):
            return BatchFeature(data=data, tensor_type="pt")
        if return_tensors == "np":
            return BatchFeature(data={key: value.numpy() for key, value in data.items()}, tensor_type="np")
        raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' or 'np'.")

    def _resize(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """(3, H, W) float image → ``size``: bilinear with antialiasing, in torch (the torchvision backend's way)."""
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]

    def _resize_labels(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """(H, W) int64 class indices → ``size``, nearest (no blended class ids)."""
        return F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()

    def _label_tensor(self, label_map: Any, image_size: tuple[int, ...], options: dict[str, Any]) -> Tensor:
        """A (H, W) class-index map as int64, reduced, resized (nearest) and padded (255) like its image."""
        array = np.asarray(label_map) if not isinstance(label_map, Tensor) else label_map.detach().cpu().numpy()
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.ndim != 2:
            raise ValueError(f"a segmentation map must be (H, W) class indices, got shape {array.shape}")
        labels = torch.from_numpy(array.astype(np.int64))
        if options["do_reduce_labels"]:  # background 0 → ignore, the classes 1.. → 0..
            labels = torch.where(labels == 0, 255, labels - 1).masked_fill_(labels == 255, 255)
        if options["do_resize"]:
            labels = self._resize_labels(labels, _target_size(tuple(labels.shape), options["size"]))
        if options["do_pad"]:
            labels = _pad(labels, options["pad_size"], 255)
        if tuple(labels.shape) != tuple(image_size):
            raise ValueError(f"a segmentation map is {tuple(labels.shape)} but its image {tuple(image_size)}: give "
                             "one label map per image, at the image's size")
        return labels

    def post_process_semantic_segmentation(self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | None = None,
                                           return_segmentation_scores: bool = False) -> list[Any]:
        """Per image, a (H, W) int64 label map (with ``return_segmentation_scores``, a
        ``SemanticSegmentationPostProcessorOutput`` with ``segmentation`` and the (C, H, W) ``segmentation_scores``);
        with ``do_pad`` the padding is cropped off first, then logits are resized (bilinear) to ``target_sizes``."""
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if target_sizes is not None and len(target_sizes) != logits.shape[0]:
            raise ValueError(f"got {len(target_sizes)} target sizes for {logits.shape[0]} images")
        results = []
        for index in range(logits.shape[0]):
            scores = logits[index : index + 1]
            if target_sizes is not None:
                target = tuple(int(v) for v in target_sizes[index])
                if self.do_pad:  # the image's content before padding: its resized size, or its own
                    content = _target_size(target, self.size) if self.do_resize and self.size else target
                    scores = scores[..., : content[0], : content[1]]
                if tuple(scores.shape[-2:]) != target:
                    scores = F.interpolate(scores.float(), size=target, mode="bilinear", align_corners=False)
            segmentation = scores[0].argmax(dim=0)
            results.append(SemanticSegmentationPostProcessorOutput(
                data={"segmentation": segmentation, "segmentation_scores": scores[0]})
                if return_segmentation_scores else segmentation)
        return results


class Des4ImageProcessorPil(Des4ImageProcessor):
    """The PIL backend of :class:`Des4ImageProcessor` (transformers' ``backend="pil"``): the same steps, with resizing
    done by PIL (bilinear per float channel, nearest for labels); everything else is shared."""

    def _resize(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        channels = [np.asarray(Image.fromarray(channel, mode="F").resize(size[::-1], Image.Resampling.BILINEAR))
                    for channel in image.numpy()]
        return torch.from_numpy(np.stack(channels))

    def to_dict(self) -> dict[str, Any]:
        """Saved as a :class:`Des4ImageProcessor` (transformers' convention for a PIL backend): one saved type, which
        either backend loads."""
        output = super().to_dict()
        output["image_processor_type"] = Des4ImageProcessor.__name__
        return output

    def _resize_labels(self, labels: Tensor, size: tuple[int, int]) -> Tensor:
        resized = Image.fromarray(labels.numpy().astype(np.int32), mode="I").resize(size[::-1], Image.Resampling.NEAREST)
        return torch.from_numpy(np.asarray(resized).astype(np.int64))


def _statistics(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"image_mean={mean} and image_std={std}: three finite values each, with positive std (fix "
                         "preprocessor_config.json).")
    if max(abs(v) for v in mean + std) > 2:  # pixels are scaled to [0, 1] first: 0–255 statistics would wreck them
        raise ValueError(f"image_mean={mean} and image_std={std} are on the 0–255 scale, but pixels are scaled to "
                         "[0, 1] first: divide them by 255 (fix preprocessor_config.json).")
    return mean, std


def _stack(tensors: list[Tensor], what: str) -> Tensor:
    shapes = {tuple(t.shape[-2:]) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"{what} have different sizes {sorted(shapes)}: process them one at a time, or set "
                         "do_pad=True with pad_size={'height': H, 'width': W} (or do_resize=True with a fixed size).")
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)  # no copy of a single large image


def _pad(tensor: Tensor, pad_size: dict[str, int], value: float) -> Tensor:
    height, width = tensor.shape[-2:]
    if height > pad_size["height"] or width > pad_size["width"]:
        raise ValueError(f"an image of {height}×{width} does not fit pad_size={pad_size}: raise pad_size, or resize "
                         "first (do_resize=True, size={'shortest_edge': S})")
    return F.pad(tensor, (0, pad_size["width"] - width, 0, pad_size["height"] - height), value=value).contiguous()


def _check_pad_size(pad_size: dict[str, int] | None) -> None:
    if not pad_size or set(pad_size) != {"height", "width"} or min(pad_size.values()) < 1:
        raise ValueError(f"pad_size={pad_size!r}: use {{'height': H, 'width': W}} (at least each image's size).")


def _check_size(size: dict[str, int] | None) -> None:
    if not size or not (set(size) == {"height", "width"} or set(size) == {"shortest_edge"}):
        raise ValueError(f"size={size!r}: use {{'height': H, 'width': W}} or {{'shortest_edge': S}}.")


def _target_size(current: tuple[int, ...], size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        height, width = current
        scale = size["shortest_edge"] / min(height, width)
        return round(height * scale), round(width * scale)
    return size["height"], size["width"]
