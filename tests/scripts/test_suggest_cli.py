"""``des4-suggest`` (scripts/suggest.py, issue 33) on a tiny model and folder: its three outputs, the split that
des4-train --split reads, and one line for each bad input."""

from __future__ import annotations

import csv
import shutil

import numpy as np
from des4_hf_scripts.suggest import main
from des4_hf_scripts.train import parse_train_config
from PIL import Image

from des4_hf import Des4Config, Des4ForSemanticSegmentation
from des4_hf.data import SemiSupervisedSplit, load_segmentation_dataset


def _pool(folder, count: int = 6):
    rng = np.random.default_rng(0)
    (folder / "seq").mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "seq" / f"f{index}.png")
    shutil.copy(folder / "seq" / "f0.png", folder / "seq" / "f0-copy.png")  # a near-duplicate video frame
    return folder


def test_the_three_outputs_and_the_split_des4_train_reads(model_dir, tmp_path, capsys):
    pool = _pool(tmp_path / "pool")
    (tmp_path / "labeled.txt").write_text("seq/f5\n")
    out = tmp_path / "suggest"
    assert main(["--model", str(model_dir), "--images", str(pool), "--budget", "3", "--out", str(out),
                 "--labeled", str(tmp_path / "labeled.txt"), "--no-progress", "--precision", "fp32"]) == 0
    with open(out / "ranking.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and [int(r["rank"]) for r in rows] == list(range(1, 7))  # seq/f5 is labeled already
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and "seq/f5" not in {r["image"] for r in rows}
    suggested = [r["image"] for r in rows if r["suggested"] == "yes"]
    assert len(suggested) == 3 and not {"seq/f0", "seq/f0-copy"} <= set(suggested)  # never both twins
    names = {"sky", "road", "car", "tree"}
    assert all(set(filter(None, r["unsure_classes"].split(";"))) <= names for r in rows)
    labeled_next = (out / "labeled-next.txt").read_text().split()
    assert labeled_next[0] == "seq/f5" and set(labeled_next[1:]) == set(suggested)
    split = SemiSupervisedSplit.from_file(out / "split")
    assert list(split.labeled_ids) == labeled_next and len(split.unlabeled_ids) == 3
    config = parse_train_config(["--split", str(out / "split"), "--dataset", "folder"])
    labeled, unlabeled = SemiSupervisedSplit.from_file(config.split).apply(
        load_segmentation_dataset("folder", images=pool)["train"])
    assert sorted(labeled["id"]) == sorted(labeled_next) and len(unlabeled) == 3
    sheet = Image.open(out / "suggested.png")
    assert sheet.width == 2 * 2 * 240 and sheet.height > 100  # two pairs of (photo, uncertainty) a row
    assert "wrote" in capsys.readouterr().out


def test_bad_inputs_are_one_line_and_exit_2(model_dir, tmp_path, capsys):
    pool = _pool(tmp_path / "pool", count=2)
    (tmp_path / "empty").mkdir()
    fresh = tmp_path / "fresh"  # prototypes never trained
    Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", id2label={0: "a", 1: "b"}, decoder_channels=16,
                                           low_level_channels=8)).save_pretrained(fresh)
    cases = ((["--model", str(model_dir), "--images", str(tmp_path / "empty"), "--budget", "1"], "no images to rank"),
             (["--model", str(model_dir), "--images", str(pool), "--budget", "4"], "--budget 4: between 1 and the 3"),
             (["--model", str(fresh), "--images", str(pool), "--budget", "1"], "prototype"))
    for argv, expected in cases:
        assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("des4-suggest: ")]
        assert len(lines) == 1 and expected in lines[0], lines
