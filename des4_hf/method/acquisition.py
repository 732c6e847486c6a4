"""Which unlabeled images to label next (des4-suggest; not in the paper): each image scored from one teacher pass by
what the model does not yet know, weighted toward the rare classes by the class ratio R (Sec. 3.3), and picked
spread out over pooled pixel embeddings so that near-duplicate video frames are not all chosen."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import entropy
from .sampling import class_ratio


@dataclass
class ImageStatistics:
    """Per image of a batch: the Eq. 9 entropy summed over the pixels predicted as each class (B, C), those pixels'
    counts (B, C), and the L2-normalised mean pixel embedding (B, d)."""

    entropy_by_class: Tensor
    pixels_by_class: Tensor
    embedding: Tensor


@torch.no_grad()
def image_statistics(logits: Tensor, embeddings: Tensor) -> ImageStatistics:
    """From a teacher's ``logits`` (B, C, H, W) and pixel ``embeddings`` (B, d, h, w) of a batch."""
    probabilities = logits.float().softmax(1)
    pixel_entropy, predicted = entropy(probabilities), probabilities.argmax(1)
    one_hot = F.one_hot(predicted, logits.shape[1]).flatten(1, 2).float()  # (B, HW, C)
    return ImageStatistics(torch.einsum("bp,bpc->bc", pixel_entropy.flatten(1), one_hot), one_hot.sum(1),
                           F.normalize(embeddings.float().mean((2, 3)), dim=1))


def class_weights(pixels_by_class: Tensor, balanced: bool = True) -> Tensor:
    """R over the pool's predicted pixels (rarest class 1, frequent classes less), or ones when not ``balanced``."""
    totals = pixels_by_class.sum(0)
    return class_ratio(totals.round().long()) if balanced else torch.ones_like(totals)


def uncertainty_scores(statistics: ImageStatistics, weights: Tensor) -> Tensor:
    """Class-balanced uncertainty per image: ``Σ_c w_c · (entropy of the pixels predicted c) / pixels``."""
    pixels = statistics.pixels_by_class.sum(1).clamp_min(1)
    return (statistics.entropy_by_class * weights).sum(1) / pixels


def unsure_classes(statistics: ImageStatistics, weights: Tensor, top: int = 3) -> list[list[int]]:
    """Per image, the classes holding most of its weighted uncertainty (at most ``top``, none without any)."""
    weighted = statistics.entropy_by_class * weights
    order = weighted.argsort(1, descending=True)[:, :top]
    return [[int(c) for c in row if weighted[i, c] > 0] for i, row in enumerate(order)]


def select(scores: Tensor, embeddings: Tensor | None, budget: int) -> list[int]:
    """``budget`` images: the highest scores, or with ``embeddings`` a greedy k-center pick weighted by score (each
    next image maximises score × distance to the nearest one chosen), which never takes an image identical to a
    chosen one while a distinct one remains."""
    if not 0 < budget <= scores.numel():
        raise ValueError(f"budget {budget}: between 1 and the {scores.numel()} images of the pool")
    if embeddings is None:
        return scores.argsort(descending=True)[:budget].tolist()
    scores = scores.double().clamp_min(1e-12)  # a score of 0 must not hide how far an image is
    chosen = [int(scores.argmax())]
    nearest = torch.cdist(embeddings.double(), embeddings[chosen].double())[:, 0]
    while len(chosen) < budget:
        gain = scores * nearest
        gain[chosen] = -1.0
        pick = int(gain.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, torch.cdist(embeddings.double(), embeddings[[pick]].double())[:, 0])
    return chosen
