"""Pseudo labels of the unlabeled batch (SPEC §2 steps 4–5): the teacher's argmax, the per-class quantile threshold
(SPEC §2.7 [choice]) and CutMix of the strong view."""

from __future__ import annotations

import torch
from torch import Tensor


def low_confidence_mask(confidence: Tensor, pseudo_labels: Tensor, quantile: float, ignore_index: int) -> Tensor:
    """Pixels below the ``quantile`` of their pseudo class's confidences in this batch (SPEC §2.7 [choice]): unlike
    a fixed threshold, which cosine logits may never pass, it keeps the surest ``1 − quantile`` of every class."""
    drop = torch.zeros_like(pseudo_labels, dtype=torch.bool)
    for cls in torch.unique(pseudo_labels[pseudo_labels != ignore_index]).tolist():
        members = pseudo_labels == cls
        threshold = torch.quantile(confidence[members].float(), quantile)
        drop |= members & (confidence < threshold)
    return drop


def pseudo_labels(teacher_logits: Tensor, padding_mask: Tensor, quantile: float | None, ignore_index: int,
                  threshold: float | None = None) -> Tensor:
    """Step 4: the teacher's argmax class per pixel, ``ignore_index`` on padding, with ``threshold`` on pixels whose
    confidence is below it (a fixed threshold, SPEC §2.9 option) and, with ``quantile``, on each class's least
    confident pixels among the rest."""
    confidence, labels = teacher_logits.float().softmax(1).max(1)
    labels = labels.masked_fill(padding_mask, ignore_index)
    if threshold is not None:
        labels = labels.masked_fill(confidence < threshold, ignore_index)
    if quantile is not None:
        labels = labels.masked_fill(low_confidence_mask(confidence, labels, quantile, ignore_index), ignore_index)
    return labels


def cutmix(strong_images: Tensor, labels: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Step 5: each sample's ``box`` (B, H, W) filled from the next sample of the batch, images and pseudo labels
    alike (with a batch of one the box comes from the image itself, i.e. no mixing)."""
    partner = torch.roll(torch.arange(strong_images.shape[0], device=strong_images.device), shifts=1)
    return (torch.where(box[:, None], strong_images[partner], strong_images),
            torch.where(box, labels[partner], labels))
