"""Segmentation metrics: a confusion-matrix mIoU that every layer may use (it imports nothing else from des4-hf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .confusion import (
    ConfusionMatrix,
    LabelRangeError,
    check_label_range,
    confusion_matrix,
    scores_from_confusion,
)

#: Folder of the `evaluate` module (``mean_iou/mean_iou.py``), for ``evaluate.load(MEAN_IOU_PATH)``.
MEAN_IOU_PATH = str(Path(__file__).resolve().parent / "mean_iou")


def load_mean_iou(**kwargs: Any) -> Any:
    """``evaluate.load`` of the shipped mean-IoU module by local path (works offline; the Hub ``mean_iou``'s API)."""
    import evaluate

    return evaluate.load(MEAN_IOU_PATH, **kwargs)


__all__ = ["MEAN_IOU_PATH", "ConfusionMatrix", "LabelRangeError", "check_label_range", "confusion_matrix",
           "load_mean_iou", "scores_from_confusion"]
