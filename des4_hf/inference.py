"""Inference shared by prediction, evaluation and benchmarks: the precision choice, whole-image / sliding-window /
flip / multi-scale logits, palettes and overlays."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionChoice:
    """What to run inference in: an autocast dtype (None = plain fp32) and the memory format."""

    name: str
    autocast_dtype: torch.dtype | None
    channels_last: bool


def resolve_precision(precision: str, device: torch.device | str, channels_last: bool | None = None, *,
                      model: nn.Module | None = None, sample: Tensor | None = None,
                      training: bool = False) -> PrecisionChoice:
    """``auto|fp32|bf16|fp16`` → a concrete choice for ``device``: the package's one precision resolver.

    ``auto`` is bf16 (fp16 without bf16) on CUDA. On a CPU, capability flags never decide it (bf16 measured slower
    even with native support): given ``model`` and a ``sample`` batch, :func:`probe_precision` times the candidates
    (forward, or forward + backward when ``training``) and keeps the fastest, cached per CPU and network; without
    them, or with ``DES4_PRECISION_PROBE=0``, it is fp32 + channels_last."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision == "auto" and device.type == "cpu" and model is not None and sample is not None and probe_wanted():
        return probe_precision(model, sample, training=training, channels_last=channels_last)
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision='fp16' is not supported on the CPU: use 'fp32' or 'bf16'.")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return PrecisionChoice(precision, dtype, True if channels_last is None else channels_last)


#: Longest side (pixels) above which des4-predict and the web demo segment through the sliding window (of
#: ``SLIDING_WINDOW_CROP`` crops): a whole 9000² photo would need gigabytes of activations at once.
SLIDING_WINDOW_ABOVE = 1024
SLIDING_WINDOW_CROP = 512

PROBE_CACHE = "precision_probe.json"
PROBE_SIZE = 512  # inference probes time one image of this size (the choice barely depends on it), cached once


def probe_wanted() -> bool:
    """False where ``DES4_PRECISION_PROBE=0`` asks for the default (fp32 + channels_last) without timing."""
    return os.environ.get("DES4_PRECISION_PROBE", "1") != "0"


