"""One image decoder (issue 34, problem 5): training, evaluation, prediction and the demo read a file the same way,
EXIF orientation applied, so a phone photo trains upright against its upright mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from des4_hf import Des4ImageProcessor
from des4_hf.data import DataError, EvalDataset, LabeledTrainDataset, load_segmentation_dataset
from des4_hf.image_io import EXIF_ORIENTATION, read_image, rgb_uint8
from des4_hf.image_processing_des4 import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def _phone_photo(path: Path, stored: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


def _folder(root: Path, stored: np.ndarray, orientation: int, mask_size: tuple[int, int]) -> Path:
    """A folder dataset with one photo (EXIF ``orientation``) in train and val, masks of ``mask_size`` (W, H)."""
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        _phone_photo(root / split / "images" / "photo.jpg", stored, orientation)
        mask = np.zeros(mask_size[::-1], dtype=np.uint8)
        mask[: mask_size[1] // 2] = 1  # the upper half of the upright photo is class 1
        Image.fromarray(mask).save(root / split / "masks" / "photo.png")
    (root / "train" / "classes.txt").write_text("ground\nsky\n")
    return root


def test_the_same_photo_gives_bit_equal_tensors_to_training_and_to_predict(tmp_path):
    stored = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)  # 64×40 as stored
    root = _folder(tmp_path / "data", stored, orientation=6, mask_size=(40, 64))  # shown upright: 40×64
    dataset = load_segmentation_dataset("folder", root=root)
    evaluated = EvalDataset(dataset["val"], IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, num_classes=2)[0]
    photo = root / "val" / "images" / "photo.jpg"
    predicted = Des4ImageProcessor()(images=read_image(photo), return_tensors="pt")["pixel_values"][0]
    assert evaluated["pixel_values"].shape == predicted.shape == (3, 64, 40)  # upright, as the mask
    assert torch.equal(evaluated["pixel_values"], predicted)
    _, pixels, mask = LabeledTrainDataset(dataset["train"], 32, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD).load(0)
    upright = np.asarray(Image.open(photo).transpose(Image.Transpose.ROTATE_270))  # orientation 6, by hand
    assert np.array_equal(pixels.permute(1, 2, 0).numpy(), rgb_uint8(read_image(photo)))
    assert pixels.shape == (3, 64, 40) and mask.shape == (64, 40)
    assert np.abs(pixels.permute(1, 2, 0).numpy().astype(int) - upright).max() == 0


def test_a_square_photo_trains_upright_and_a_mask_drawn_on_the_stored_photo_is_named(tmp_path):
    stored = np.zeros((48, 48, 3), dtype=np.uint8)
    stored[:, :24] = 255  # left half white as stored; orientation 3 (180°) shows it on the right
    root = _folder(tmp_path / "square", stored, orientation=3, mask_size=(48, 48))
    dataset = load_segmentation_dataset("folder", root=root)
    _, pixels, _ = LabeledTrainDataset(dataset["train"], 32, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD).load(0)
    assert pixels[:, :, 30:].float().mean() > 200 and pixels[:, :, :18].float().mean() < 50

    turned = _folder(tmp_path / "turned", np.zeros((40, 64, 3), dtype=np.uint8), orientation=6, mask_size=(64, 40))
    dataset = load_segmentation_dataset("folder", root=turned)
    with pytest.raises(DataError, match=r"turns it by 90°\)\. Fix: draw the mask on the upright photo"):
        LabeledTrainDataset(dataset["train"], 32, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD).load(0)
