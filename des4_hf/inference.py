"""Inference shared by prediction, evaluation and benchmarks: the precision choice, whole-image / sliding-window /
flip / multi-scale logits, palettes and overlays."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionChoice:
    """What to run inference in: an autocast dtype (None = plain fp32) and the memory format."""

    name: str
    autocast_dtype: torch.dtype | None
    channels_last: bool


def resolve_precision(precision: str, device: torch.device | str, channels_last: bool | None = None) -> PrecisionChoice:
    """``auto|fp32|bf16|fp16`` → a concrete choice for ``device``: the package's one precision resolver. ``auto`` is
    bf16 (fp16 without bf16) on CUDA and fp32 + channels_last on any CPU, where bf16 measured slower even with native
    support (``reports/benchmark.md``): capability flags never decide it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision='fp16' is not supported on the CPU: use 'fp32' or 'bf16'.")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return PrecisionChoice(precision, dtype, True if channels_last is None else channels_last)


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op for fp32."""
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype is not None \
            else contextlib.nullcontext():
        yield


def _model_logits(model: nn.Module, pixel_values: Tensor) -> Tensor:
    return model(pixel_values=pixel_values).logits.float()


def sliding_window_logits(model: nn.Module, pixel_values: Tensor, crop_size: int | tuple[int, int],
                          stride: int | tuple[int, int]) -> Tensor:
    """Logits of (B, 3, H, W) from overlapping crops, averaged where they overlap; the last window of a row or
    column is aligned with the border, and an image smaller than the crop is run whole."""
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    if stride_h < 1 or stride_w < 1 or stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride} must be between 1 and the crop size {crop_size}")
    batch, _, height, width = pixel_values.shape
    if height <= crop_h and width <= crop_w:
        return _model_logits(model, pixel_values)
    logits_sum: Tensor | None = None
    counts = torch.zeros(1, 1, height, width, device=pixel_values.device)
    for top in _window_starts(height, crop_h, stride_h):
        for left in _window_starts(width, crop_w, stride_w):
            window = (..., slice(top, top + crop_h), slice(left, left + crop_w))
            window_logits = _model_logits(model, pixel_values[window])
            if logits_sum is None:
                logits_sum = torch.zeros(batch, window_logits.shape[1], height, width, device=pixel_values.device)
            logits_sum[window] += window_logits
            counts[window] += 1
    return logits_sum / counts  # type: ignore[operator]


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    steps = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(steps)})


def predict_logits(model: nn.Module, pixel_values: Tensor, *, sliding_window: tuple[int, int] | None = None,
                   flip: bool = False, scales: Sequence[float] = (1.0,)) -> Tensor:
    """Test-time logits at the input's size: optional sliding window (crop, stride), flip and scales, averaged."""
    height, width = pixel_values.shape[-2:]
    total: Tensor | None = None
    views = 0
    for scale in scales:
        scaled = pixel_values if scale == 1.0 else F.interpolate(
            pixel_values, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            logits = _model_logits(model, inputs) if sliding_window is None else \
                sliding_window_logits(model, inputs, sliding_window[0], sliding_window[1])
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            views += 1
    return total / views  # type: ignore[operator]


def color_palette(num_classes: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ((N ≥ 256, 3) uint8), as in VOC's own PNGs (the one the data loaders decode)."""
    from .data.datasets import voc_palette

    return voc_palette(max(num_classes, 256))


def overlay(image: Image.Image, label_map: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None) -> Image.Image:
    """Blend the coloured label map over the RGB image (``alpha`` = weight of the colours)."""
    palette = palette if palette is not None else color_palette()
    colours = palette[label_map.astype(np.int64)]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colours.astype(np.float32)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def segment_images(model: nn.Module, processor: Any, images: list[Image.Image], device: torch.device,
                   autocast_dtype: torch.dtype | None, channels_last: bool,
                   sliding_window: tuple[int, int] | None) -> list[np.ndarray]:
    """(H, W) uint8 label maps, one per image, at each image's own size (same-size images per call)."""
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(device)
    if channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, autocast_dtype):
        logits = predict_logits(model, pixel_values, sliding_window=sliding_window)
    # Resizes back to the image size when the processor resized the input; a no-op otherwise.
    target_sizes = [(item.size[1], item.size[0]) for item in images]
    label_maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=target_sizes)
    return [label_map.to(torch.uint8).cpu().numpy() for label_map in label_maps]
