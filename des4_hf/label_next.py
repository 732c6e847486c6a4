"""Which images to label next, from a trained model: the ranking des4-suggest writes and the web demo shows. One
teacher pass per image, scored and picked by :mod:`des4_hf.method.acquisition`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .inference import autocast
from .loading import display_rgb, uncertainty_image
from .method.acquisition import (
    ImageStatistics,
    class_weights,
    image_statistics,
    select,
    uncertainty_scores,
    unsure_classes,
)
from .method.losses import entropy

THUMB = 240  # width of a suggestion's photo and map


@dataclass
class Ranking:
    """The pool's class-balanced uncertainty ``scores`` (N,), the ``picks`` (indices, in the order picked), every
    image by score (``order``) and, per image, the names of the classes it is least sure about."""

    scores: Tensor
    picks: list[int]
    order: list[int]
    unsure: list[list[str]]


def teacher_pass(model: Any, processor: Any, image: Image.Image, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """The model's logits (1, C, H, W) and pixel embeddings (1, d, h, w) of one image."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
    with torch.no_grad(), autocast(device, dtype):
        output = model(pixel_values, output_hidden_states=True)
    return output.logits.float(), output.hidden_states[0].float()


def rank_images(model: Any, processor: Any, images: Iterable[Image.Image], budget: int, device: torch.device,
                dtype: torch.dtype | None = None, *, balanced: bool = True, diversity: bool = True) -> Ranking:
    """Score each image (read lazily from ``images``) and pick ``budget`` of them: by class-balanced uncertainty
    (``balanced``; else plain entropy), spread over the pooled embeddings (``diversity``; else the top scores)."""
    parts = [image_statistics(*teacher_pass(model, processor, image, device, dtype)) for image in images]
    statistics = ImageStatistics(*(torch.cat([getattr(p, name) for p in parts]) for name in
                                   ("entropy_by_class", "pixels_by_class", "embedding")))
    weights = class_weights(statistics.pixels_by_class, balanced)
    scores = uncertainty_scores(statistics, weights)
    picks = select(scores, statistics.embedding if diversity else None, budget)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Ranking(scores, picks, scores.argsort(descending=True).tolist(),
                   [[names[c] for c in row] for row in unsure_classes(statistics, weights)])


def suggestion_tile(model: Any, processor: Any, image: Image.Image, caption: str, device: torch.device,
                    dtype: torch.dtype | None = None) -> Image.Image:
    """The image beside its uncertainty map (brighter = less sure), ``caption`` above, :data:`THUMB` px each."""
    logits, _ = teacher_pass(model, processor, image, device, dtype)
    heat = uncertainty_image(entropy(logits.softmax(1))[0].cpu().numpy(), logits.shape[1])
    height = round(image.height * THUMB / image.width)
    tile = Image.new("RGB", (2 * THUMB, height + 16), "white")
    tile.paste(display_rgb(image).resize((THUMB, height)), (0, 16))
    tile.paste(heat.resize((THUMB, height)), (THUMB, 16))
    ImageDraw.Draw(tile).text((4, 2), caption, fill="black")
    return tile
