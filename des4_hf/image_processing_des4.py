"""Des4ImageProcessor: images (PIL, NumPy, torch; 8/16-bit, gray, RGBA) → normalised ``pixel_values``, and model
outputs → label maps at each image's own size."""

from __future__ import annotations

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

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_rgb_array(image: Any) -> np.ndarray:
    """Any common image input → float32 (H, W, 3) RGB in [0, 1]: 8-bit / 255, 16-bit / 65535, floats as they are;
    gray repeated to three channels, alpha dropped."""
    if isinstance(image, Image.Image):
        if image.mode in _SIXTEEN_BIT_MODES:
            array: np.ndarray = np.asarray(image).astype(np.float32) / 65535.0
        elif image.mode == "F":
            array = np.asarray(image, dtype=np.float32)
        else:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    elif isinstance(image, (Tensor, np.ndarray)):
        array = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CHW → HWC
        array = _scale_to_unit(array)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}: pass a PIL image, a NumPy array (H, W[, C]) "
                        "or a torch tensor ([C,] H, W).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"cannot read an image of shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4).")
    array = np.repeat(array[..., :1], 3, axis=-1) if array.shape[-1] < 3 else array[..., :3]  # gray(+alpha), RGBA
    return np.ascontiguousarray(array, dtype=np.float32)


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return array.astype(np.float32) / 65535.0  # also 16-bit content in wider integers (PIL mode "I")
    return array.astype(np.float32) / (255.0 if np.issubdtype(array.dtype, np.integer) else 1.0)


class Des4ImageProcessor(BaseImageProcessor):
    r"""Prepares images for [`Des4ForSemanticSegmentation`]: no resizing by default (DeS4 segments at the image's own
    size), else to ``size`` = ``{"height", "width"}`` or ``{"shortest_edge"}``; the normalisation the encoder's
    weights expect."""

    model_input_names = ["pixel_values"]

    def __init__(self, do_resize: bool = False, size: dict[str, int] | None = None, do_normalize: bool = True,
                 image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 image_std: Sequence[float] = IMAGENET_DEFAULT_STD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else None
        self.do_normalize = do_normalize
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or not all(
                math.isfinite(v) for v in self.image_mean + self.image_std) or min(self.image_std) <= 0:
            raise ValueError(f"image_mean={self.image_mean} and image_std={self.image_std}: three finite values each, "
                             "with positive std (fix preprocessor_config.json).")
        if do_resize:
            _check_size(self.size)

    @classmethod
    def for_encoder(cls, backbone: str, encoder_weights: str | None, **kwargs: Any) -> Des4ImageProcessor:
        """A processor with the normalisation that ``encoder_weights`` were trained with."""
        from .pretrained import encoder_normalization

        mean, std = encoder_normalization(backbone, encoder_weights)
        return cls(image_mean=mean, image_std=std, **kwargs)

    def preprocess(self, images: Any, do_resize: bool | None = None,  # type: ignore[override]
                   size: dict[str, int] | None = None, do_normalize: bool | None = None,
                   return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """One image or a list of same-size images → ``BatchFeature(pixel_values=(B, 3, H, W))``."""
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else size
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        tensors = [self._to_tensor(image, do_resize, size, do_normalize) for image in images]
        shapes = {tuple(t.shape[-2:]) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"images have different sizes {sorted(shapes)}: process them one at a time, or set "
                             "do_resize=True with a fixed size={'height': H, 'width': W}.")
        pixel_values = tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)  # no copy of a large image
        if return_tensors in (None, "pt"):
            return BatchFeature(data={"pixel_values": pixel_values}, tensor_type="pt")
        if return_tensors == "np":
            return BatchFeature(data={"pixel_values": pixel_values.numpy()}, tensor_type="np")
        raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' or 'np'.")

    def _to_tensor(self, image: Any, do_resize: bool, size: dict[str, int] | None, do_normalize: bool) -> Tensor:
        tensor = torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)
        if do_resize:
            _check_size(size)
            assert size is not None
            tensor = F.interpolate(tensor[None], size=_target_size(tuple(tensor.shape[-2:]), size), mode="bilinear",
                                   align_corners=False, antialias=True)[0]
        if do_normalize:  # in place: the array is this call's own copy
            tensor = tensor.sub_(torch.tensor(self.image_mean).view(3, 1, 1)).div_(torch.tensor(self.image_std).view(3, 1, 1))
        return tensor.contiguous()

    def post_process_semantic_segmentation(self, outputs: Any,
                                           target_sizes: Sequence[tuple[int, int]] | None = None) -> list[Tensor]:
        """Per image, a (H, W) int64 label map; logits are resized (bilinear) to ``target_sizes`` first."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if target_sizes is not None and len(target_sizes) != logits.shape[0]:
            raise ValueError(f"got {len(target_sizes)} target sizes for {logits.shape[0]} images")
        label_maps = []
        for index in range(logits.shape[0]):
            image_logits = logits[index : index + 1]
            if target_sizes is not None and tuple(target_sizes[index]) != tuple(image_logits.shape[-2:]):
                image_logits = F.interpolate(image_logits.float(), size=tuple(int(v) for v in target_sizes[index]),
                                             mode="bilinear", align_corners=False)
            label_maps.append(image_logits[0].argmax(dim=0))
        return label_maps


def _check_size(size: dict[str, int] | None) -> None:
    if not size or not (set(size) == {"height", "width"} or set(size) == {"shortest_edge"}):
        raise ValueError(f"size={size!r}: use {{'height': H, 'width': W}} or {{'shortest_edge': S}}.")


def _target_size(current: tuple[int, ...], size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        height, width = current
        scale = size["shortest_edge"] / min(height, width)
        return round(height * scale), round(width * scale)
    return size["height"], size["width"]
