"""Loaders (CamVid, VOC, Cityscapes, folder, Hub schemas), class counts and bad-data errors.

VOC-, Cityscapes- and Hub-schema fixtures are built in tmp_path from a few CamVid frames
(downscaled to keep the suite fast); nothing is downloaded and nothing is copied into the repo.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from des4_hf.data import (
    CITYSCAPES_CLASSES,
    DATASET_KINDS,
    VOC_CLASSES,
    DataError,
    EvalDataset,
    LabeledTrainDataset,
    SemiSupervisedSplit,
    UnlabeledTrainDataset,
    cityscapes_label_id_to_train_id,
    class_pixel_counts,
    get_class_names,
    get_dataset_metadata,
    load_segmentation_dataset,
    voc_palette,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL = (120, 90)  # W, H of the fixture images


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _camvid_pair(camvid_root: Path, id_: str) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(camvid_root / "JPEGImages" / f"{id_}.jpg").convert("RGB").resize(SMALL, Image.BILINEAR)
    mask = np.asarray(
        Image.open(camvid_root / "SegmentationClass" / f"{id_}.png").resize(SMALL, Image.NEAREST)
    )
    return image, mask


def _ids(camvid_root: Path, split: str, n: int) -> list[str]:
    return (camvid_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]


def _palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


@pytest.fixture(scope="module")
def voc_root(camvid_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOC layout: 4 'SBD' train ids (2 of them fine), 2 val ids. Masks: CamVid classes + 1 (0..11)."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    train, val = _ids(camvid_root, "train", 4), _ids(camvid_root, "val", 2)
    for id_ in train + val:
        image, mask = _camvid_pair(camvid_root, id_)
        image.save(root / "JPEGImages" / f"{id_}.jpg", quality=95)
        voc_mask = np.where(mask == 255, 255, mask.astype(np.int64) + 1).astype(np.uint8)
        if id_ in train[:2] or id_ in val:
            _palette_png(voc_mask, root / "SegmentationClass" / f"{id_}.png")
        if id_ in train or id_ in val:
            Image.fromarray(voc_mask, mode="L").save(root / "SegmentationClassAug" / f"{id_}.png")
        np.save(root / f"{id_}.npy", voc_mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(train[:2]))
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(val))
    return root


# ------------------------------------------------------------------------------------ CamVid


def test_camvid_counts_columns_and_values(camvid_root: Path) -> None:
    ds = load_segmentation_dataset("camvid", root=camvid_root)
    assert {k: len(v) for k, v in ds.items()} == {"train": 367, "val": 101}
    assert ds["train"].column_names == ["id", "image", "label"]
    assert isinstance(ds["train"].features["image"], datasets.Image)
    assert isinstance(ds["train"].features["label"], datasets.Image)
    assert get_class_names(ds) == (camvid_root / "classes.txt").read_text().split()
    assert len(get_class_names(ds["val"])) == 11
    row = ds["val"][0]
    assert row["image"].size == (480, 360) and row["label"].size == (480, 360)
    values = set(np.unique(np.asarray(row["label"])).tolist())
    assert values <= set(range(11)) | {255} and len(values) > 3


def test_camvid_default_root(camvid_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DES4_CAMVID_ROOT", str(camvid_root))
    ds = load_segmentation_dataset("camvid")
    assert len(ds["train"]) == 367
    assert get_dataset_metadata(ds)["ignore_index"] == 255


def test_camvid_class_counts_match_readme_and_are_cached(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = load_segmentation_dataset("camvid", root=camvid_root)["train"]
    split = SemiSupervisedSplit(tuple(train["id"]), (), "camvid-full")
    counts = class_pixel_counts(train, 11, tmp_path, split.fingerprint)
    assert counts.dtype == np.int64 and counts.shape == (11,)
    share = 100 * counts / counts.sum()
    # Shares published in ../shared/data/camvid/README.md (void excluded).
    readme = [17.54, 24.21, 1.02, 32.96, 4.67, 10.12, 1.22, 1.17, 6.11, 0.67, 0.30]
    np.testing.assert_allclose(share, readme, atol=0.01)
    assert counts.sum() < 367 * 480 * 360  # void pixels excluded
    (cache,) = tmp_path.glob(f"class_pixel_counts-{split.fingerprint}-11c-*.json")
    assert json.loads(cache.read_text())["counts"] == counts.tolist()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr("des4_hf.data.class_counts._count_one", boom)
    np.testing.assert_array_equal(class_pixel_counts(train, 11, tmp_path, split.fingerprint), counts)


# ------------------------------------------------------------------------------------ VOC


def test_voc_aug_and_fine_protocols(voc_root: Path) -> None:
    aug = load_segmentation_dataset("voc", root=voc_root)  # auto → aug (SegmentationClassAug exists)
    assert get_dataset_metadata(aug)["train_set"] == "aug"
    assert len(aug["train"]) == 4 and len(aug["val"]) == 2
    fine = load_segmentation_dataset("voc", root=voc_root, train_set="fine")
    assert len(fine["train"]) == 2
    assert get_class_names(fine) == list(VOC_CLASSES)
    # Palette PNG (SegmentationClass) and grey PNG (Aug) both decode to the same class indices.
    for ds in (aug["val"], fine["train"], aug["train"]):
        row = ds[0]
        np.testing.assert_array_equal(np.asarray(row["label"]), np.load(voc_root / f"{row['id']}.npy"))
    # Both protocols select by id out of the augmented train set.
    split = SemiSupervisedSplit(
        fine["train"]["id"], [i for i in aug["train"]["id"] if i not in fine["train"]["id"]]
    )
    labeled, unlabeled = split.apply(aug)
    assert len(labeled) == 2 and len(unlabeled) == 2 and "label" not in unlabeled.column_names


def test_voc_train_aug_list_file_is_used(voc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    shutil.copytree(voc_root, root)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    (root / "ImageSets/Segmentation/train_aug.txt").write_text(ids[0])
    assert load_segmentation_dataset("voc", root=root)["train"]["id"] == [ids[0]]


def test_voc_missing_image_names_file(voc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    shutil.copytree(voc_root, root)
    victim = (root / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    (root / "JPEGImages" / f"{victim}.jpg").unlink()
    with pytest.raises(DataError, match=f"{victim}.jpg does not exist.*Fix"):
        load_segmentation_dataset("voc", root=root)


def test_voc_missing_root_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="JPEGImages.*Fix: pass root="):
        load_segmentation_dataset("voc", root=tmp_path)


# ------------------------------------------------------------------------------------ Cityscapes

LABEL_IDS = np.array([7, 11, 17, 7, 8, 21, 20, 13, 26, 24, 33, 0, 1, 4, 31], dtype=np.uint8)


def _cityscapes_root(camvid_root: Path, root: Path) -> Path:
    for split, ids in (("train", _ids(camvid_root, "train", 3)), ("val", _ids(camvid_root, "val", 1))):
        for k, id_ in enumerate(ids):
            city = "aachen" if k % 2 == 0 else "ulm"
            frame = f"{city}_{k:06d}_000019"
            image, mask = _camvid_pair(camvid_root, id_)
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            image.save(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png")
            label_ids = np.where(mask == 255, 0, LABEL_IDS[np.minimum(mask, 14)]).astype(np.uint8)
            Image.fromarray(label_ids, mode="L").save(
                root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png"
            )
    return root


def test_cityscapes_label_id_table() -> None:
    lut = cityscapes_label_id_to_train_id()
    assert lut[7] == 0 and lut[8] == 1 and lut[26] == 13 and lut[33] == 18
    assert lut[0] == lut[1] == lut[4] == lut[255] == 255
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_cityscapes_maps_label_ids_to_train_ids_once(camvid_root: Path, tmp_path: Path) -> None:
    root = _cityscapes_root(camvid_root, tmp_path / "cityscapes")
    cache = tmp_path / "cache"
    ds = load_segmentation_dataset("cityscapes", root=root, cache_dir=cache)
    assert len(ds["train"]) == 3 and len(ds["val"]) == 1
    assert get_class_names(ds) == list(CITYSCAPES_CLASSES)
    row = ds["train"][0]
    assert row["id"] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    raw = np.asarray(Image.open(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    label = np.asarray(row["label"])
    np.testing.assert_array_equal(label, cityscapes_label_id_to_train_id()[raw])
    assert set(np.unique(label).tolist()) <= set(range(19)) | {255} and (label == 255).any()
    converted = sorted(cache.rglob("*_gtFine_labelTrainIds.png"))
    assert len(converted) == 4
    mtimes = [p.stat().st_mtime_ns for p in converted]
    load_segmentation_dataset("cityscapes", root=root, cache_dir=cache)  # reused, not rewritten
    assert [p.stat().st_mtime_ns for p in converted] == mtimes
    # A standard-list-style split selects by the relative image path.
    split = SemiSupervisedSplit([row["id"]], ds["train"]["id"][1:], "cityscapes-mini")
    labeled, unlabeled = split.apply(ds)
    assert labeled["id"] == [row["id"]] and len(unlabeled) == 2


def test_cityscapes_prefers_label_train_ids(camvid_root: Path, tmp_path: Path) -> None:
    root = _cityscapes_root(camvid_root, tmp_path / "cityscapes")
    gt = root / "gtFine/val/aachen"
    train_ids = np.full((SMALL[1], SMALL[0]), 5, dtype=np.uint8)
    Image.fromarray(train_ids, mode="L").save(gt / "aachen_000000_000019_gtFine_labelTrainIds.png")
    ds = load_segmentation_dataset("cityscapes", root=root, cache_dir=tmp_path / "cache")
    assert np.unique(np.asarray(ds["val"][0]["label"])).tolist() == [5]


# ------------------------------------------------------------------------------------ folders


def _folder(camvid_root: Path, tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    for k, id_ in enumerate(_ids(camvid_root, "train", n)):
        sub = "a" if k % 2 == 0 else "b"
        (images / sub).mkdir(parents=True, exist_ok=True)
        (masks / sub).mkdir(parents=True, exist_ok=True)
        image, mask = _camvid_pair(camvid_root, id_)
        image.save(images / sub / f"{id_}.jpg")
        Image.fromarray(mask, mode="L").save(masks / sub / f"{id_}.png")
    return images, masks


def test_folder_pairs_and_unlabeled_folder(camvid_root: Path, tmp_path: Path) -> None:
    images, masks = _folder(camvid_root, tmp_path)
    ds = load_segmentation_dataset("folder", images=images, masks=masks, num_classes=11)
    assert len(ds["train"]) == 3 and ds["train"].column_names == ["id", "image", "label"]
    assert all(i.startswith(("a/", "b/")) for i in ds["train"]["id"])
    assert len(get_class_names(ds)) == 11
    unlabeled = load_segmentation_dataset("folder", images=images)
    assert unlabeled["train"].column_names == ["id", "image"] and len(unlabeled["train"]) == 3
    with pytest.raises(DataError, match="class names"):
        get_class_names(unlabeled)
    # The unlabeled folder feeds the unlabeled loader directly.
    item = UnlabeledTrainDataset(unlabeled["train"], 64, MEAN, STD)[0]
    assert item["pixel_values_weak"].shape == (3, 64, 64)


def test_folder_missing_mask_or_image_named(camvid_root: Path, tmp_path: Path) -> None:
    images, masks = _folder(camvid_root, tmp_path)
    victim = sorted(masks.rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"missing mask for image .*{victim.stem}.jpg.*Fix"):
        load_segmentation_dataset("folder", images=images, masks=masks)
    for mask in (victim, masks / "orphan.png"):  # the first mask back (contents are read lazily), one orphan
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(mask)
    with pytest.raises(DataError, match="missing image for mask .*orphan.png.*Fix"):
        load_segmentation_dataset("folder", images=images, masks=masks)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="split 'train' from .*empty.* is empty"):
        load_segmentation_dataset("folder", images=tmp_path / "empty")


# ------------------------------------------------------------------------------------ lazy bad data


def test_size_mismatch_values_and_unreadable_files_name_the_file(camvid_root: Path, tmp_path: Path) -> None:
    images, masks = _folder(camvid_root, tmp_path)
    files = sorted(masks.rglob("*.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(files[0])  # size mismatch
    bad_values = np.asarray(Image.open(files[1])).copy()
    bad_values[0, 0] = 42
    Image.fromarray(bad_values, mode="L").save(files[1])  # value outside [0, 11) ∪ {255}
    files[2].write_bytes(b"this is not a png")  # unreadable
    ds = load_segmentation_dataset("folder", images=images, masks=masks, num_classes=11)["train"]
    position = {i: k for k, i in enumerate(ds["id"])}
    labeled = LabeledTrainDataset(ds, 64, MEAN, STD)
    ids = [f.relative_to(masks).with_suffix("").as_posix() for f in files]
    with pytest.raises(DataError, match=f"{files[0].name}.*\\(W×H\\).*Fix"):
        labeled[position[ids[0]]]
    with pytest.raises(DataError, match=f"{files[1].name}.*\\[42\\].*outside \\[0, 11\\).*Fix"):
        labeled[position[ids[1]]]
    with pytest.raises(DataError, match=f"cannot decode .*{files[2].name}.*Fix"):
        labeled[position[ids[2]]]
    with pytest.raises(DataError, match=files[1].name):
        class_pixel_counts(ds, 11, tmp_path / "cache", "fp")


# ------------------------------------------------------------------------------------ Hub schemas


def _hub_rows(camvid_root: Path, n: int, mask_fn) -> dict[str, list]:
    rows: dict[str, list] = {"image": [], "mask": [], "id": []}
    for id_ in _ids(camvid_root, "train", n):
        image, mask = _camvid_pair(camvid_root, id_)
        rows["image"].append(image)
        rows["mask"].append(mask_fn(mask))
        rows["id"].append(id_)
    return rows


def _voc_rgb(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(voc_palette()[mask])  # RGB colour-coded mask, void → (224, 224, 192)


def test_hub_parquet_rgb_masks_without_ids(camvid_root: Path, tmp_path: Path) -> None:
    """jxie/pascal-voc-2012 schema: image/mask, splits train/val, no id column, RGB masks here."""
    rows = _hub_rows(camvid_root, 3, _voc_rgb)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    folder = tmp_path / "jxie"
    folder.mkdir()
    for split, sl in (("train", slice(0, 2)), ("validation", slice(2, 3))):
        part = datasets.Dataset.from_dict(
            {"image": rows["image"][sl], "mask": rows["mask"][sl]}, features=features
        )
        part.to_parquet(folder / f"{split}-00000-of-00001.parquet")
    ds = load_segmentation_dataset("jxie/pascal-voc-2012", name=str(folder), cache_dir=str(tmp_path / "hf"))
    assert set(ds) == {"train", "val"} and len(ds["train"]) == 2
    assert ds["train"].column_names == ["id", "image", "label"] and ds["train"]["id"] == [
        "train-0",
        "train-1",
    ]
    assert get_class_names(ds) == list(VOC_CLASSES)
    _, expected = _camvid_pair(camvid_root, rows["id"][0])
    np.testing.assert_array_equal(np.asarray(ds["train"][0]["label"]), expected)
    with pytest.raises(DataError, match="no id column.*generated.*random"):
        SemiSupervisedSplit([rows["id"][0]], [rows["id"][1]], "voc-x").apply(ds)
    SemiSupervisedSplit.random(ds, labeled=1, seed=0).apply(ds)  # random splits still work


def test_hub_save_to_disk_with_id_column(camvid_root: Path, tmp_path: Path) -> None:
    """shijli/voc2012 schema: id/image/mask with palette masks → standard lists apply by id."""

    def palette(mask: np.ndarray) -> Image.Image:
        im = Image.fromarray(mask, mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
        return im

    rows = _hub_rows(camvid_root, 3, palette)
    features = datasets.Features(
        {"id": datasets.Value("string"), "image": datasets.Image(), "mask": datasets.Image()}
    )
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        tmp_path / "s"
    )
    ds = load_segmentation_dataset(
        "hub", name=str(tmp_path / "s"), id_column="id", label_column="mask", class_names=VOC_CLASSES
    )
    assert ds["train"]["id"] == rows["id"]
    labeled, unlabeled = SemiSupervisedSplit([rows["id"][2]], rows["id"][:2], "ids").apply(ds)
    np.testing.assert_array_equal(np.asarray(labeled[0]["label"]), np.asarray(rows["mask"][2]))
    assert unlabeled["id"] == rows["id"][:2]
    preset = load_segmentation_dataset("shijli/voc2012", name=str(tmp_path / "s"))
    assert preset["train"]["id"] == rows["id"]


def test_hub_cityscapes_copy_maps_label_ids(camvid_root: Path, tmp_path: Path) -> None:
    """A Cityscapes copy with image/semantic_segmentation holding labelIds."""
    rows = _hub_rows(
        camvid_root,
        2,
        lambda m: Image.fromarray(
            np.where(m == 255, 0, LABEL_IDS[np.minimum(m, 14)]).astype(np.uint8), mode="L"
        ),
    )
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    data = {"image": rows["image"], "semantic_segmentation": rows["mask"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(
        tmp_path / "c"
    )
    ds = load_segmentation_dataset("cityscapes-hub", name=str(tmp_path / "c"))
    assert get_class_names(ds) == list(CITYSCAPES_CLASSES)
    label = np.asarray(ds["train"][1]["label"])
    np.testing.assert_array_equal(label, cityscapes_label_id_to_train_id()[np.asarray(rows["mask"][1])])
    assert label.max() == 255 and set(np.unique(label).tolist()) - {255} <= set(range(19))


def test_hub_wrong_column_says_which_exist(camvid_root: Path, tmp_path: Path) -> None:
    rows = _hub_rows(camvid_root, 1, lambda m: Image.fromarray(m, mode="L"))
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    data = {"image": rows["image"], "mask": rows["mask"]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(tmp_path / "w")
    with pytest.raises(DataError, match="no column 'seg'.*columns: \\['image', 'mask'\\].*label_column="):
        load_segmentation_dataset("hub", name=str(tmp_path / "w"), label_column="seg")


def test_unknown_kind_lists_allowed() -> None:
    with pytest.raises(DataError, match="unknown dataset kind 'coco'.*camvid"):
        load_segmentation_dataset("coco")


# ------------------------------------------------------------------------------------ eval dataset


def test_eval_dataset_full_resolution(camvid_root: Path) -> None:
    val = load_segmentation_dataset("camvid", root=camvid_root)["val"].select(range(2))
    ev = EvalDataset(val, MEAN, STD)
    item = ev[0]
    assert item["pixel_values"].shape == (3, 360, 480) and item["labels"].shape == (360, 480)
    assert item["labels"].dtype == torch.int64 and item["id"] == val[0]["id"]
    pixels = item["pixel_values"]
    assert torch.isfinite(pixels).all() and -2.2 < pixels.min() < 0 < pixels.max() < 2.7


def test_class_count_cache_follows_edited_masks(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / f"{index}.png")
        Image.fromarray(np.full((8, 8), index, np.uint8)).save(masks / f"{index}.png")
    ds = load_segmentation_dataset("folder", images=images, masks=masks, num_classes=3)["train"]
    assert class_pixel_counts(ds, 3, tmp_path / "cache", "fp").tolist() == [64, 64, 64]
    Image.fromarray(np.full((8, 8), 1, np.uint8)).save(masks / "0.png")  # a mask corrected after the first run
    os.utime(masks / "0.png", ns=(10**18, 10**18))  # a clearly different modification time, whatever the clock
    assert class_pixel_counts(ds, 3, tmp_path / "cache", "fp").tolist() == [0, 128, 64]


def test_sixteen_bit_images_are_normalised_like_their_eight_bit_versions(tmp_path: Path) -> None:
    """A 16-bit PNG reached values near 1140 after normalisation (uint16 divided by 255); it must match the 8-bit
    image it scales to, on the training and evaluation paths alike."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    for name, array in (("wide", wide), ("narrow", np.round(wide / 65535 * 255).astype(np.uint8))):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "masks").mkdir()
        Image.fromarray(array).save(tmp_path / name / "images" / "a.png")
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / name / "masks" / "a.png")
    items = [EvalDataset(load_segmentation_dataset("folder", images=tmp_path / name / "images", masks=tmp_path / name /
                                                   "masks", num_classes=2)["train"], MEAN, STD)[0]["pixel_values"]
             for name in ("wide", "narrow")]
    assert items[0].abs().max() < 3
    torch.testing.assert_close(items[0], items[1], rtol=0, atol=1.01 / 255 / min(STD))  # within one 8-bit level


