"""des4_hf.evaluation: exact mIoU on known predictions, sliding window, distributed reduction, reports, errors."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from des4_hf.evaluation import (
    EvaluationResult,
    check_model_classes,
    evaluate_segmentation,
    protocol_window,
)
from des4_hf.inference import predict_logits
from des4_hf.metrics import LabelRangeError, confusion_matrix

REPO_ROOT = Path(__file__).resolve().parents[1]


class PixelStub(nn.Module):
    """Per-pixel logits from the pixel values: channel 0 holds the class to predict.

    ``logit_c = -(x_0 - c)²`` depends on each pixel alone, so any window of the image gives the same
    logits there as the whole image: sliding-window inference must reproduce whole-image logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("classes", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))
        self.config = SimpleNamespace(num_labels=num_classes, id2label={i: f"c{i}" for i in range(num_classes)})
        self.calls: list[tuple[int, ...]] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.calls.append(tuple(pixel_values.shape))
        return SimpleNamespace(logits=-(pixel_values[:, :1] - self.classes) ** 2)


def item(pred_map: torch.Tensor, label_map: torch.Tensor, id_: str) -> dict:
    pixel_values = torch.stack([pred_map.float(), torch.zeros_like(pred_map, dtype=torch.float32),
                                torch.ones_like(pred_map, dtype=torch.float32)])
    return {"pixel_values": pixel_values, "labels": label_map.long(), "id": id_}


def known_dataset() -> list[dict]:
    # image a: 2×3, image b: 3×2 (different sizes, never resized)
    a = item(torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([[0, 0, 1], [2, 2, 255]]), "a")
    b = item(torch.tensor([[0, 1], [1, 1], [0, 0]]), torch.tensor([[0, 1], [1, 255], [1, 0]]), "b")
    return [a, b]


def test_known_predictions_give_the_exact_miou():
    # counted pixels (target, pred): a: (0,0)(0,0)(1,1)(2,1)(2,2); b: (0,0)(1,1)(1,1)(1,0)(0,0)
    # class 0: tp 4, fn 0, fp 1 -> 4/5; class 1: tp 3, fp 1 (a: 2->1), fn 1 (b: 1->0) -> 3/5; class 2: tp 1, fn 1 -> 1/2
    model = PixelStub(3)
    result = evaluate_segmentation(model, known_dataset(), num_classes=3, class_names=["x", "y", "z"],
                                   progress=False, precision="fp32")
    assert result.per_class_iou == pytest.approx([0.8, 0.6, 0.5])
    assert result.mean_iou == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert result.pixel_accuracy == pytest.approx(8 / 10)
    assert result.num_images == 2
    assert result.confusion.tolist() == [[4, 0, 0], [1, 3, 0], [0, 1, 1]]
    assert model.calls == [(1, 3, 2, 3), (1, 3, 3, 2)]  # original resolution, one image per call


def test_sliding_window_equals_whole_image_and_covers_every_pixel():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 53, 38, generator=generator) * 2 + 2
    model = PixelStub(4)
    whole = predict_logits(model, image)
    model.calls.clear()
    windowed = predict_logits(model, image, sliding_window=(16, 11))
    assert len(model.calls) > 4 and all(shape[-2:] == (16, 16) for shape in model.calls)
    torch.testing.assert_close(windowed, whole)

    labels = torch.randint(0, 4, (53, 38), generator=generator)
    dataset = [{"pixel_values": image[0], "labels": labels, "id": "x"}]
    full = evaluate_segmentation(model, dataset, num_classes=4, class_names=list("abcd"), progress=False)
    slid = evaluate_segmentation(model, dataset, num_classes=4, class_names=list("abcd"), progress=False,
                                 sliding_window=(16, 11), flip=True)
    assert torch.equal(full.confusion, slid.confusion)
    assert full.confusion.sum() == 53 * 38
    assert slid.settings["sliding_window"] == [16, 11] and slid.settings["flip"] is True


def test_tiny_des4_model_matches_a_manual_count_and_keeps_its_mode():
    from des4_hf import Des4Config, Des4ForSemanticSegmentation

    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", num_labels=3, decoder_channels=16))
    model.train()
    generator = torch.Generator().manual_seed(1)
    dataset = [{"pixel_values": torch.randn(3, 40, 56, generator=generator),
                "labels": torch.randint(0, 3, (40, 56), generator=generator), "id": f"img{i}"} for i in range(3)]
    rng = torch.get_rng_state()
    result = evaluate_segmentation(model, dataset, num_classes=3, class_names=["a", "b", "c"], progress=False,
                                   precision="fp32", batch_size=2)
    assert model.training  # restored
    assert torch.equal(torch.get_rng_state(), rng), "evaluating mid-run must not move training's random stream"
    model.eval()
    expected = torch.zeros(3, 3, dtype=torch.long)
    with torch.no_grad():
        for sample in dataset:
            pred = model(pixel_values=sample["pixel_values"][None]).logits.argmax(1)[0]
            expected += confusion_matrix(pred, sample["labels"], 3)
    assert torch.equal(result.confusion, expected)
    assert result.num_images == 3
    model._prototypes_pending = True  # as from_pretrained arms it for a model loaded with fresh prototypes
    with pytest.raises(ValueError, match="none of the 3 class prototypes is initialised"):
        model._check_prototypes()  # what the applications refuse with; the model itself runs and warns
    again = evaluate_segmentation(model, dataset, num_classes=3, class_names=["a", "b", "c"], progress=False,
                                  precision="fp32", batch_size=2)  # scored anyway, with its warning
    assert torch.equal(again.confusion, expected)


