"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy.

Pure tensor code with no dependency on the rest of the package, so that the training loop (periodic
evaluation), :mod:`des4_hf.evaluation` and the ``evaluate`` module in ``metrics/mean_iou`` all count
pixels the same way.

Conventions: rows of the matrix are the ground-truth classes, columns the predicted classes
(``matrix[t, p]`` = number of pixels of class ``t`` predicted as ``p``), as in scikit-learn and
torchmetrics. Pixels whose target equals ``ignore_index`` (255) are not counted. A class that is
absent from both the predictions and the targets has IoU NaN and is left out of the mean; a class
that is predicted but absent from the targets has IoU 0 and counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class LabelRangeError(ValueError):
    """Target (or prediction) values outside ``[0, num_classes)`` ∪ ``{ignore_index}``."""


def _describe(where: str | None) -> str:
    return f"{where}: " if where else ""


def check_label_range(target: Tensor, num_classes: int, ignore_index: int | None = 255, *, where: str | None = None,
                      what: str = "labels") -> None:
    """Raise :class:`LabelRangeError` when ``target`` holds values outside ``[0, C)`` ∪ ``{ignore_index}``.

    ``where`` names the sample (e.g. ``"image '2007_000033'"``) in the message.
    """
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"{_describe(where)}{what} must be an integer tensor of class indices, got {target.dtype}.")
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        shown = values[:10] + (["..."] if len(values) > 10 else [])
        allowed = f"0..{num_classes - 1}" + (f" and {ignore_index} (ignore)" if ignore_index is not None else "")
        raise LabelRangeError(
            f"{_describe(where)}{what} hold values {shown} ({int(bad.sum())} pixels) outside the "
            f"{num_classes} classes ({allowed}). Fix: check that the dataset and the model use the same "
            "classes (num_labels) and that void pixels are stored as the ignore index."
        )


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255, *, check: bool = True,
    where: str | None = None,
) -> Tensor:
    """``(C, C)`` int64 confusion matrix of class-index maps ``pred`` and ``target`` (any equal shapes).

    ``matrix[t, p]`` counts the pixels of true class ``t`` predicted as ``p``; pixels whose target is
    ``ignore_index`` are skipped. One ``torch.bincount`` over ``t * C + p``, on the tensors' device.
    With ``check`` (default) values outside ``[0, C)`` raise :class:`LabelRangeError` (targets may also
    hold ``ignore_index``) instead of being silently miscounted.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1.")
    if pred.shape != target.shape:
        raise ValueError(
            f"{_describe(where)}predictions {tuple(pred.shape)} and labels {tuple(target.shape)} differ in "
            "shape: compare label maps at the same resolution (pass class indices, not logits)."
        )
    pred = pred.reshape(-1)
    target = target.reshape(-1)
    if check:
        check_label_range(target, num_classes, ignore_index, where=where)
        check_label_range(pred, num_classes, None, where=where, what="predictions")
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    index = target.long() * num_classes + pred.long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def scores_from_confusion(matrix: Tensor) -> dict[str, Any]:
    """IoU and accuracy figures of a ``(C, C)`` confusion matrix (rows = truth, columns = prediction).

    Returns ``per_class_iou`` and ``per_class_accuracy`` (float64 tensors, NaN where undefined: IoU for a
    class absent from both predictions and targets, accuracy for a class absent from the targets),
    ``mean_iou`` / ``mean_accuracy`` (mean over the defined classes; NaN when there is none) and
    ``pixel_accuracy`` (correct / labelled pixels; NaN without labelled pixels), as Python floats.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix is (C, C), got {tuple(matrix.shape)}")
    matrix = matrix.detach().to("cpu", torch.float64)
    intersection = matrix.diagonal()
    target_area = matrix.sum(dim=1)
    pred_area = matrix.sum(dim=0)
    union = target_area + pred_area - intersection
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    per_class_iou = torch.where(union > 0, intersection / union.clamp(min=1), nan)
    per_class_accuracy = torch.where(target_area > 0, intersection / target_area.clamp(min=1), nan)
    total = target_area.sum()
    return {"per_class_iou": per_class_iou, "mean_iou": _nanmean(per_class_iou),
            "per_class_accuracy": per_class_accuracy, "mean_accuracy": _nanmean(per_class_accuracy),
            "pixel_accuracy": float(intersection.sum() / total) if total > 0 else float("nan")}


def _nanmean(values: Tensor) -> float:
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if defined.numel() else float("nan")


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix over batches, optionally across processes.

    ```python
    >>> metric = ConfusionMatrix(num_classes=21)
    >>> for logits, labels in ...:
    ...     metric.update(logits.argmax(1), labels)
    >>> metric.reduce(accelerator)  # sum over the processes of an accelerate run
    >>> metric.compute()["mean_iou"]
    ```

    Each process must update with a *disjoint* part of the data (shard indices ``rank::world_size``,
    no padding duplicates) so that every image is counted exactly once after :meth:`reduce`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        self.reduced = False

    def reset(self) -> None:
        self.matrix.zero_()
        self.reduced = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, *, where: str | None = None) -> Tensor:
        """Add one batch; ``pred`` are class indices of ``target``'s shape, or logits with an extra class
        dimension at position 1 (argmax is taken). Returns this batch's confusion matrix."""
        if self.reduced:
            raise RuntimeError("this ConfusionMatrix was already reduced across processes; call reset() first.")
        if pred.dim() == target.dim() + 1 and pred.is_floating_point():
            pred = pred.argmax(dim=1)
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index, where=where)
        if batch.device != self.matrix.device:
            self.matrix = self.matrix.to(batch.device)
        self.matrix += batch
        return batch

    @torch.no_grad()
    def reduce(self, accelerator: Any = None) -> Tensor:
        """Sum the matrix over the processes of ``accelerator`` (a no-op for one process or none).
        Idempotent: a second call does nothing. Returns the (reduced) matrix."""
        if self.reduced or accelerator is None or accelerator.num_processes == 1:
            return self.matrix
        self.matrix = accelerator.reduce(self.matrix, "sum")
        self.reduced = True
        return self.matrix

    def compute(self) -> dict[str, Any]:
        """Scores of the accumulated matrix (see :func:`scores_from_confusion`); call :meth:`reduce` first
        in a multi-process run."""
        return scores_from_confusion(self.matrix)

    @property
    def num_pixels(self) -> int:
        return int(self.matrix.sum())

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.num_pixels}, reduced={self.reduced})"

