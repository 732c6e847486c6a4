"""Weak / strong views and CutMix boxes on tensors (torchvision.transforms.v2.functional).

Weak: random scale, crop (mask padded with 255) and flip; strong: the weak crop plus colour jitter, grayscale and
blur (the same geometry); CutMix: one box per sample, pasted from another sample by the step. Every draw uses a
generator seeded per item from ``(seed, epoch, index)``, so a resumed run reproduces it. Defaults follow U2PL /
UniMatch **[choice]**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms.v2 import InterpolationMode

from .datasets import IGNORE_INDEX


@dataclass(frozen=True)
class AugmentConfig:
    """All augmentation knobs in one place (serialisable into a training config)."""

    crop_size: int = 513
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutmix_prob: float = 1.0
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    cutmix_ratio: tuple[float, float] = (0.3, 1 / 0.3)
    strong_views: int = 1  # 2: a second strong view with its own photometry and box (UniMatch) [choice, option]

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size={self.crop_size} must be positive.")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range={self.scale_range} must satisfy 0 < low <= high.")
        if self.strong_views not in (1, 2):
            raise ValueError(f"strong_views={self.strong_views}: 1 or 2")
        a_lo, a_hi = self.cutmix_area
        if not 0 < a_lo <= a_hi <= 1:
            raise ValueError(f"cutmix_area={self.cutmix_area} must satisfy 0 < low <= high <= 1.")


@dataclass(frozen=True)
class Geometry:
    """One draw of the weak geometry, so it can be replayed on another view or a mask."""

    scale: float
    top: int
    left: int
    flip: bool
    crop_size: int


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index, stream)`` with a hash, not a sum, so that
    neighbouring items / epochs do not get correlated seeds."""
    import numpy as np

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator).item())


def _coin(generator: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=generator).item()) < p


def _randint(generator: torch.Generator, high_exclusive: int) -> int:
    return int(torch.randint(0, max(1, high_exclusive), (), generator=generator).item())


def sample_geometry(height: int, width: int, config: AugmentConfig, generator: torch.Generator) -> Geometry:
    """Draw scale, crop offset (in the scaled, bottom/right-padded image) and flip."""
    scale = _uniform(generator, *config.scale_range)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    crop = config.crop_size
    top = _randint(generator, max(h, crop) - crop + 1)
    left = _randint(generator, max(w, crop) - crop + 1)
    flip = _coin(generator, config.hflip_prob)
    return Geometry(scale, top, left, flip, crop)


def apply_geometry(image: torch.Tensor, mask: torch.Tensor | None,
                   geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Scale, crop and flip a uint8 (3, H, W) image and (H, W) mask: the crops (padded with 0 / 255) and the
    padding mask (True = padding)."""
    _, height, width = image.shape
    h, w = max(1, round(height * geometry.scale)), max(1, round(width * geometry.scale))
    crop, top, left = geometry.crop_size, geometry.top, geometry.left
    # Resize the whole image, then copy the crop window into a padded canvas (no pad op needed).
    bottom, right = min(h, top + crop), min(w, left + crop)
    if (h, w) != (height, width):
        image = F.resize(image, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        if mask is not None:
            mask = F.resize(mask[None], [h, w], interpolation=InterpolationMode.NEAREST_EXACT)[0]
    out_image = torch.zeros((image.shape[0], crop, crop), dtype=image.dtype)
    out_image[:, : bottom - top, : right - left] = image[:, top:bottom, left:right]
    padding = torch.ones((crop, crop), dtype=torch.bool)
    padding[: bottom - top, : right - left] = False
    out_mask = None
    if mask is not None:
        out_mask = torch.full((crop, crop), IGNORE_INDEX, dtype=mask.dtype)
        out_mask[: bottom - top, : right - left] = mask[top:bottom, left:right]
    if geometry.flip:
        out_image, padding = out_image.flip(-1), padding.flip(-1)
        out_mask = out_mask.flip(-1) if out_mask is not None else None
    return out_image, out_mask, padding


def strong_photometric(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter (random order), random grayscale and Gaussian blur on a uint8 ``(3, H, W)`` crop: torchvision's
    own operations (as ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``), their parameters drawn from
    ``generator``. Returns uint8."""
    x = image
    if _coin(generator, config.jitter_prob):
        strengths = (config.brightness, config.contrast, config.saturation, config.hue)
        factors = [_uniform(generator, max(0.0, 1 - s), 1 + s) for s in strengths[:3]]
        factors.append(_uniform(generator, -config.hue, config.hue))
        operations = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for op in torch.randperm(4, generator=generator).tolist():
            if strengths[op] > 0:
                x = operations[op](x, factors[op])
    if _coin(generator, config.grayscale_prob):
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if _coin(generator, config.blur_prob):
        sigma = _uniform(generator, *config.blur_sigma)
        size = 2 * max(1, math.ceil(3 * sigma)) + 1  # ±3σ
        x = F.gaussian_blur(x, [size, size], [sigma, sigma])
    return x


def cutmix_box(size: int | tuple[int, int], config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A boolean ``(H, W)`` mask, True inside one box of area ~ U(cutmix_area) and aspect ~ U(cutmix_ratio), redrawn
    from the same generator until it fits (all False with probability 1 - cutmix_prob)."""
    height, width = (size, size) if isinstance(size, int) else size
    mask = torch.zeros((height, width), dtype=torch.bool)
    if not _coin(generator, config.cutmix_prob):
        return mask
    box_h = box_w = 1
    for _ in range(100):
        area = _uniform(generator, *config.cutmix_area) * height * width
        ratio = _uniform(generator, *config.cutmix_ratio)
        box_w, box_h = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
        if 1 <= box_w <= width and 1 <= box_h <= height:
            break
    box_w, box_h = min(max(box_w, 1), width), min(max(box_h, 1), height)
    top = _randint(generator, height - box_h + 1)
    left = _randint(generator, width - box_w + 1)
    mask[top : top + box_h, left : left + box_w] = True
    return mask


def normalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` → float32 ``(x / 255 - mean) / std`` (mean/std as ``(3, 1, 1)``)."""
    return image.to(torch.float32).div_(255.0).sub_(mean).div_(std)
