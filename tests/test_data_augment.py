"""Augmentation invariants: image/mask alignment, padding, shared weak/strong geometry, CutMix
areas, and reproducibility across epochs, processes and worker counts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from des4_hf.data import LabeledTrainDataset, UnlabeledTrainDataset, load_segmentation_dataset
from des4_hf.data.augment import (
    AugmentConfig,
    Geometry,
    apply_geometry,
    cutmix_box,
    item_generator,
    sample_geometry,
    strong_photometric,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
NUM_CLASSES = 6
# Colours far apart, all channels <= 120 so a brightness factor <= 2 never clips.
COLORS = torch.tensor(
    [[10, 10, 10], [120, 10, 10], [10, 120, 10], [10, 10, 120], [120, 120, 10], [10, 120, 120]],
    dtype=torch.uint8,
)


def weak_augment(image: torch.Tensor, mask: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> tuple:
    """The weak view as the training datasets draw it: sampled geometry, then applied."""
    return apply_geometry(image, mask, sample_geometry(image.shape[-2], image.shape[-1], config, generator))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def coded_pair(height: int = 90, width: int = 120, block: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of blocks and an image whose colour encodes the mask's class at every pixel."""
    rows = torch.arange(height)[:, None] // block
    cols = torch.arange(width)[None, :] // block
    mask = ((rows * 7 + cols * 3) % NUM_CLASSES).to(torch.uint8)
    image = COLORS[mask.long()].permute(2, 0, 1).contiguous()
    return image, mask


