"""The label-next measurement's machinery (issue 33): a random arm's split and the per-arm summary that pools the
random draws, and how the picks spread over the video."""

from __future__ import annotations

import argparse
import json

import camvid_suggest_study as study
import pytest


def test_a_random_arm_adds_35_seeded_frames_to_the_11(tmp_path):
    labeled = [f"l{i:02d}" for i in range(11)]
    pool = [f"p{i:03d}" for i in range(100)]
    args = argparse.Namespace()  # a random arm needs no model
    for draw in ("random-0", "random-0", "random-1"):
        study.arm_split(draw, labeled, pool, args, tmp_path / draw)
    chosen = (tmp_path / "random-0" / "labeled.txt").read_text().split()
    rest = (tmp_path / "random-0" / "unlabeled.txt").read_text().split()
    assert len(chosen) == 46 and set(labeled) <= set(chosen) and sorted(chosen + rest) == sorted(labeled + pool)
    assert chosen != (tmp_path / "random-1" / "labeled.txt").read_text().split()  # another draw, another pick


def test_the_summary_pools_the_random_draws_and_keeps_the_arms_apart():
    def record(arm, miou, tail):
        return {"fraction": arm, "val_miou": miou, "val_tail_miou": tail}

    records = [record("suggested", 50.0, 20.0), record("suggested", 52.0, 22.0), record("uncertainty", 40.0, 10.0),
               record("random-0", 45.0, 15.0), record("random-1", 47.0, 13.0), record("random-2", 49.0, 17.0)]
    summary = study.summarise(records, "val")
    assert summary["random"]["runs"] == 3 and summary["random"]["miou"] == pytest.approx(47.0)
    assert summary["suggested"] == {"runs": 2, "miou": 51.0, "miou_spread": 2.0, "tail_miou": 21.0,
                                    "tail_miou_spread": 2.0}
    assert summary["uncertainty"]["miou"] == 40.0


def test_the_report_keeps_dev_and_val_side_by_side(tmp_path):
    def record(arm, miou, split):
        return {"fraction": arm, "seed": 0, f"{split}_miou": miou, f"{split}_tail_miou": miou / 2}

    dev = [record("suggested", 50.0, "dev"), record("random-0", 46.0, "dev")]
    study.write_report(dev, "dev", tmp_path, "CPU A")
    gap = "Suggested − random, paired over the 1 seed(s) both have (random: the mean of its draws): +4.00 mIoU"
    assert gap in (tmp_path / "suggest.md").read_text()
    study.write_report([record("suggested", 40.0, "val")], "val", tmp_path, "CPU A")
    (tmp_path / "suggest.md").unlink()
    assert study.main(["--summary-only", "--report-dir", str(tmp_path)]) == 0  # redrawn from the JSON alone
    assert gap in (tmp_path / "suggest.md").read_text() and "## val (machine: CPU A)" in (tmp_path / "suggest.md").read_text()
    study.write_report(dev[:1], "dev", tmp_path, "CPU A")  # a rerun of one split replaces that split only
    saved = json.loads((tmp_path / "suggest.json").read_text())
    assert saved["dev"]["summary"]["suggested"]["miou"] == 50.0 and "random" not in saved["dev"]["summary"]
    assert saved["val"]["runs"] == [record("suggested", 40.0, "val")]
    text = (tmp_path / "suggest.md").read_text()
    assert "## dev (machine: CPU A)" in text and "## val (machine: CPU A)" in text
    study.write_report([{**record("suggested", 40.0, "val"), "cpu": "CPU B"}, record("random-0", 38.0, "val")], "val",
                       tmp_path, "CPU A")  # a later session's run on another machine: both named, mIoU pooled
    assert json.loads((tmp_path / "suggest.json").read_text())["val"]["machine"] == "CPU A; CPU B"
    assert "## val (machines: CPU A; CPU B) (mIoU pooled" in (tmp_path / "suggest.md").read_text()


def test_a_ranked_arm_needs_the_model_only_until_its_split_is_committed(tmp_path):
    labeled, pool = ["l0"], [f"p{i}" for i in range(40)]
    args = argparse.Namespace(model=tmp_path / "no-model", runs_dir=tmp_path / "runs", eval_split="dev")
    with pytest.raises(SystemExit, match="--model .*not a trained model folder"):
        study.arm_split("suggested", labeled, pool, args, tmp_path / "splits" / "suggested" / "dev")
    committed = tmp_path / "splits" / "uncertainty" / "dev"
    committed.mkdir(parents=True)
    (committed / "labeled.txt").write_text("l0\np3\n")
    study.arm_split("uncertainty", labeled, pool, args, committed)  # a fresh machine: the committed picks stand
    assert (committed / "labeled.txt").read_text() == "l0\np3\n"


