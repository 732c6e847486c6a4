"""Segmentation metrics: a confusion-matrix mIoU usable anywhere (training, evaluation, the `evaluate` module).

This package imports nothing else from des4-hf, so every layer (the training loop included) may use it.
"""

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
    """``evaluate.load`` of the mean-IoU module shipped in this package, by local path (works offline).

    Same inputs and output keys as the Hub's ``mean_iou``; ``kwargs`` go to ``evaluate.load``.
    """
    import evaluate

    return evaluate.load(MEAN_IOU_PATH, **kwargs)


__all__ = ["MEAN_IOU_PATH", "ConfusionMatrix", "LabelRangeError", "check_label_range", "confusion_matrix",
           "load_mean_iou", "scores_from_confusion"]
