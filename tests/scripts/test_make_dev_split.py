"""``scripts/make_dev_split.py``: the held-out development set used to choose recipe settings without val."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_dev_split", REPO_ROOT / "scripts" / "make_dev_split.py")
assert _spec is not None and _spec.loader is not None
make_dev_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_dev_split)


def _voc_folder(root: Path, train_ids: list[str]) -> Path:
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    return root


def _read(path: Path) -> list[str]:
    return path.read_text().split()


def test_holds_out_the_last_frames_of_one_sequence(tmp_path: Path) -> None:
    ids = ["0016E5_00390", "0001TP_006690", "0016E5_00420", "Seq05VD_f00000", "0016E5_00360", "0016E5_00450"]
    source = _voc_folder(tmp_path / "src", ids)
    out = tmp_path / "dev"
    assert make_dev_split.main(["--data-root", str(source), "--out", str(out), "--holdout", "2"]) == 0
    train = _read(out / "ImageSets" / "Segmentation" / "train.txt")
    val = _read(out / "ImageSets" / "Segmentation" / "val.txt")
    assert val == ["0016E5_00420", "0016E5_00450"]  # the last two 0016E5 frames, not the first two
    assert train == ["0016E5_00390", "0001TP_006690", "Seq05VD_f00000", "0016E5_00360"]  # source order kept
    for name in make_dev_split.LINKED:  # linked, not copied
        assert (out / name).is_symlink() and (out / name).resolve() == (source / name).resolve()
    # Running again into the same folder is allowed and gives the same lists.
    assert make_dev_split.main(["--data-root", str(source), "--out", str(out), "--holdout", "2"]) == 0
    assert _read(out / "ImageSets" / "Segmentation" / "val.txt") == val


def test_bad_arguments_are_refused_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _voc_folder(tmp_path / "src", ["0016E5_00390", "0001TP_006690"])
    assert make_dev_split.main(["--data-root", str(source), "--out", str(tmp_path / "a"), "--holdout", "5"]) == 2
    assert "--holdout 5" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert make_dev_split.main(["--data-root", str(source), "--out", str(source), "--holdout", "1"]) == 2
    assert "--out must differ" in capsys.readouterr().err
    assert _read(source / "ImageSets" / "Segmentation" / "train.txt") == ["0016E5_00390", "0001TP_006690"]
    assert make_dev_split.main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    assert "VOC-layout" in capsys.readouterr().err


def test_camvid_dev_split_is_disjoint_and_complete(camvid_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "camvid_dev"
    assert make_dev_split.main(["--data-root", str(camvid_root), "--out", str(out)]) == 0
    source = _read(camvid_root / "ImageSets" / "Segmentation" / "train.txt")
    train = _read(out / "ImageSets" / "Segmentation" / "train.txt")
    val = _read(out / "ImageSets" / "Segmentation" / "val.txt")
    assert (len(train), len(val)) == (307, 60)
    assert not set(train) & set(val) and sorted(train + val) == sorted(source)
    assert all(i.startswith("0016E5") for i in val)
    assert (out / "JPEGImages" / f"{val[0]}.png").exists() or (out / "JPEGImages" / f"{val[0]}.jpg").exists()


def test_an_unwritable_out_is_one_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    source = _voc_folder(tmp_path / "src", ["0016E5_00390", "0001TP_006690", "0016E5_00420"])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["--data-root", str(source), "--out", str(blocker / "dev"), "--holdout", "1"]
    assert make_dev_split.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(blocker) in error and "--debug" in error
    with pytest.raises(OSError):
        make_dev_split.main([*argv, "--debug"])
