"""DeS4 losses (Sec. 3.2, SPEC §1, §2.3) as pure tensor functions: entropy (Eq. 9), class-balanced cross-entropy
and the teacher decoder's unbiased supervised loss (Eq. 7–8); the prototype logits (Eq. 6) are the model's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling_des4 import segmentation_loss

CLASS_WEIGHTINGS = ("none", "median-frequency", "sqrt-median-frequency")


def entropy(probs: Tensor, dim: int = 1, eps: float = 1e-10) -> Tensor:
    """Eq. 9: ``H(z) = −Σ_i z_i · log(z_i + ε)`` of probabilities along ``dim``, which the result drops."""
    return -(probs * torch.log(probs + eps)).sum(dim)


def _check_shapes(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() < 2 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match: expected logits "
                         "(B, C, H, W) with labels (B, H, W) (or (N, C) with (N,)). Upsample the logits to the label "
                         "size first, e.g. F.interpolate(logits, size=labels.shape[-2:], mode='bilinear').")


def class_balancing_weights(pixel_counts: Tensor, method: str) -> Tensor | None:
    """Per-class cross-entropy weights from the labeled pixel counts (not in the paper): ``median-frequency``
    (Eigen & Fergus 2015, as SegNet on CamVid) ``w_c = median(f) / f_c`` over the classes that occur, its square
    root ``sqrt-median-frequency``, or ``none`` (None). A class without labeled pixels gets 1."""
    if method not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting {method!r}: choose one of {', '.join(CLASS_WEIGHTINGS)}")
    if method == "none":
        return None
    counts = torch.as_tensor(pixel_counts).detach().to(torch.float64).flatten()
    if (counts < 0).any() or not (counts > 0).any():
        raise ValueError(f"pixel_counts must be non-negative with at least one labeled pixel, got {counts.tolist()}")
    present = counts > 0
    frequency = counts / counts.sum()
    weights = torch.ones_like(frequency)
    weights[present] = frequency[present].quantile(0.5) / frequency[present]  # even count: mean of the middle two
    if method == "sqrt-median-frequency":
        weights = weights.sqrt()
    return weights.float()


def _pixel_class_weights(class_weights: Tensor, logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Each pixel's class weight, float32 in the shape of ``labels``; 0 at ignored pixels."""
    if class_weights.shape != (logits.shape[1],):
        raise ValueError(f"class_weights has shape {tuple(class_weights.shape)}; expected ({logits.shape[1]},), "
                         "one weight per class")
    valid = labels != ignore_index
    return class_weights.to(device=logits.device, dtype=torch.float32)[labels.masked_fill(~valid, 0)] * valid


def cross_entropy_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255,
                       class_weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels (``L_ce``): 0, still in the graph, when all are ignored, where
    ``F.cross_entropy`` gives NaN. With ``class_weights`` (C,), the weighted mean ``Σ w·CE / Σ w``."""
    _check_shapes(logits, labels)
    if class_weights is None:
        return segmentation_loss(logits, labels, ignore_index)
    labels = labels.long()
    weights = _pixel_class_weights(class_weights, logits, labels, ignore_index)
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return (weights * per_pixel).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def pixel_weights(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Eq. 7 weights ``W_i = (1 − max softmax)² / Σ (1 − max softmax)²`` per image, detached, 0 at ignored pixels.
    ``1 − max softmax`` is ``−expm1(max log_softmax)``, so confident pixels keep tiny non-zero weights; an image
    whose weights all underflow falls back to uniform weights (their limit)."""
    _check_shapes(logits, labels)
    labels = labels.long()
    valid = labels != ignore_index
    max_log_prob = F.log_softmax(logits.float(), dim=1).amax(dim=1)
    weights = torch.expm1(max_log_prob).square() * valid  # (1 − p_max)² = expm1(log p_max)²
    batch = weights.shape[0]
    flat_w, flat_valid = weights.reshape(batch, -1), valid.reshape(batch, -1)
    total = flat_w.sum(1, keepdim=True)
    uniform = flat_valid / flat_valid.sum(1, keepdim=True).clamp_min(1)
    normalised = torch.where(total > 0, flat_w / total.clamp_min(torch.finfo(flat_w.dtype).tiny), uniform)
    return normalised.reshape(weights.shape)


def unbiased_supervised_loss(logits: Tensor, labels: Tensor, reweight: bool = True, ignore_index: int = 255,
                             class_weights: Tensor | None = None) -> Tensor:
    """``L_l^ub`` of Eq. 8 (SPEC §2.3): per image ``Σ_j W_ij · CE_ij`` with the Eq. 7 weights, averaged over the
    images with a valid pixel. ``reweight=False`` (ablation "P.R.") is the plain mean cross-entropy;
    ``class_weights`` (not in the paper) multiply the Eq. 7 weights, renormalised per image."""
    if not reweight:
        return cross_entropy_loss(logits, labels, ignore_index, class_weights)
    _check_shapes(logits, labels)
    if logits.dim() != 4:
        raise ValueError(f"reweight=True needs per-image logits (B, C, H, W), got {tuple(logits.shape)}")
    labels = labels.long()
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    weights = pixel_weights(logits, labels, ignore_index)
    if class_weights is not None:
        weights = weights * _pixel_class_weights(class_weights, logits, labels, ignore_index)
        weights = weights / weights.sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    per_image = (weights * per_pixel).sum(dim=(1, 2))
    has_valid = (labels != ignore_index).flatten(1).any(1)
    return per_image.sum() / has_valid.sum().clamp_min(1)


def unlabeled_loss_factor(batch_labeled: int, batch_unlabeled: int, pixel_balanced: bool) -> float:
    """Factor on ``λ2 · L_u`` of Eq. 4 so that an unlabeled pixel weighs λ2 times a labeled one whatever the batch
    sizes (SPEC §2.7 [choice]): each loss is a mean over its own pixels, so unscaled it weighs ``λ2 · B_l / B_u``."""
    return batch_unlabeled / batch_labeled if pixel_balanced else 1.0
