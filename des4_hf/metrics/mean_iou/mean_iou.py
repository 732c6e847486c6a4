"""Mean Intersection-over-Union for semantic segmentation, as an `evaluate` module shipped with des4-hf.

Same inputs and output keys as the Hub's ``mean_iou`` metric (so either can be swapped in), computed
from one confusion matrix per call with :mod:`des4_hf.metrics`. Load it offline by path:

    import des4_hf.metrics
    metric = des4_hf.metrics.load_mean_iou()   # = evaluate.load(<this folder>)
"""

import datasets
import evaluate
import numpy as np
import torch

from des4_hf.metrics import confusion_matrix, scores_from_confusion

_DESCRIPTION = """
IoU of a class = true positives / (true positives + false positives + false negatives), counted over
all pixels of all images together (not averaged per image). mean_iou is the mean over the classes
that occur in the predictions or the references; classes that occur in neither get NaN (or
``nan_to_num``). Pixels whose reference equals ``ignore_index`` are not counted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D integer class-index maps (H, W), one per image.
    references: list of 2-D integer ground-truth maps, same shapes as the predictions.
    num_labels (int): number of classes C; values must lie in [0, C) (references may also hold
        ``ignore_index``) or a ValueError names the offending image.
    ignore_index (int): reference value excluded from every count (usually 255).
    nan_to_num (float, optional): replace NaN in the per-class arrays (and means) with this value.
    label_map (dict, optional): old id -> new id applied to the references first.
    reduce_labels (bool): references: 0 becomes 255 and every other id is decreased by 1 (ADE20k style).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats); per_category_iou, per_category_accuracy
    (NumPy float64 arrays of length num_labels).
Example:
    >>> metric = des4_hf.metrics.load_mean_iou()
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [255, 0]]], num_labels=2,
    ...                ignore_index=255)["mean_iou"]
    0.5
"""

def _as_2d(array, what, index):
    array = np.asarray(array)
    if array.dtype == object:  # a ragged list of rows came back from Arrow as an array of arrays
        array = np.stack([np.asarray(row) for row in array])
    if array.ndim != 2:
        raise ValueError(f"{what}[{index}] must be a 2-D class-index map, got shape {array.shape}")
    return array


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                 "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64")))}
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                 reduce_labels=False):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        num_labels = int(num_labels)
        ignore = None if ignore_index is None else int(ignore_index)
        matrix = torch.zeros(num_labels, num_labels, dtype=torch.int64)
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            pred = torch.from_numpy(_as_2d(prediction, "predictions", index).astype(np.int64))
            ref = torch.from_numpy(_as_2d(reference, "references", index).astype(np.int64))
            if label_map:
                mapped = ref.clone()
                for old_id, new_id in label_map.items():
                    mapped[ref == int(old_id)] = int(new_id)
                ref = mapped
            if reduce_labels:
                ref = torch.where(ref == 0, torch.full_like(ref, 255), ref - 1)
                ref = torch.where(ref == 254, torch.full_like(ref, 255), ref)
            matrix += confusion_matrix(pred, ref, num_labels, ignore, where=f"image {index}")
        scores = scores_from_confusion(matrix)
        per_category_iou = scores["per_class_iou"].numpy()
        per_category_accuracy = scores["per_class_accuracy"].numpy()
        result = {"mean_iou": scores["mean_iou"], "mean_accuracy": scores["mean_accuracy"],
                  "overall_accuracy": scores["pixel_accuracy"], "per_category_iou": per_category_iou,
                  "per_category_accuracy": per_category_accuracy}
        if nan_to_num is not None:
            result = {
                key: np.nan_to_num(value, nan=nan_to_num) if isinstance(value, np.ndarray)
                else (float(nan_to_num) if value != value else value)
                for key, value in result.items()
            }
        return result