def test_every_arms_seed_0_is_trained_before_any_seed_1(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    for arm in ("suggested", "uncertainty"):  # the committed picks: no model needed
        committed = study.REPO / "reports" / "camvid" / "suggest" / "splits" / arm / "dev"
        if not committed.is_dir():
            pytest.skip(f"{committed} is not in this checkout")
        target = reports / "suggest" / "splits" / arm / "dev"
        target.mkdir(parents=True)
        for path in committed.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
    trained = []

    def train(self, folder, split, arm, row, steps, seed):
        trained.append((arm, seed))
        folder.mkdir(parents=True)
        (folder / "results.json").write_text("{}")

    monkeypatch.setattr(study.Study, "_train", train)
    monkeypatch.setattr(study.Study, "record", lambda self, folder, split, arm, row, steps, seed: {
        "fraction": arm, "seed": seed, "steps": steps})
    reports_written = []
    monkeypatch.setattr(study, "write_report", lambda records, *args: reports_written.append(list(records)))
    earlier = {"fraction": "suggested", "seed": 1, "steps": 10, "dev_miou": 46.5}  # recorded on an earlier machine
    (reports / "suggest.json").write_text(json.dumps({"dev": {"runs": [earlier]}}))
    (tmp_path / "ceiling" / "dev_data").mkdir(parents=True)
    assert study.main(["--model", str(tmp_path / "no-model"), "--steps", "10", "--eval-split", "dev", "--data-root",
                       str(tmp_path), "--ceiling-runs", str(tmp_path / "ceiling"), "--runs-dir",
                       str(tmp_path / "runs"), "--report-dir", str(reports)]) == 0
    assert trained[:len(study.ARMS)] == [(arm, 0) for arm in study.ARMS]
    assert sorted(trained) == sorted((arm, seed) for arm in study.ARMS for seed in study.SEEDS
                                     if (arm, seed) != ("suggested", 1))  # not trained again
    assert all(earlier in records for records in reports_written)  # never dropped from the report meanwhile
    assert len(reports_written[-1]) == len(study.ARMS) * len(study.SEEDS)


def test_the_ceiling_studys_11_frame_run_ranks_else_the_same_run_is_trained_here_first(tmp_path, monkeypatch):
    ceiling_split = study.REPO / "reports" / "camvid" / "ceiling" / "splits" / "1_32" / "val"
    if not (ceiling_split / "labeled.txt").is_file():
        pytest.skip(f"{ceiling_split} is not in this checkout")
    trained, ranked_with = [], []

    def train(self, folder, split, arm, row, steps, seed):
        split_file = self.splits_dir / arm / split / "labeled.txt"
        trained.append((arm, seed, split_file.read_text() if arm == study.START else None))
        folder.mkdir(parents=True)
        (folder / "results.json").write_text("{}")

    monkeypatch.setattr(study.Study, "_train", train)
    monkeypatch.setattr(study.Study, "record", lambda self, folder, split, arm, row, steps, seed: {
        "fraction": arm, "seed": seed, "steps": steps, f"{split}_miou": 40.0, f"{split}_tail_miou": 10.0})
    monkeypatch.setattr(study, "arm_split", lambda arm, labeled, pool, args, folder: ranked_with.append(args.model))
    (tmp_path / "ceiling" / "dev_data").mkdir(parents=True)
    reports = tmp_path / "reports"
    assert study.main(["--steps", "10", "--eval-split", "val", "--data-root", str(tmp_path), "--ceiling-runs",
                       str(tmp_path / "ceiling"), "--runs-dir", str(tmp_path / "runs"), "--report-dir",
                       str(reports)]) == 0
    assert trained[0] == (study.START, 0, (ceiling_split / "labeled.txt").read_text())  # the ceiling's 11 frames
    assert len(trained) == 1 + len(study.ARMS) * len(study.SEEDS)
    assert ranked_with == [tmp_path / "runs" / "val" / study.START / "des4-10-seed0" / "best"] * len(study.ARMS)
    assert json.loads((reports / "suggest.json").read_text())["val"]["summary"][study.START]["runs"] == 1
    assert "| start | 1 | 40.00 |" in (reports / "suggest.md").read_text()

    ceiling_model = tmp_path / "ceiling" / "dev" / "1_32" / "des4-10-seed0" / "best"  # trained by the ceiling study
    ceiling_model.mkdir(parents=True)
    (ceiling_model / "config.json").write_text("{}")
    trained.clear(), ranked_with.clear()
    assert study.main(["--steps", "10", "--eval-split", "dev", "--data-root", str(tmp_path), "--ceiling-runs",
                       str(tmp_path / "ceiling"), "--runs-dir", str(tmp_path / "runs"), "--report-dir",
                       str(reports)]) == 0
    assert ranked_with == [ceiling_model] * len(study.ARMS) and study.START not in {arm for arm, *_ in trained}


def test_a_fresh_machine_with_the_ranked_picks_committed_trains_no_model_to_rank(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    for arm in study.ARMS:  # every arm's picks committed, made by a model that is gone (the ceiling study's, on dev)
        committed = reports / "suggest" / "splits" / arm / "dev"
        committed.mkdir(parents=True)
        (committed / "labeled.txt").write_text("l0\n")
    trained = []

    def train(self, folder, split, arm, row, steps, seed):
        trained.append(arm)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text("{}")

    monkeypatch.setattr(study.Study, "_train", train)
    monkeypatch.setattr(study.Study, "record", lambda self, folder, split, arm, row, steps, seed: {
        "fraction": arm, "seed": seed, "steps": steps, f"{split}_miou": 40.0, f"{split}_tail_miou": 10.0})
    (tmp_path / "ceiling" / "dev_data").mkdir(parents=True)
    assert study.main(["--steps", "10", "--eval-split", "dev", "--data-root", str(tmp_path), "--ceiling-runs",
                       str(tmp_path / "ceiling"), "--runs-dir", str(tmp_path / "runs"), "--report-dir",
                       str(reports)]) == 0
    assert study.START not in trained and len(trained) == len(study.ARMS) * len(study.SEEDS)
    assert not (reports / "suggest" / "splits" / study.START).exists()


def test_the_gap_to_random_pairs_seeds_while_the_measurement_runs():
    def record(arm, seed, miou):
        return {"fraction": arm, "seed": seed, "dev_miou": miou, "dev_tail_miou": miou / 4}

    records = [record("suggested", 0, 46.0), record("suggested", 1, 50.0), record("suggested", 2, 40.0),
               record("random-0", 0, 44.0), record("random-1", 0, 46.0), record("random-0", 1, 47.0),
               record("uncertainty", 0, 43.0)]  # seed 2: no random draw yet
    gaps = study.gaps_to_random(records, "dev")
    # (46 − 45 + 50 − 47) / 2; seed 2 out
    assert gaps["suggested"] == (pytest.approx(2.0), pytest.approx(0.5), 2, {0: pytest.approx(1.0), 1: pytest.approx(3.0)})
    assert gaps["uncertainty"] == (pytest.approx(-2.0), pytest.approx(-0.5), 1, {0: pytest.approx(-2.0)})
    assert study.gaps_to_random(records[:2], "dev")["suggested"] == (None, None, 0, {})


def test_the_spread_table_counts_near_duplicate_picks_per_arm_leaving_the_start_frames_out(tmp_path):
    def labeled(folder, ids):
        folder.mkdir(parents=True)
        (folder / "labeled.txt").write_text("".join(f"{i}\n" for i in ids))

    labeled(tmp_path / "ceiling" / "splits" / "1_32" / "val", ["0001TP_006690", "0001TP_006720"])  # start: adjacent
    start = ["0001TP_006690", "0001TP_006720"]
    # two frames 1 s apart and one far away; 0006R0's ids carry an "f" before the number
    labeled(tmp_path / "suggest" / "splits" / "uncertainty" / "val",
            [*start, "0006R0_f01230", "0006R0_f01260", "0016E5_07959"])
    labeled(tmp_path / "suggest" / "splits" / "suggested" / "val", [*start, "0006R0_f01230", "0006R0_f02230"])
    rows = study.pick_spread(tmp_path, "val")
    assert "| arm | 0006R0 | 0016E5 | within 2 s of another |" in rows
    assert "| suggested | 2 | 0 | 0 |" in rows and "| uncertainty | 2 | 1 | 2 |" in rows
    assert study.pick_spread(tmp_path, "dev") == []  # no picks for that split: no table