def training_probe(build: Any, crop_size: int, channels_last: bool) -> dict[str, Any]:
    """What :func:`resolve_precision` times for training ``auto`` on a CPU: a throwaway network from ``build()`` (its
    weights random: speed does not depend on them) and two crops of the run's size, fwd + bwd. Nothing is built
    where no probe runs: several processes keep the default (fp32, no agreement needed), or
    ``DES4_PRECISION_PROBE=0``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not probe_wanted():
        return {}
    sample = torch.randn(2, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(0))
    return {"model": build(), "sample": sample, "training": True, "channels_last": channels_last}


def inference_probe_sample(size: int = PROBE_SIZE) -> Tensor:
    """The batch :func:`resolve_precision` times inference on: one random ``size``² image."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), recorded with every timing: figures compare only on one CPU."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's (first 4-d) weights are in channels_last memory format."""
    weight = next((tensor for tensor in model.parameters() if tensor.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _network_key(model: nn.Module) -> str:
    """The network's identity for the cache: its class and every tensor's name, shape and dtype (not values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
    return digest.hexdigest()[:16]


def _time_candidate(model: nn.Module, sample: Tensor, choice: PrecisionChoice, training: bool,
                    give_up_after: float) -> float:
    """Median seconds of 3 timed calls after one warm-up; ``inf`` when the warm-up alone took ``give_up_after``."""
    memory_format = torch.channels_last if choice.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    inputs = sample.contiguous(memory_format=memory_format)

    def call() -> float:
        started = time.perf_counter()
        if training:
            model.zero_grad(set_to_none=True)
            with autocast(inputs.device, choice.autocast_dtype):
                logits = model(pixel_values=inputs).logits
            logits.float().square().mean().backward()
        else:
            with torch.inference_mode(), autocast(inputs.device, choice.autocast_dtype):
                model(pixel_values=inputs)
        return time.perf_counter() - started

    if call() > give_up_after:  # bf16 without native support: 6–30× slower, no need to time it three times
        return math.inf
    return sorted(call() for _ in range(3))[1]


def probe_precision(model: nn.Module, sample: Tensor, training: bool = False, channels_last: bool | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> PrecisionChoice:
    """The fastest of fp32 and bf16 autocast (and, unless ``channels_last`` is given, of NCHW and channels_last) for
    this ``model`` on this CPU, timed on ``sample`` and cached in ``<des4 cache>/precision_probe.json`` by CPU model,
    thread count, torch version, network and input shape. The model keeps its memory format and train/eval mode and
    is left without gradients; a ``training`` probe moves its BatchNorm statistics, so give it a throwaway copy."""
    from .utils import atomic_write_json, des4_cache_dir

    formats = (False, True) if channels_last is None else (channels_last,)
    candidates = [PrecisionChoice(name, dtype, cl) for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
                  for cl in formats]
    key = "|".join([cpu_model(), f"threads={torch.get_num_threads()}", f"torch={torch.__version__}",
                    "train" if training else "infer", _network_key(model), "x".join(map(str, sample.shape))])
    path = des4_cache_dir(cache_dir) / PROBE_CACHE
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    cache = cache if isinstance(cache, dict) else {}
    known = cache.get(key, {}).get("seconds", {}) if isinstance(cache.get(key), dict) else {}
    seconds = {label: math.inf if value == "gave up" else float(value) for label, value in known.items()
               if isinstance(value, (int, float)) or value == "gave up"}
    missing = [candidate for candidate in candidates if _label(candidate) not in seconds]
    if missing:  # variants timed before for this CPU and network (e.g. by a run with another format) are reused
        was_training, was_channels_last = model.training, is_channels_last(model)
        model.train(training)
        try:
            for candidate in missing:
                best = min(seconds.values(), default=math.inf)
                seconds[_label(candidate)] = _time_candidate(model, sample, candidate, training, 3 * best + 1.0)
        finally:
            model.zero_grad(set_to_none=True)
            model.to(memory_format=torch.channels_last if was_channels_last else torch.contiguous_format)
            model.train(was_training)
        cache[key] = {"seconds": {k: (round(v, 4) if math.isfinite(v) else "gave up") for k, v in seconds.items()}}
        with contextlib.suppress(OSError):  # a read-only cache folder only costs the next probe
            atomic_write_json(path, cache)
    choice = min(candidates, key=lambda c: seconds[_label(c)])
    if missing:
        logger.info("precision auto: %s → %s (timed on this CPU, cached in %s)", ", ".join(
            f"{_label(c)} {seconds[_label(c)] * 1e3:.0f} ms" if math.isfinite(seconds[_label(c)])
            else f"{_label(c)} gave up" for c in candidates), _label(choice), path)
    return choice


def _label(choice: PrecisionChoice) -> str:
    return f"{choice.name}-{'channels_last' if choice.channels_last else 'nchw'}"


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op for fp32."""
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype is not None \
            else contextlib.nullcontext():
        yield


def _model_logits(model: nn.Module, pixel_values: Tensor) -> Tensor:
    return model(pixel_values=pixel_values).logits.float()


def _window_grid(crop_size: int | tuple[int, int], stride: int | tuple[int, int]) -> tuple[int, int, int, int]:
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    if stride_h < 1 or stride_w < 1 or stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride} must be between 1 and the crop size {crop_size}")
    return crop_h, crop_w, stride_h, stride_w


def _add_window_row(model: nn.Module, pixel_values: Tensor, top: int, crop: tuple[int, int], stride_w: int,
                    logits_sum: Tensor | None, counts: Tensor, row_offset: int) -> Tensor:
    """Add the logits of the windows whose top edge is ``top`` into ``logits_sum`` (its row 0 is image row
    ``row_offset``; made on first use), left to right."""
    crop_h, crop_w = crop
    for left in _window_starts(pixel_values.shape[-1], crop_w, stride_w):
        window_logits = _model_logits(model, pixel_values[..., top:top + crop_h, left:left + crop_w])
        if logits_sum is None:
            logits_sum = torch.zeros(pixel_values.shape[0], window_logits.shape[1], counts.shape[-2],
                                     counts.shape[-1], device=pixel_values.device)
        rows = slice(top - row_offset, top - row_offset + window_logits.shape[-2])
        logits_sum[..., rows, left:left + crop_w] += window_logits
        counts[..., rows, left:left + crop_w] += 1
    assert logits_sum is not None
    return logits_sum


def sliding_window_logits(model: nn.Module, pixel_values: Tensor, crop_size: int | tuple[int, int],
                          stride: int | tuple[int, int]) -> Tensor:
    """Logits of (B, 3, H, W) from overlapping crops, averaged where they overlap; the last window of a row or
    column is aligned with the border, and an image smaller than the crop is run whole."""
    crop_h, crop_w, stride_h, stride_w = _window_grid(crop_size, stride)
    height, width = pixel_values.shape[-2:]
    if height <= crop_h and width <= crop_w:
        return _model_logits(model, pixel_values)
    logits_sum: Tensor | None = None
    counts = torch.zeros(1, 1, height, width, device=pixel_values.device)
    for top in _window_starts(height, crop_h, stride_h):
        logits_sum = _add_window_row(model, pixel_values, top, (crop_h, crop_w), stride_w, logits_sum, counts, 0)
    return logits_sum / counts  # type: ignore[operator]


def sliding_window_labels(model: nn.Module, pixel_values: Tensor, crop_size: int | tuple[int, int],
                          stride: int | tuple[int, int]) -> Tensor:
    """The argmax of :func:`sliding_window_logits` ((B, H, W) int64, the same labels), in bounded memory: rows are
    decided as soon as no later window covers them, so only one band of windows' logits (crop height × W) is held,
    never the whole image's C × H × W."""
    crop_h, crop_w, stride_h, stride_w = _window_grid(crop_size, stride)
    batch, _, height, width = pixel_values.shape
    if height <= crop_h and width <= crop_w:
        return _model_logits(model, pixel_values).argmax(1)
    labels = torch.empty(batch, height, width, dtype=torch.int64, device=pixel_values.device)
    tops = _window_starts(height, crop_h, stride_h)
    band_sum: Tensor | None = None
    band_counts = torch.zeros(1, 1, min(crop_h, height), width, device=pixel_values.device)
    for index, top in enumerate(tops):  # the band holds image rows [top, top + crop_h)
        band_sum = _add_window_row(model, pixel_values, top, (crop_h, crop_w), stride_w, band_sum, band_counts, top)
        done = (tops[index + 1] if index + 1 < len(tops) else height) - top  # rows no later window reaches
        labels[:, top:top + done] = (band_sum[..., :done, :] / band_counts[..., :done, :]).argmax(1)
        if index + 1 < len(tops):  # slide the band down: keep the overlap, zero the new rows
            band_sum = torch.cat([band_sum[..., done:, :], band_sum.new_zeros(*band_sum.shape[:2], done, width)], 2)
            band_counts = torch.cat([band_counts[..., done:, :], band_counts.new_zeros(1, 1, done, width)], 2)
    return labels


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
    target_sizes = [(item.size[1], item.size[0]) for item in images]
    if sliding_window is not None and all(tuple(pixel_values.shape[-2:]) == size for size in target_sizes):
        with torch.inference_mode(), autocast(device, autocast_dtype):  # labels band by band: bounded memory
            labels = sliding_window_labels(model, pixel_values, *sliding_window)
        return [label_map.to(torch.uint8).cpu().numpy() for label_map in labels]
    with torch.inference_mode(), autocast(device, autocast_dtype):
        logits = predict_logits(model, pixel_values, sliding_window=sliding_window)
    # Resizes back to the image size when the processor resized the input; a no-op otherwise.
    label_maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=target_sizes)
    return [label_map.to(torch.uint8).cpu().numpy() for label_map in label_maps]
