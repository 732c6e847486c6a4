"""Tracebacks and misleading messages turned into one line that names the argument or file and the fix, exit 2
(issue 34, problem 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["--backbone", "test_resnet", "--encoder-weights", "none", "--crop-size", "48", "--batch-size", "2",
        "--num-workers", "0", "--max-steps", "2", "--overlays", "0", "--decoder-channels", "16"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"f{i}" for i in range(12)]
    for id_ in ids:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{id_}.jpg")
        Image.fromarray(rng.integers(0, 11, (48, 64), dtype=np.uint8)).save(root / "SegmentationClass" / f"{id_}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:10]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[10:]) + "\n")
    return root


def _lines(err: str, prog: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{prog}: ")]


def _train(capsys, *argv: str) -> tuple[int, list[str], str]:
    from des4_hf_scripts.train import main

    code = main([*TINY, *argv])
    err = capsys.readouterr().err
    return code, _lines(err, "des4-train"), err


def test_des4_train_names_impossible_options_in_one_line(voc_root, tmp_path, capsys):
    data = ["--dataset", "camvid", "--data-root", str(voc_root)]
    cases = (
        (["--decoder-channels", "3"], "11 orthonormal prototypes do not fit in d=3 dimensions"),
        (["--labeled-fraction", "0.95"], "leaves 0 unlabeled image(s), fewer than one unlabeled batch of 2"),
        (["--labeled-fraction", "0.9"], "leaves 1 unlabeled image(s), fewer than one unlabeled batch of 2"),
        (["--crop-size", "100000"], "crop_size=100000: use 32 to 4096 pixels"),
    )
    for index, (extra, expected) in enumerate(cases):
        code, lines, err = _train(capsys, *data, "--output-dir", str(tmp_path / f"run{index}"), *extra)
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert any(expected in line for line in lines), (extra, lines, err[-1500:])
        assert not (tmp_path / f"run{index}").exists()  # a run that never started leaves nothing behind


def test_a_folder_dataset_without_classes_txt_says_where_to_put_it(voc_root, tmp_path, capsys):
    root = tmp_path / "mine"
    for split, id_ in (("train", "f0"), ("val", "f1")):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        shutil.copy(voc_root / "JPEGImages" / f"{id_}.jpg", root / split / "images")
        shutil.copy(voc_root / "SegmentationClass" / f"{id_}.png", root / split / "masks")
    code, lines, _ = _train(capsys, "--dataset", "folder", "--data-root", str(root), "--output-dir", str(tmp_path / "r"))
    assert code == 2 and len(lines) == 1
    assert "classes.txt" in lines[0] and "set_dataset_metadata" not in lines[0]


@pytest.mark.slow  # trains
def test_resume_with_another_batch_size_is_refused_in_one_line(voc_root, tmp_path, capsys):
    argv = ["--dataset", "camvid", "--data-root", str(voc_root), "--labeled-fraction", "0.5", "--output-dir",
            str(tmp_path / "run"), "--checkpoint-every", "1", "--max-steps", "3"]
    code, _, err = _train(capsys, *argv)
    assert code == 0, err[-2000:]
    code, lines, err = _train(capsys, *argv, "--resume", "latest", "--batch-size", "1")
    assert code == 2 and "Traceback" not in err
    assert "batch_size 2 → 1" in lines[-1] and "--overwrite or another --output-dir" in lines[-1]


def test_des4_predict_explains_folders_that_are_not_saved_models(model_dir, tmp_path, capsys):
    from des4_hf_scripts.predict import main

    image = tmp_path / "street.png"
    Image.new("RGB", (40, 30)).save(image)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint_0"  # what a trainer checkpoint holds
    checkpoint.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "trainer_state.json"):
        (checkpoint / name).write_text("{}")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    shutil.copy(model_dir / "model.safetensors", no_config)
    pickled = tmp_path / "pickled"  # a config beside a pytorch_model.bin that is not plain tensors
    pickled.mkdir()
    shutil.copy(model_dir / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04\x95not a tensor file")
    cases = ((checkpoint, "is a training checkpoint"), (no_config, "holds no config.json"),
             (pickled, "its weights file is not plain tensors"))
    for folder, expected in cases:
        assert main(["--model", str(folder), str(image), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        lines = _lines(err, "des4-predict")
        assert len(lines) == 1 and expected in lines[0], err[-2000:]
        assert "weights_only" not in err and "Traceback" not in err and len(err.splitlines()) < 10, err[-3000:]


def test_export_onnx_never_replaces_a_file_without_force(model_dir, tmp_path, capsys):
    from des4_hf_scripts.export_onnx import main

    target = tmp_path / "model.onnx"
    target.write_text("my earlier export")
    assert main(["--model", str(model_dir), "--out", str(target), "--no-verify"]) == 2
    assert "exists: pass --force" in capsys.readouterr().err and target.read_text() == "my earlier export"


@pytest.mark.slow  # exports a graph (10 s)
def test_export_onnx_with_force_replaces_the_file_and_leaves_nothing_else(model_dir, tmp_path):
    pytest.importorskip("onnxscript")
    from des4_hf_scripts.export_onnx import main

    target = tmp_path / "model.onnx"
    target.write_text("my earlier export")
    assert main(["--model", str(model_dir), "--out", str(target), "--no-verify", "--force", "--height", "64",
                 "--width", "64"]) == 0
    assert target.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_file_name_that_is_not_utf8_is_named(voc_root, tmp_path, capsys):
    import os

    root = tmp_path / "names"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
    (root / "train" / "classes.txt").write_text("\n".join(f"c{i}" for i in range(11)) + "\n")
    for folder, suffix, source in (("images", b".jpg", voc_root / "JPEGImages" / "f0.jpg"),
                                   ("masks", b".png", voc_root / "SegmentationClass" / "f0.png")):
        shutil.copy(source, os.path.join(os.fsencode(root / "train" / folder), b"caf\xe9" + suffix))  # Latin-1
        shutil.copy(source, root / "val" / folder / f"v{suffix.decode()}")
    code, lines, err = _train(capsys, "--dataset", "folder", "--data-root", str(root), "--output-dir",
                              str(tmp_path / "r"), "--method", "supervised")
    assert code == 2 and "Traceback" not in err
    assert "the file name b'caf\\xe9.jpg' is not valid UTF-8. Fix: rename it" in lines[-1], lines


def test_a_full_disk_while_saving_is_one_line(voc_root, tmp_path, capsys, monkeypatch):
    import errno

    from accelerate import Accelerator

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)
    code, lines, err = _train(capsys, "--dataset", "camvid", "--data-root", str(voc_root), "--labeled-fraction",
                              "0.5", "--output-dir", str(tmp_path / "run"), "--checkpoint-every", "1")
    assert code == 2 and "Traceback" not in err
    assert "No space left on device" in lines[-1], lines