def test_two_image_files_of_one_id_are_refused_with_their_names(tmp_path: Path) -> None:
    """``X.png`` beside ``X.jpg`` in JPEGImages/ (masks copied there by mistake) used to be taken as the image."""
    root = tmp_path / "camvid"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for id_ in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / f"{id_}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "SegmentationClass" / f"{id_}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "JPEGImages" / "b.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"JPEGImages: b\.jpg and b\.png share a name"):
        load_segmentation_dataset("camvid", root=root)


# -- Hub presets as the real copies store them (issue 16) ----------------------------------------------------------
def _synthetic_rows(n: int, mask_fn, size: tuple[int, int] = (24, 32)) -> dict[str, list]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]
    return {"image": images, "mask": [mask_fn(i, rng) for i in range(n)]}


def _cityscapes_label_ids(index: int, rng) -> np.ndarray:
    return LABEL_IDS[rng.integers(0, len(LABEL_IDS), (24, 32))]  # road 7, building 11, sky 23 … and void 0–4


def test_the_chris1_cityscapes_preset_reads_label_ids_stored_as_rgb_with_equal_channels(tmp_path: Path) -> None:
    rows = _synthetic_rows(3, _cityscapes_label_ids)
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    data = {"image": rows["image"], "semantic_segmentation": [Image.fromarray(np.repeat(m[..., None], 3, 2), "RGB")
                                                              for m in rows["mask"]]}  # as Chris1/cityscapes does
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(tmp_path / "c")
    assert "Chris1/cityscapes" in DATASET_KINDS  # addressed by its Hub id
    ds = load_segmentation_dataset("Chris1/cityscapes", name=str(tmp_path / "c"))  # failed on row 0 before
    assert get_class_names(ds) == list(CITYSCAPES_CLASSES)
    for row in range(3):
        np.testing.assert_array_equal(np.asarray(ds["train"][row]["label"]),
                                      cityscapes_label_id_to_train_id()[rows["mask"][row]])


