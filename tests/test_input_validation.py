"""Silent wrong input, now named (issue 34, problem 6): each case fails (or warns) with one message that names the
file or key and the fix, and is accepted as before when the input is right."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from des4_hf import Des4Config, Des4ImageProcessor
from des4_hf.data import DataError, load_segmentation_dataset
from des4_hf.training.config import TrainConfig


def test_statistics_on_the_0_255_scale_are_refused(tmp_path):
    with pytest.raises(ValueError, match="0–255 scale.*divide them by 255"):
        Des4ImageProcessor(image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375])
    Des4ImageProcessor().save_pretrained(tmp_path)
    config = tmp_path / "preprocessor_config.json"
    config.write_text(config.read_text().replace("0.485", "123.675"))
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        Des4ImageProcessor.from_pretrained(tmp_path)
    assert Des4ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).image_mean == [0.5] * 3


def test_a_class_named_twice_is_refused_in_the_config_and_in_classes_txt(tmp_path):
    with pytest.raises(ValueError, match=r"id2label names \['car'\] more than once"):
        Des4Config(backbone="test_resnet", id2label={0: "road", 1: "car", 2: "car"})
    root = _folder(tmp_path, classes="road\ncar\ncar\n")
    with pytest.raises(DataError, match=r"classes.txt lists \['car'\] more than once. Fix: keep one line each"):
        load_segmentation_dataset("folder", root=root)


def test_twins_are_refused_in_the_folder_layout_as_in_the_voc_layout(tmp_path):
    root = _folder(tmp_path)
    Image.new("RGB", (8, 6)).save(root / "train" / "images" / "a.png")  # beside a.jpg
    with pytest.raises(DataError, match=r"a.jpg and a.png share a name. Fix: keep one file per image id"):
        load_segmentation_dataset("folder", root=root)


def test_non_finite_hyper_parameters_and_duplicate_yaml_keys_are_refused(tmp_path):
    for text, expected in (("lr: .inf\n", r"lr=inf: must be a finite number"),
                           ("momentum: .nan\n", r"momentum=nan: must be a finite number"),
                           ("scale_range: [0.5, .inf]\n", r"scale_range=.*must be finite numbers"),
                           ("lr: 0.1\nbatch_size: 2\nlr: 0.2\n", r"line 3, column 1: 'lr' is given twice"),
                           ("lr: [0.1\n", r"recipe.yaml: not valid YAML at line 2, column 1: expected .,. or .\]., but got")):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text)
        with pytest.raises(ValueError, match=expected):
            TrainConfig.from_yaml(recipe)
    recipe.write_text("lr: 0.1\nbatch_size: 2\n")
    assert TrainConfig.from_yaml(recipe).lr == 0.1


def test_train_ids_in_val_and_masks_without_class_pixels_warn(tmp_path, caplog):
    from des4_hf.training.trainer import Trainer

    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (16, 12)).save(root / "JPEGImages" / f"f{index}.jpg")
        Image.fromarray(np.full((12, 16), 255, dtype=np.uint8)).save(root / "SegmentationClass" / f"f{index}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("f0\nf1\nf2\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("f2\nf3\n")  # f2 is also a train id
    (root / "classes.txt").write_text("a\nb\n")
    config = TrainConfig(backbone="test_resnet", encoder_weights=None, decoder_channels=16, crop_size=32,
                         dataset="camvid", data_root=str(root), labeled_fraction=0.99, num_workers=0,
                         output_dir=str(tmp_path / "run"), mixed_precision="no")
    with caplog.at_level(logging.WARNING, logger="des4_hf.training.trainer"):
        Trainer(config).prepare_data()
    messages = [record.getMessage() for record in caplog.records]
    assert any("also in the val split (e.g. ['f2'])" in m for m in messages), messages
    assert any("hold no class pixel (every pixel is ignore, 255)" in m for m in messages), messages


def _folder(tmp_path: Path, classes: str = "road\ncar\n") -> Path:
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.new("RGB", (8, 6)).save(root / split / "images" / "a.jpg")
        Image.fromarray(np.zeros((6, 8), dtype=np.uint8)).save(root / split / "masks" / "a.png")
    (root / "train" / "classes.txt").write_text(classes)
    return root
