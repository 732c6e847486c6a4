"""des4-evaluate / scripts/evaluate.py on a saved tiny model and a 3-image CamVid-derived dataset."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from des4_hf_scripts.evaluate import _protocol_settings, main
from des4_hf_scripts.evaluate import evaluate_parser as build_parser
from PIL import Image

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor
from des4_hf.evaluation import EvaluationResult
from des4_hf.loading import UsageError as CliError

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = (120, 90)  # CamVid is 480×360: a quarter in each direction keeps the test fast


@pytest.fixture(scope="module")
def mini_camvid(camvid_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 CamVid val pairs downscaled to 120×90 (masks by nearest), in the CamVid/VOC layout."""
    root = tmp_path_factory.mktemp("camvid3")
    ids = (camvid_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:3]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for id_ in ids:
        with Image.open(camvid_root / "JPEGImages" / f"{id_}.jpg") as image:
            image.convert("RGB").resize(SIZE, Image.BILINEAR).save(root / "JPEGImages" / f"{id_}.jpg", quality=95)
        with Image.open(camvid_root / "SegmentationClass" / f"{id_}.png") as mask:
            mask.resize(SIZE, Image.NEAREST).save(root / "SegmentationClass" / f"{id_}.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    shutil.copy(camvid_root / "classes.txt", root / "classes.txt")
    return root


def _save_model(path: Path, names: list[str]) -> Path:
    torch.manual_seed(0)
    config = Des4Config(backbone="test_resnet", decoder_channels=16, id2label=dict(enumerate(names)))
    model = Des4ForSemanticSegmentation(config)
    model.prototype_head.initialized.fill_(True)
    model.save_pretrained(path)
    Des4ImageProcessor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(mini_camvid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = (mini_camvid / "classes.txt").read_text().split()
    return _save_model(tmp_path_factory.mktemp("model") / "tiny", names)


def test_report_shows_percent_and_marks_absent_classes(tmp_path):
    """IoU road 5/8, rare absent (n/a, out of the mean), car 3/6: mIoU (62.5 + 50) / 2 = 56.25 %."""
    confusion = torch.tensor([[5, 0, 1], [0, 0, 0], [2, 0, 3]])
    result = EvaluationResult.from_confusion(confusion, ["road", "rare", "car"], 4,
                                             {"dataset": "camvid", "split": "val"})
    paths = result.write_report(tmp_path / "out")
    markdown = paths["markdown"].read_text()
    assert "| rare | n/a |" in markdown and "| **mean** | **56.25** |" in markdown
    assert "| road | 62.50 |" in markdown and "| split | val |" in markdown
    table = result.format_table()
    assert "56.25" in table and "n/a" in table and "(4 images, 3 classes)" in table
    with Image.open(paths["chart"]) as chart:
        assert chart.format == "PNG" and chart.size[0] >= 600
    assert EvaluationResult.load(paths["json"]).mean_iou == pytest.approx(0.5625)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.json", "eval.md", "per_class_iou.png"]


def test_cli_prints_and_writes_json_md_png(tiny_model, mini_camvid, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["--model", str(tiny_model), "--dataset", "camvid", "--root", str(mini_camvid), "--split", "val",
                 "--precision", "fp32", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mean IoU" in captured.out and "bicyclist" in captured.out
    assert "warning" not in captured.out + captured.err, "the same classes: nothing to warn about"

    data = json.loads((out / "eval.json").read_text())
    names = (mini_camvid / "classes.txt").read_text().split()
    assert data["num_images"] == 3 and data["class_names"] == names
    labelled = 0
    for mask_path in sorted((mini_camvid / "SegmentationClass").glob("*.png")):
        with Image.open(mask_path) as mask:
            labelled += int((np.asarray(mask) != 255).sum())
    assert np.asarray(data["confusion_matrix"]).sum() == labelled  # original resolution, 255 ignored
    assert 0.0 <= data["mean_iou"] <= 1.0
    assert data["settings"]["dataset"] == "camvid" and data["settings"]["sliding_window"] is None
    assert set(data["per_class_iou"]) == set(names)

    markdown = (out / "eval.md").read_text()
    assert "| **mean** |" in markdown and "| road |" in markdown
    with Image.open(out / "per_class_iou.png") as chart:
        assert chart.format == "PNG"


def test_cli_bad_inputs_fail_clearly_before_loading_weights(tiny_model, mini_camvid, tmp_path, capsys, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the cheap checks")

    common = ["--dataset", "camvid", "--no-progress", "--out", str(tmp_path / "o")]
    with monkeypatch.context() as patch:
        patch.setattr(Des4ForSemanticSegmentation, "from_pretrained", no_weights)
        # missing root
        assert main(["--model", str(tiny_model), *common, "--root", str(tmp_path / "nowhere")]) == 2
        assert "no such folder" in capsys.readouterr().err
        # wrong split
        assert main(["--model", str(tiny_model), *common, "--root", str(mini_camvid), "--split", "test"]) == 2
        assert "splits: ['train', 'val']" in capsys.readouterr().err
        # a model for 3 classes on the 11 CamVid classes
        three = _save_model(tmp_path / "three", ["a", "b", "c"])
        assert main(["--model", str(three), *common, "--root", str(mini_camvid)]) == 2
        assert "predicts 3 classes" in capsys.readouterr().err
        # a mask with a value outside the 11 classes
        broken = tmp_path / "broken"
        shutil.copytree(mini_camvid, broken)
        mask_path = sorted((broken / "SegmentationClass").glob("*.png"))[1]
        with Image.open(mask_path) as mask:
            array = np.asarray(mask).copy()
        array[5, 5] = 20
        Image.fromarray(array).save(mask_path)
        assert main(["--model", str(tiny_model), *common, "--root", str(broken)]) == 2
        assert f"image '{mask_path.stem}'" in capsys.readouterr().err

    # a model directory without prototypes: it would load with transformers' warning; des4-evaluate refuses it
    from safetensors.torch import load_file, save_file

    stripped = tmp_path / "no_prototypes"
    shutil.copytree(tiny_model, stripped)
    weights = load_file(stripped / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("prototype_head.")},
              stripped / "model.safetensors", metadata={"format": "pt"})
    assert main(["--model", str(stripped), *common, "--root", str(mini_camvid)]) == 2
    err = capsys.readouterr().err
    assert "lacks 2 tensors" in err and "prototype_head.prototypes" in err and "save_pretrained" in err
    with pytest.raises(CliError, match="lacks 2 tensors"):  # --debug: the exception instead of the line
        main(["--model", str(stripped), *common, "--root", str(mini_camvid), "--debug"])

    # a model never trained on its classes (all prototypes unset): it would run with a warning; des4-evaluate refuses
    untrained = tmp_path / "untrained"
    shutil.copytree(tiny_model, untrained)
    weights = load_file(untrained / "model.safetensors")
    weights["prototype_head.initialized"] = weights["prototype_head.initialized"].zero_()
    save_file(weights, untrained / "model.safetensors", metadata={"format": "pt"})
    assert main(["--model", str(untrained), *common, "--root", str(mini_camvid)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("des4-evaluate: ")]
    assert len(lines) == 1 and "never trained on data of these classes" in lines[0] and "des4-train" in lines[0]

    # an output folder that cannot be made (a file is in the way): one line, not a traceback
    (tmp_path / "a-file").write_text("")
    assert main(["--model", str(tiny_model), "--dataset", "camvid", "--no-progress", "--root", str(mini_camvid),
                 "--out", str(tmp_path / "a-file" / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("des4-evaluate: error:") and "a-file" in error[-1] and "Traceback" not in error[-1]


def test_a_model_with_other_class_names_is_evaluated_with_a_warning(mini_camvid, tmp_path, capsys):
    names = (mini_camvid / "classes.txt").read_text().split()
    other = _save_model(tmp_path / "other", [f"thing_{i}" for i in range(len(names))])  # 11 classes, other names
    assert main(["--model", str(other), "--dataset", "camvid", "--root", str(mini_camvid), "--precision", "fp32",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert f"classes differ from the dataset's at {len(names)} of {len(names)} indices" in output
    assert f"thing_0 → {names[0]}" in output


def test_protocol_flags():
    parse = build_parser().parse_args
    base = ["--model", "m"]
    assert _protocol_settings(parse([*base, "--dataset", "cityscapes"])) == ((769, 513), False, (1.0,))
    assert _protocol_settings(parse([*base, "--dataset", "voc"])) == (None, False, (1.0,))
    assert _protocol_settings(parse([*base, "--dataset", "camvid", "--crop-size", "64", "--flip",
                                     "--scales", "0.75", "1.0", "1.25"])) == ((64, 43), True, (0.75, 1.0, 1.25))
    assert _protocol_settings(parse([*base, "--dataset", "cityscapes", "--no-sliding-window"]))[0] is None
    assert _protocol_settings(parse([*base, "--dataset", "voc", "--sliding-window"]))[0] == (769, 513)
    with pytest.raises(CliError, match="stride"):
        _protocol_settings(parse([*base, "--dataset", "voc", "--crop-size", "10", "--stride", "11"]))


def test_script_is_a_thin_wrapper(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "--sliding-window" in capsys.readouterr().out