def test_a_cityscapes_copy_holding_train_ids_is_detected_not_turned_into_255(tmp_path: Path) -> None:
    rows = _synthetic_rows(2, lambda i, rng: np.where(rng.random((24, 32)) < 0.1, 255,
                                                      rng.integers(0, 19, (24, 32))).astype(np.uint8))
    folder = tmp_path / "trainids"
    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    datasets.Dataset.from_dict({"image": rows["image"], "semantic_segmentation": [Image.fromarray(m, "L") for m in
                                                                                  rows["mask"]]},
                               features=features).to_parquet(str(folder / "train-0.parquet"))
    ds = load_segmentation_dataset("Chris1/cityscapes", name=str(folder))
    for row in range(2):  # every pixel was 255 before (trainIds read as labelIds)
        np.testing.assert_array_equal(np.asarray(ds["train"][row]["label"]), rows["mask"][row])


def test_cityscapes_ids_that_fit_both_kinds_are_refused_with_the_fix(tmp_path: Path) -> None:
    rows = _synthetic_rows(1, lambda i, rng: rng.integers(0, 19, (24, 32)).astype(np.uint8))  # no 255, nothing > 18
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": rows["image"], "semantic_segmentation": [Image.fromarray(m, "L") for m in rows["mask"]]},
        features=features)}).save_to_disk(tmp_path / "c")
    with pytest.raises(DataError, match="fit both Cityscapes labelIds and trainIds.*label_format="):
        load_segmentation_dataset("Chris1/cityscapes", name=str(tmp_path / "c"))
    ds = load_segmentation_dataset("Chris1/cityscapes", name=str(tmp_path / "c"), label_format="cityscapes_train_ids")
    np.testing.assert_array_equal(np.asarray(ds["train"][0]["label"]), rows["mask"][0])


def test_the_voc_without_sbd_preset(tmp_path: Path) -> None:
    """nateraw/pascal-voc-2012: image/mask (palette PNGs), train / validation, no id column."""
    def palette_mask(index: int, rng) -> Image.Image:
        mask = Image.fromarray(np.where(rng.random((24, 32)) < 0.1, 255, rng.integers(0, 21, (24, 32))).astype(
            np.uint8), "P")
        mask.putpalette(voc_palette().flatten().tolist())
        return mask

    rows = _synthetic_rows(3, palette_mask)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": rows["image"][:2], "mask": rows["mask"][:2]}, features=features),
        "validation": datasets.Dataset.from_dict({"image": rows["image"][2:], "mask": rows["mask"][2:]},
                                                 features=features)}).save_to_disk(tmp_path / "v")
    assert "nateraw/pascal-voc-2012" in DATASET_KINDS
    ds = load_segmentation_dataset("nateraw/pascal-voc-2012", name=str(tmp_path / "v"))
    assert sorted(ds) == ["train", "val"] and get_class_names(ds) == list(VOC_CLASSES)
    np.testing.assert_array_equal(np.asarray(ds["val"][0]["label"]), np.asarray(rows["mask"][2]))
