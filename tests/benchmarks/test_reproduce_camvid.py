"""The CamVid ablation runner: run plan, tail classes, claims, summary files, resumable end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reproduce_camvid import (
    ROWS,
    ROWS_BY_NAME,
    ReproductionSettings,
    plan_runs,
    run_all,
    summarise_runs,
    tail_classes,
    write_summary,
)

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["road", "car", "sign", "pole"]
SHARES = [0.70, 0.27, 0.02, 0.01]


def fake_record(miou_by_class: list[float], seed: int, with_student: bool = True) -> dict:
    record = {
        "step": 10, "seed": seed,
        "teacher": {"mean_iou": sum(miou_by_class) / len(miou_by_class),
                    "per_class_iou": dict(zip(CLASSES, miou_by_class, strict=True))},
        "pseudo_labels": {"classes": CLASSES, "labeled_share": SHARES, "pseudo_label_share": SHARES},
    }
    if with_student:
        record["student"] = {"mean_iou": record["teacher"]["mean_iou"] - 0.01}
    return record


def test_plan_runs_main_rows_with_every_seed_first_then_the_other_rows() -> None:
    runs = [run.name for run in plan_runs(ROWS, (0, 1))]
    assert runs[:6] == ["supervised-seed0", "mt-cutmix-seed0", "des4-seed0",
                        "supervised-seed1", "mt-cutmix-seed1", "des4-seed1"]
    assert runs[6:] == [f"{row.name}-seed0" for row in ROWS if not row.main]
    assert len(set(runs)) == len(runs)
    with pytest.raises(ValueError, match="seeds"):
        plan_runs(ROWS, ())


def test_rows_map_onto_the_trainer_switches() -> None:
    from des4_hf_scripts.train import parse_train_config as parse_config

    expected = {  # (method, decoupled, shared_head, reweight, sampler) per SPEC §4 / Table 3–4
        "supervised": ("supervised", None, None, None, "mes"),
        "mt-cutmix": ("mean-teacher", False, False, False, "mes"),
        "dt": ("des4", True, False, False, "mes"),
        "dt-sh": ("des4", True, True, False, "mes"),
        "des4": ("des4", True, True, True, "mes"),
        "des4-quantity": ("des4", True, True, True, "quantity"),
        "des4-confidence": ("des4", True, True, True, "confidence"),
    }
    assert set(expected) == set(ROWS_BY_NAME)
    for name, (method, decoupled, shared, reweight, sampler) in expected.items():
        config = parse_config(list(ROWS_BY_NAME[name].train_args))
        assert config.method == method and config.sampler == sampler, name
        if decoupled is not None:
            assert (config.decoupled, config.shared_head, config.reweight) == (decoupled, shared, reweight), name


def test_tail_classes_are_those_under_three_percent_of_labeled_pixels() -> None:
    assert tail_classes(CLASSES, SHARES) == ["sign", "pole"]
    assert tail_classes(CLASSES, SHARES, threshold=0.015) == ["pole"]


def test_summary_means_spread_tail_and_claims() -> None:
    records = {
        "supervised": [fake_record([0.9, 0.6, 0.1, 0.1], 0), fake_record([0.9, 0.6, 0.1, 0.3], 1)],
        "mt-cutmix": [fake_record([0.9, 0.7, 0.2, 0.2], 0)],
        "des4": [fake_record([0.9, 0.7, 0.4, 0.4], 0), fake_record([0.9, 0.7, 0.4, 0.4], 1)],
    }
    summary = summarise_runs(records, ROWS)
    assert summary["tail_classes"] == ["sign", "pole"]
    rows = {row["name"]: row for row in summary["rows"]}
    assert list(rows) == ["supervised", "mt-cutmix", "des4"]  # table order, missing rows left out
    assert rows["supervised"]["teacher_miou_spread"] == pytest.approx(0.05)
    assert rows["supervised"]["tail_miou_mean"] == pytest.approx(0.15)
    assert rows["supervised"]["head_miou_mean"] == pytest.approx(0.75)
    assert rows["supervised"]["per_class_iou_mean"]["pole"] == pytest.approx(0.2)
    claims = summary["claims"]
    assert claims["ordering_holds"]
    assert claims["des4_over_supervised_tail"] == pytest.approx(0.25)
    assert claims["tail_gain_largest"]
    assert claims["largest_seed_spread"] == pytest.approx(0.05)
    # A reversed ordering is reported as such, not hidden.
    records["des4"] = [fake_record([0.8, 0.5, 0.1, 0.1], 0)]
    assert not summarise_runs(records, ROWS)["claims"]["ordering_holds"]


def test_runs_on_different_splits_are_refused() -> None:
    other = fake_record([0.9, 0.6, 0.1, 0.1], 1)
    other["pseudo_labels"] = {**other["pseudo_labels"], "labeled_share": [0.5, 0.3, 0.1, 0.1]}
    with pytest.raises(ValueError, match="same --split"):
        summarise_runs({"supervised": [fake_record([0.9, 0.6, 0.1, 0.1], 0)], "des4": [other]}, ROWS)


def test_write_summary_from_finished_run_folders(tmp_path: Path) -> None:
    settings = ReproductionSettings(recipe=Path("configs/camvid_ablation.yaml"), split_dir=tmp_path / "split",
                                    runs_dir=tmp_path / "runs", report_dir=tmp_path / "report")
    for run, values in (("supervised-seed0", [0.9, 0.6, 0.1, 0.1]), ("des4-seed0", [0.9, 0.7, 0.3, 0.3]),
                        ("dt-seed0", None)):  # dt: no final evaluation yet → not in the table
        run_dir = settings.runs_dir / run
        (run_dir / "eval").mkdir(parents=True)
        (run_dir / "last").mkdir()
        if values is None:
            continue
        (run_dir / "eval" / "step_00000010.json").write_text(json.dumps(fake_record(values, 0)))
        (run_dir / "last" / "eval.json").write_text("{}")
        (run_dir / "last" / "config.json").write_text("{}")
        (run_dir / "last" / "model.safetensors").write_bytes(b"0" * 100)
    summary = write_summary(settings)
    assert [row["name"] for row in summary["rows"]] == ["supervised", "des4"]
    assert summary["claims"] == {"complete": False}  # MT + CutMix missing: no claim is checked
    saved = json.loads((settings.report_dir / "results.json").read_text())
    assert saved["rows"][1]["teacher_miou_mean"] == pytest.approx(0.55)
    markdown = (settings.report_dir / "results.md").read_text()
    assert "| + D.T. + S.H. + P.R. = DeS4 (MES) | 1 (55.00) | 55.00 | – |" in markdown  # no spread from 1 seed
    assert (settings.report_dir / "per_class_iou.png").stat().st_size > 1000
    assert (settings.report_dir / "des4" / "config.json").is_file()
    assert not (settings.report_dir / "des4" / "model.safetensors").exists()  # weights never leave outputs/
    assert not (settings.report_dir / "dt").exists()


def test_end_to_end_tiny_run_is_resumable(tmp_path: Path, camvid_root: Path) -> None:
    settings = ReproductionSettings(
        recipe=REPO / "configs" / "camvid_ablation.yaml", split_dir=tmp_path / "split", runs_dir=tmp_path / "runs",
        report_dir=tmp_path / "report", seeds=(0,), rows=(ROWS_BY_NAME["supervised"], ROWS_BY_NAME["des4"]),
        data_root=str(camvid_root),
        extra_train_args=("--backbone", "test_resnet", "--encoder-weights", "none", "--decoder-channels", "16",
                          "--crop-size", "48", "--batch-size", "2", "--unlabeled-batch-size", "2",
                          "--num-workers", "0", "--max-steps", "2", "--eval-max-images", "2"),
    )
    summary = run_all(settings)
    assert (settings.split_dir / "labeled.txt").read_text().split()  # the seeded split file is written
    assert len((settings.split_dir / "labeled.txt").read_text().split()) == 46  # 1/8 of 367
    assert [row["name"] for row in summary["rows"]] == ["supervised", "des4"]
    assert all(0.0 <= row["teacher_miou_mean"] <= 1.0 for row in summary["rows"])
    stamp = (settings.runs_dir / "des4-seed0" / "last" / "eval.json").stat().st_mtime_ns
    run_all(settings)  # finished runs are not trained again
    assert (settings.runs_dir / "des4-seed0" / "last" / "eval.json").stat().st_mtime_ns == stamp