def test_mismatched_classes_and_bad_labels_fail_before_inference():
    model = PixelStub(3)
    with pytest.raises(ValueError, match="predicts 3 classes.*dataset has 4"):
        evaluate_segmentation(model, known_dataset(), num_classes=4, class_names=list("abcd"), progress=False)
    assert model.calls == []
    with pytest.raises(ValueError, match="predicts 3 classes"):
        check_model_classes(model.config, 5)

    bad = known_dataset()
    bad.insert(0, item(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [255, 1]]), "2007_bad"))
    with pytest.raises(LabelRangeError, match=r"image '2007_bad'.*\[7\]"):
        evaluate_segmentation(model, bad, num_classes=3, class_names=list("abc"), progress=False)
    assert model.calls == []

    with pytest.raises(ValueError, match="class names"):
        evaluate_segmentation(model, known_dataset(), num_classes=3, class_names=["a"], progress=False)
    with pytest.raises(ValueError, match="stride"):
        evaluate_segmentation(model, known_dataset(), num_classes=3, class_names=list("abc"), progress=False,
                              sliding_window=(8, 9))
    with pytest.raises(ValueError, match="scales"):
        evaluate_segmentation(model, known_dataset(), num_classes=3, class_names=list("abc"), progress=False,
                              scales=())


def test_protocols():
    assert protocol_window("voc") is None
    assert protocol_window("camvid") is None
    assert protocol_window("cityscapes") == (769, 513)
    assert protocol_window("cityscapes-hub") == (769, 513)
    assert protocol_window("jxie/pascal-voc-2012") is None
    assert protocol_window("some/other") is None


def test_result_json_round_trip(tmp_path):
    confusion = torch.tensor([[5, 0, 1], [0, 0, 0], [2, 0, 3]])
    result = EvaluationResult.from_confusion(confusion, ["road", "rare", "car"], 4,
                                             {"dataset": "camvid", "split": "val"})
    assert math.isnan(result.per_class_iou[1])
    path = result.save(tmp_path / "out")
    data = json.loads(path.read_text())
    assert data["per_class_iou"]["rare"] is None
    assert data["mean_iou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert EvaluationResult.load(tmp_path / "out").confusion.tolist() == confusion.tolist()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.json"]


WORKER = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace
    import torch
    from accelerate import Accelerator
    from des4_hf.evaluation import evaluate_segmentation
    from des4_hf.metrics import confusion_matrix

    class PixelStub(torch.nn.Module):  # as in test_evaluation.py: channel 0 holds the predicted class
        def __init__(self, num_classes):
            super().__init__()
            self.classes = torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1)
            self.config = SimpleNamespace(num_labels=num_classes)
            self.calls = []

        def forward(self, pixel_values):
            self.calls.append(tuple(pixel_values.shape))
            return SimpleNamespace(logits=-(pixel_values[:, :1] - self.classes) ** 2)

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    generator = torch.Generator().manual_seed(0)
    dataset = []
    for i in range(5):  # 5 images: not divisible by 2; sizes differ
        size = (7 + i, 9 - i)
        labels = torch.randint(0, 4, size, generator=generator)
        labels[0, 0] = 255
        pred = torch.randint(0, 4, size, generator=generator).float()
        dataset.append({"pixel_values": torch.stack([pred, pred, pred]), "labels": labels, "id": f"im{i}"})
    model = PixelStub(4)
    result = evaluate_segmentation(model, dataset, num_classes=4, class_names=list("abcd"),
                                   accelerator=accelerator, progress=False)
    expected = torch.zeros(4, 4, dtype=torch.long)
    for sample in dataset:
        expected += confusion_matrix(sample["pixel_values"][0].long(), sample["labels"], 4)
    assert torch.equal(result.confusion, expected), (result.confusion, expected)
    assert result.num_images == 5
    assert result.settings["num_processes"] == 2
    out = {"rank": accelerator.process_index, "calls": len(model.calls), "miou": result.mean_iou}
    with open(f"{sys.argv[1]}/rank{accelerator.process_index}.json", "w") as f:
        json.dump(out, f)
    accelerator.wait_for_everyone()  # then leave the process group before exiting: gloo's threads, left running
    torch.distributed.destroy_process_group()  # at exit, abort a loaded machine's process ("terminate called ...")
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts processes
def test_two_process_reduction_counts_every_image_once(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(worker), str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["calls"] for r in ranks] == [3, 2]  # indices 0,2,4 and 1,3: no padding duplicates
    assert ranks[0]["miou"] == ranks[1]["miou"]
