"""Fixtures of the command-line tests: a tiny saved model and a file that is not an image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = Des4Config(
        backbone="test_resnet",
        id2label={0: "sky", 1: "road", 2: "car", 3: "tree"},
        decoder_channels=16,
        low_level_channels=8,
    )
    directory = tmp_path_factory.mktemp("model")
    model = Des4ForSemanticSegmentation(config)
    model.prototype_head.initialized.fill_(True)  # as if trained: a never-trained model refuses inference
    model.save_pretrained(directory)
    Des4ImageProcessor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("junk") / "notes.jpg"
    path.write_text("this is not a JPEG\n")
    return path