def decode_colors(image: torch.Tensor) -> torch.Tensor:
    distances = ((image.float()[None] - COLORS.float()[:, :, None, None]) ** 2).sum(1)
    return distances.argmin(0)


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3×3 neighbourhood has one class (bilinear blending only touches edges)."""
    m = mask.long()
    padded = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    same = torch.ones_like(m, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + m.shape[0], dx : dx + m.shape[1]] == m
    return same


@pytest.mark.parametrize("seed", range(6))
def test_weak_keeps_image_and_mask_aligned(seed: int) -> None:
    image, mask = coded_pair()
    config = AugmentConfig(crop_size=96)
    crop, mask_crop, padding = weak_augment(image, mask, config, item_generator(seed, 0, 0))
    assert crop.shape == (3, 96, 96) and mask_crop.shape == (96, 96) and padding.shape == (96, 96)
    # Padding: 255 in the mask exactly where the crop left the image; black image there.
    assert torch.equal(mask_crop == 255, padding)
    assert (crop[:, padding] == 0).all()
    valid = ~padding & interior(mask_crop)
    assert valid.sum() > 100
    assert torch.equal(decode_colors(crop)[valid], mask_crop.long()[valid])


def test_geometry_flip_and_padding_size() -> None:
    image, mask = coded_pair()
    plain = apply_geometry(image, mask, Geometry(scale=0.5, top=0, left=0, flip=False, crop_size=80))
    flipped = apply_geometry(image, mask, Geometry(scale=0.5, top=0, left=0, flip=True, crop_size=80))
    for a, b in zip(plain, flipped, strict=False):
        assert torch.equal(a.flip(-1), b)
    # 120×90 at scale 0.5 = 60×45 inside an 80×80 crop.
    assert int((~plain[2]).sum()) == 60 * 45 and (plain[1][:45, :60] != 255).all()


def test_scale_range_is_respected() -> None:
    image, mask = coded_pair()
    config = AugmentConfig(crop_size=400, scale_range=(0.5, 2.0), hflip_prob=0.0)
    areas = []
    for index in range(40):
        _, _, padding = weak_augment(image, mask, config, item_generator(0, 0, index))
        areas.append(int((~padding).sum()) / (120 * 90))
    # area of the (whole, since the crop is larger) scaled image = scale²
    assert 0.25 * 0.95 <= min(areas) and max(areas) <= 4.0 * 1.05 and max(areas) - min(areas) > 1.0


def test_strong_shares_weak_geometry(tmp_path: Path) -> None:
    image, mask = coded_pair()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "x.png")
    ds = load_segmentation_dataset("folder", images=tmp_path)["train"]
    brightness_only = AugmentConfig(
        crop_size=96,
        jitter_prob=1.0,
        brightness=0.5,
        contrast=0,
        saturation=0,
        hue=0,
        grayscale_prob=0.0,
        blur_prob=0.0,
    )
    std, mean = torch.tensor(STD).view(3, 1, 1), torch.tensor(MEAN).view(3, 1, 1)
    for index_seed in range(4):
        item = UnlabeledTrainDataset(ds, dataclasses.replace(brightness_only, crop_size=96), MEAN, STD, seed=index_seed)[0]
        weak = ((item["pixel_values_weak"] * std + mean) * 255).round()
        strong = ((item["pixel_values_strong"] * std + mean) * 255).round()
        valid = ~item["padding_mask"]
        bright = valid[None] & (weak > 100)
        factor = (strong[bright] / weak[bright]).median()
        # strong = round(factor · weak) pixel by pixel: same crop, only the colour changed
        assert (strong[:, valid] - factor * weak[:, valid]).abs().max() <= 1.5, (
            "strong must be a photometric change of the same crop"
        )
        assert (item["pixel_values_strong"][:, item["padding_mask"]] == 0).all()
    identity = dataclasses.replace(brightness_only, jitter_prob=0.0)
    item = UnlabeledTrainDataset(ds, dataclasses.replace(identity, crop_size=96), MEAN, STD, seed=0)[0]
    assert torch.equal(item["pixel_values_weak"], item["pixel_values_strong"])


def test_strong_photometric_changes_colour_not_shape() -> None:
    image, _ = coded_pair()
    config = AugmentConfig(jitter_prob=1.0, grayscale_prob=1.0, blur_prob=0.0)
    gray = strong_photometric(image, config, item_generator(0, 0, 0))
    assert gray.dtype == torch.uint8 and gray.shape == image.shape
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    blurred = strong_photometric(
        image,
        AugmentConfig(jitter_prob=0, grayscale_prob=0, blur_prob=1.0, blur_sigma=(1.5, 2)),
        item_generator(0, 0, 1),
    )
    assert blurred.float().std() < image.float().std()  # edges softened
    assert abs(blurred.float().mean() - image.float().mean()) < 2.0  # but the mean colour kept
    default = strong_photometric(image, AugmentConfig(), item_generator(0, 0, 2))
    assert default.shape == image.shape and not torch.equal(default, image)


def test_cutmix_box_area_and_shape() -> None:
    config = AugmentConfig()
    areas = []
    for index in range(200):
        box = cutmix_box(64, config, item_generator(0, 0, index))
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(box.sum()) == height * width  # one solid rectangle
        assert 0.3 * 0.8 <= height / width <= (1 / 0.3) * 1.25
        areas.append(float(box.float().mean()))
    # 2 %–40 % of the crop, up to rounding of the box sides at 64 px
    assert 0.015 <= min(areas) and max(areas) <= 0.42
    assert np.mean(areas) == pytest.approx(0.21, abs=0.04)
    assert not cutmix_box(64, dataclasses.replace(config, cutmix_prob=0.0), item_generator(0, 0, 0)).any()
    assert cutmix_box((32, 48), config, item_generator(0, 0, 0)).shape == (32, 48)


@pytest.fixture(scope="module")
def camvid_subset(camvid_root: Path):
    return load_segmentation_dataset("camvid", root=camvid_root)["train"].select(range(4))


def test_labeled_dataset_on_camvid(camvid_subset) -> None:
    ds = LabeledTrainDataset(camvid_subset, 513, MEAN, STD, seed=0)
    for index in range(2):
        item = ds[index]
        assert item["pixel_values"].shape == (3, 513, 513) and item["pixel_values"].dtype == torch.float32
        assert item["labels"].shape == (513, 513) and item["labels"].dtype == torch.int64
        values = set(item["labels"].unique().tolist())
        assert values <= set(range(11)) | {255}
        assert torch.isfinite(item["pixel_values"]).all()
    # a 480×360 frame never fills a 513 crop at scale < 1.0: those crops are padded with 255
    padded = LabeledTrainDataset(camvid_subset, AugmentConfig(crop_size=513, scale_range=(0.5, 0.9)), MEAN, STD)[
        0
    ]
    assert (padded["labels"] == 255).float().mean() > 0.2


def test_reproducible_across_epochs_instances_and_workers(camvid_subset) -> None:
    def make():
        return UnlabeledTrainDataset(camvid_subset, 64, MEAN, STD, seed=7)

    a, b = make(), make()
    first = a[1]
    for key, value in b[1].items():
        assert torch.equal(value, first[key]), key
    a.set_epoch(1)
    assert not torch.equal(a[1]["pixel_values_weak"], first["pixel_values_weak"])
    a.set_epoch(0)
    assert torch.equal(a[1]["pixel_values_strong"], first["pixel_values_strong"])  # a resumed epoch repeats
    labeled = LabeledTrainDataset(camvid_subset, 64, MEAN, STD, seed=7)
    assert not torch.equal(labeled[1]["pixel_values"], first["pixel_values_weak"])  # separate streams

    def batches(num_workers: int) -> list[dict[str, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(make(), batch_size=2, num_workers=num_workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    for x, y in zip(serial, parallel, strict=False):
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_cutmix_probability_leaves_that_share_of_views_unmixed(tmp_path: Path) -> None:
    """SPEC §2.9 option: ``cutmix_prob`` from the recipe reaches the unlabeled views; 1 − p of the boxes are empty."""
    from des4_hf.training.config import TrainConfig

    for p, low, high in ((1.0, 1.0, 1.0), (0.5, 0.35, 0.65), (0.0, 0.0, 0.0)):
        config = AugmentConfig(cutmix_prob=p)
        mixed = [bool(cutmix_box(64, config, torch.Generator().manual_seed(seed)).any()) for seed in range(200)]
        assert low <= np.mean(mixed) <= high, (p, np.mean(mixed))
    assert TrainConfig(cutmix_prob=0.25, strong_views=2).augment_config() == AugmentConfig(cutmix_prob=0.25,
                                                                                         strong_views=2)


def test_a_second_strong_view_leaves_the_first_as_it_was(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    ds = load_segmentation_dataset("folder", images=tmp_path)["train"]
    one = UnlabeledTrainDataset(ds, AugmentConfig(crop_size=64), MEAN, STD, seed=3)[0]
    two = UnlabeledTrainDataset(ds, AugmentConfig(crop_size=64, strong_views=2), MEAN, STD, seed=3)[0]
    assert set(two) == set(one) | {"pixel_values_strong_2", "cutmix_mask_2"}
    for key in one:
        assert torch.equal(one[key], two[key]), key
    assert not torch.equal(two["pixel_values_strong"], two["pixel_values_strong_2"])
