"""des4_hf.metrics: confusion matrix, IoU scores and the `evaluate` module, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from des4_hf.metrics import (
    MEAN_IOU_PATH,
    ConfusionMatrix,
    LabelRangeError,
    confusion_matrix,
    load_mean_iou,
    scores_from_confusion,
)

NUM_CLASSES = 5
IGNORE = 255


def random_maps(seed: int, shapes=((17, 23), (9, 31), (20, 20))):
    """Predictions and labels of several sizes; ~15 % of the label pixels are 255."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for shape in shapes:
        preds.append(rng.integers(0, NUM_CLASSES, shape))
        label = rng.integers(0, NUM_CLASSES, shape)
        label[rng.random(shape) < 0.15] = IGNORE
        labels.append(label)
    return preds, labels


def numpy_confusion(preds, labels, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, label in zip(preds, labels):
        for p, t in zip(pred.ravel(), label.ravel()):
            if t != IGNORE:
                matrix[t, p] += 1
    return matrix


def numpy_iou(matrix):
    iou = []
    for c in range(matrix.shape[0]):
        tp = matrix[c, c]
        union = matrix[c, :].sum() + matrix[:, c].sum() - tp
        iou.append(tp / union if union else float("nan"))
    return np.array(iou)


def test_confusion_matrix_matches_numpy_and_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    preds, labels = random_maps(0)
    metric = ConfusionMatrix(NUM_CLASSES, IGNORE)
    for pred, label in zip(preds, labels):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    expected = numpy_confusion(preds, labels, NUM_CLASSES)
    assert torch.equal(metric.matrix, torch.from_numpy(expected))
    assert int(metric.matrix.sum()) == sum(int((label != IGNORE).sum()) for label in labels)

    scores = metric.compute()
    np.testing.assert_allclose(scores["per_class_iou"].numpy(), numpy_iou(expected), rtol=1e-12)

    jaccard = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None)
    jaccard_macro = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average="macro")
    for pred, label in zip(preds, labels):
        jaccard.update(torch.from_numpy(pred), torch.from_numpy(label))
        jaccard_macro.update(torch.from_numpy(pred), torch.from_numpy(label))
    np.testing.assert_allclose(scores["per_class_iou"].numpy(), jaccard.compute().double().numpy(), rtol=1e-6)
    assert scores["mean_iou"] == pytest.approx(float(jaccard_macro.compute()), rel=1e-6)
    assert scores["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())


def test_batched_and_per_image_updates_agree_and_logits_are_argmaxed():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, NUM_CLASSES, 8, 6, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (3, 8, 6), generator=generator)
    labels[:, 0] = IGNORE
    batched = ConfusionMatrix(NUM_CLASSES)
    batched.update(logits, labels)
    single = confusion_matrix(logits.argmax(1), labels, NUM_CLASSES)
    assert torch.equal(batched.matrix, single)
    assert batched.reduce() is batched.matrix  # single process: no-op


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    # class 0: perfect; class 1: predicted on a class-2 pixel but absent from labels -> IoU 0 (counts);
    # class 2: IoU 1/2; class 3: absent from both -> NaN (not in the mean).
    pred = torch.tensor([[0, 0, 1, 2]])
    target = torch.tensor([[0, 0, 2, 2]])
    scores = scores_from_confusion(confusion_matrix(pred, target, 4))
    iou = scores["per_class_iou"]
    assert iou[:3].tolist() == [1.0, 0.0, 0.5]
    assert math.isnan(iou[3])
    assert scores["mean_iou"] == pytest.approx(0.5)
    assert math.isnan(scores["per_class_accuracy"][1]) and math.isnan(scores["per_class_accuracy"][3])
    assert scores["pixel_accuracy"] == pytest.approx(0.75)
    empty = scores_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(empty["mean_iou"]) and math.isnan(empty["pixel_accuracy"])


def test_out_of_range_labels_and_predictions_raise_clear_errors():
    pred = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(LabelRangeError, match=r"image 'x'.*values \[7\].*0\.\.3 and 255"):
        confusion_matrix(pred, torch.tensor([[0, 7, 255], [1, 2, 3]]), 4, where="image 'x'")
    with pytest.raises(LabelRangeError, match=r"values \[-1\]"):
        confusion_matrix(pred, torch.tensor([[0, -1, 0], [0, 0, 0]]), 4)
    with pytest.raises(LabelRangeError, match="predictions"):
        confusion_matrix(torch.full((2, 3), 4), torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(pred, torch.zeros(3, 2, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(pred, torch.zeros(2, 3), 4)


def test_evaluate_module_by_local_path_matches(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preds, labels = random_maps(3)
    reference = scores_from_confusion(torch.from_numpy(numpy_confusion(preds, labels, NUM_CLASSES)))
    metric = load_mean_iou()
    assert type(metric).__name__ == "MeanIoU"
    results = metric.compute(predictions=preds, references=labels, num_labels=NUM_CLASSES, ignore_index=IGNORE)
    assert set(results) == {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou",
                            "per_category_accuracy"}
    np.testing.assert_allclose(results["per_category_iou"], reference["per_class_iou"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(results["per_category_accuracy"], reference["per_class_accuracy"].numpy())
    assert results["mean_iou"] == pytest.approx(reference["mean_iou"])
    assert results["overall_accuracy"] == pytest.approx(reference["pixel_accuracy"])

    # add_batch + an absent class + nan_to_num, loaded again straight from the file path
    import evaluate

    by_file = evaluate.load(f"{MEAN_IOU_PATH}/mean_iou.py")
    by_file.add_batch(predictions=preds[:1], references=labels[:1])
    by_file.add_batch(predictions=preds[1:], references=labels[1:])
    wide = by_file.compute(num_labels=NUM_CLASSES + 1, ignore_index=IGNORE)
    assert math.isnan(wide["per_category_iou"][-1])
    assert wide["mean_iou"] == pytest.approx(reference["mean_iou"])
    filled = metric.compute(predictions=preds, references=labels, num_labels=NUM_CLASSES + 1, ignore_index=IGNORE,
                            nan_to_num=0.0)
    assert filled["per_category_iou"][-1] == 0.0

    with pytest.raises(ValueError, match="image 0"):
        metric.compute(predictions=[[[0, 1]]], references=[[[0, 9]]], num_labels=2, ignore_index=IGNORE)


def test_evaluate_module_reduce_labels_and_label_map():
    metric = load_mean_iou()
    pred = np.array([[0, 1, 1]])
    # reduce_labels: reference 0 -> ignored, 1 -> 0, 2 -> 1
    out = metric.compute(predictions=[pred], references=[np.array([[1, 2, 0]])], num_labels=2, ignore_index=IGNORE,
                         reduce_labels=True)
    np.testing.assert_allclose(out["per_category_iou"], [1.0, 1.0])
    out = metric.compute(predictions=[pred], references=[np.array([[5, 6, 6]])], num_labels=2, ignore_index=IGNORE,
                         label_map={5: 0, 6: 1})
    np.testing.assert_allclose(out["per_category_iou"], [1.0, 1.0])
