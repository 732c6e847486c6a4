"""Standard split lists (packaged), files, seeded random splits, fingerprints, selection by id."""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import pytest

from des4_hf.data import DataError, SemiSupervisedSplit, list_standard_splits, split_lists_root

SHARED_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"


@pytest.mark.parametrize(
    ("name", "labeled", "total"),
    [
        ("voc-blended-1323", 1323, 10582),
        ("voc-blended-662", 662, 10582),
        ("voc-classic-92", 92, 10582),
        ("voc-classic-1464", 1464, 10582),
        ("cityscapes-744", 744, 2975),
        ("cityscapes-186", 186, 2975),
    ],
)
def test_standard_splits_by_name(name: str, labeled: int, total: int) -> None:
    split = SemiSupervisedSplit.from_name(name)
    assert split.name == name
    assert len(split.labeled_ids) == labeled
    assert len(split.labeled_ids) + len(split.unlabeled_ids) == total
    assert not set(split.labeled_ids) & set(split.unlabeled_ids)


def test_all_standard_names_load_and_ids_look_right() -> None:
    assert len(list_standard_splits()) == 13
    voc = SemiSupervisedSplit.from_name("voc-classic-183")
    assert all(len(i) == 11 and i[4] == "_" for i in voc.labeled_ids)  # 2007_000733
    city = SemiSupervisedSplit.from_name("cityscapes-372")
    assert all(
        i.startswith("leftImg8bit/train/") and i.endswith("_leftImg8bit.png") for i in city.labeled_ids
    )
    # Both VOC protocols draw from the same 10,582-image pool.
    blended = SemiSupervisedSplit.from_name("voc-blended-2646")
    assert set(voc.labeled_ids) | set(voc.unlabeled_ids) == set(blended.labeled_ids) | set(
        blended.unlabeled_ids
    )


def test_aliases_and_unknown_name() -> None:
    assert (
        SemiSupervisedSplit.from_name("voc-aug-1323").labeled_ids
        == SemiSupervisedSplit.from_name("voc-blended-1323").labeled_ids
    )
    with pytest.raises(DataError, match="unknown split name 'voc-blended-7'.*voc-blended-1323"):
        SemiSupervisedSplit.from_name("voc-blended-7")


def test_packaged_lists_match_shared_copy_and_keep_attribution() -> None:
    root = split_lists_root()
    assert "Apache-2.0" in (root / "README.md").read_text() and "U2PL" in (root / "README.md").read_text()
    if SHARED_SPLITS.is_dir():
        for f in SHARED_SPLITS.rglob("*.txt"):
            assert (root / f.relative_to(SHARED_SPLITS)).read_text() == f.read_text()


def test_from_file_package_relative_and_folder(tmp_path: Path) -> None:
    by_name = SemiSupervisedSplit.from_name("voc-blended-1323")
    assert SemiSupervisedSplit.from_file("splits/pascal/1323").labeled_ids == by_name.labeled_ids
    assert SemiSupervisedSplit.from_file("pascal/1323").fingerprint == by_name.fingerprint
    (tmp_path / "labeled.txt").write_text("a\nb\n")
    only_labeled = SemiSupervisedSplit.from_file(tmp_path)
    assert only_labeled.labeled_ids == ("a", "b") and only_labeled.unlabeled_ids == ()
    with pytest.raises(DataError, match="labeled.txt does not exist"):
        SemiSupervisedSplit.from_file(tmp_path / "nowhere")


def test_fingerprint_is_stable_and_order_independent() -> None:
    split = SemiSupervisedSplit.from_name("voc-blended-1323")
    assert split.fingerprint == "9f8788303788ebca"  # changes only if the lists change
    shuffled = list(split.labeled_ids)
    random.Random(0).shuffle(shuffled)
    assert SemiSupervisedSplit(shuffled, split.unlabeled_ids).fingerprint == split.fingerprint
    moved = SemiSupervisedSplit(split.labeled_ids[1:], (split.labeled_ids[0], *split.unlabeled_ids))
    assert moved.fingerprint != split.fingerprint


def test_random_split_reproducible_and_order_independent() -> None:
    ids = [f"img_{i:04d}" for i in range(367)]
    a = SemiSupervisedSplit.random(ids, labeled=1 / 8, seed=0)
    assert len(a.labeled_ids) == 46 and len(a.unlabeled_ids) == 321  # round(367 / 8)
    assert SemiSupervisedSplit.random(list(reversed(ids)), labeled=1 / 8, seed=0) == a
    assert SemiSupervisedSplit.random(ids, labeled=1 / 8, seed=1).labeled_ids != a.labeled_ids
    assert len(SemiSupervisedSplit.random(ids, labeled=20, seed=0).labeled_ids) == 20
    assert set(a.labeled_ids) | set(a.unlabeled_ids) == set(ids)
    for bad in (0, 368, 1.5, -0.1):
        with pytest.raises(DataError):
            SemiSupervisedSplit.random(ids, labeled=bad)
    with pytest.raises(DataError, match="not unique"):
        SemiSupervisedSplit.random(["a", "a", "b"], labeled=1)


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    split = SemiSupervisedSplit.random([str(i) for i in range(30)], labeled=5, seed=3)
    split.save(tmp_path / "run" / "split")
    again = SemiSupervisedSplit.from_file(tmp_path / "run" / "split")
    assert again == split and again.fingerprint == split.fingerprint and again.name == split.name


def test_apply_selects_by_id_and_errors_are_clear() -> None:
    ds = datasets.Dataset.from_dict({"id": ["a", "b", "c", "d"], "x": [0, 1, 2, 3], "label": [0, 1, 2, 3]})
    labeled, unlabeled = SemiSupervisedSplit(["c", "a"], ["d"]).apply(datasets.DatasetDict({"train": ds}))
    assert labeled["id"] == ["c", "a"] and labeled["x"] == [2, 0]
    assert unlabeled["id"] == ["d"] and "label" not in unlabeled.column_names
    with pytest.raises(DataError, match="2 of 3 ids are not in the dataset.*'zz'"):
        SemiSupervisedSplit(["a", "zz"], ["yy"]).apply(ds)
    with pytest.raises(DataError, match="no id column.*id_column="):
        SemiSupervisedSplit(["a"], []).apply(ds.remove_columns("id"))
    with pytest.raises(DataError, match="SegmentationClassAug"):
        SemiSupervisedSplit.from_name("voc-classic-92").apply(ds)
    with pytest.raises(DataError, match="both labeled and unlabeled"):
        SemiSupervisedSplit(["a"], ["a"])


def test_the_unlabeled_stream_can_include_the_labeled_images_without_their_masks() -> None:
    """Full labels leave no unlabeled image; a semi-supervised row then draws the labeled ones, masks dropped."""
    ds = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "x": [0, 1, 2], "label": [0, 1, 2]})
    labeled, unlabeled = SemiSupervisedSplit(["c", "a"], ["b"]).apply(ds, unlabeled_includes_labeled=True)
    assert labeled["id"] == ["c", "a"] and unlabeled["id"] == ["c", "a", "b"] and unlabeled["x"] == [2, 0, 1]
    assert "label" not in unlabeled.column_names
    _, none = SemiSupervisedSplit(["a", "b", "c"], []).apply(ds)
    _, every = SemiSupervisedSplit(["a", "b", "c"], []).apply(ds, unlabeled_includes_labeled=True)
    assert len(none) == 0 and every["id"] == ["a", "b", "c"]
