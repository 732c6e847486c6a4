"""Confusion-matrix segmentation metrics (per-class IoU, mIoU, pixel accuracy), the lowest layer (it imports nothing
from des4-hf), shared by evaluation and the ``evaluate`` module in ``mean_iou/``.

``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (as scikit-learn), ``ignore_index`` targets
excepted. A class absent from predictions and targets has IoU NaN, left out of the mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Folder of the `evaluate` module (``mean_iou/mean_iou.py``), for ``evaluate.load(MEAN_IOU_PATH)``.
MEAN_IOU_PATH = str(Path(__file__).resolve().parent / "mean_iou")


def load_mean_iou(**kwargs: Any) -> Any:
    """``evaluate.load`` of the shipped mean-IoU module by local path (works offline; the Hub ``mean_iou``'s API)."""
    import evaluate

    return evaluate.load(MEAN_IOU_PATH, **kwargs)


class LabelRangeError(ValueError):
    """Target (or prediction) values outside ``[0, num_classes)`` ∪ ``{ignore_index}``."""


def check_label_range(target: Tensor, num_classes: int, ignore_index: int | None = 255, *, where: str | None = None,
                      what: str = "labels") -> None:
    """Raise :class:`LabelRangeError`, naming the sample ``where``, for values outside ``[0, C)`` ∪ ``{ignore_index}``."""
    where = f"{where}: " if where else ""
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"{where}{what} must be an integer tensor of class indices, got {target.dtype}.")
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        shown = values[:10] + (["..."] if len(values) > 10 else [])
        allowed = f"0..{num_classes - 1}" + (f" and {ignore_index} (ignore)" if ignore_index is not None else "")
        raise LabelRangeError(f"{where}{what} hold values {shown} ({int(bad.sum())} pixels) outside the {num_classes} "
                              f"classes ({allowed}). Fix: check that the dataset and the model use the same classes "
                              "(num_labels) and that void pixels are stored as the ignore index.")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255, *,
                     check: bool = True, where: str | None = None) -> Tensor:
    """``(C, C)`` int64 confusion matrix of equal-shaped class-index maps: one ``bincount`` over ``t * C + p``. With
    ``check``, values outside ``[0, C)`` raise :class:`LabelRangeError` instead of being miscounted."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1.")
    if pred.shape != target.shape:
        raise ValueError(f"{f'{where}: ' if where else ''}predictions {tuple(pred.shape)} and labels "
                         f"{tuple(target.shape)} differ in shape: compare label maps at the same resolution (pass "
                         "class indices, not logits).")
    pred, target = pred.reshape(-1), target.reshape(-1)
    if check:
        check_label_range(target, num_classes, ignore_index, where=where)
        check_label_range(pred, num_classes, None, where=where, what="predictions")
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    counts = torch.bincount(target.long() * num_classes + pred.long(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def scores_from_confusion(matrix: Tensor) -> dict[str, Any]:
    """``per_class_iou``/``per_class_accuracy`` (float64 tensors, NaN where undefined), their means over the defined
    classes and ``pixel_accuracy`` (floats, NaN when undefined) of a ``(C, C)`` confusion matrix."""
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
    """Accumulates a ``(C, C)`` confusion matrix over batches (``update``), summed over processes by ``reduce``:
    each process must update with a disjoint shard, so every image counts once."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        self.reduced = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, *, where: str | None = None) -> None:
        """Add one batch; ``pred`` are class indices of ``target``'s shape, or logits with an extra class
        dimension at position 1 (argmax is taken)."""
        if self.reduced:
            raise RuntimeError("this ConfusionMatrix was already reduced across processes; make a new one.")
        if pred.dim() == target.dim() + 1 and pred.is_floating_point():
            pred = pred.argmax(dim=1)
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index, where=where)
        self.matrix = self.matrix.to(batch.device) + batch

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

