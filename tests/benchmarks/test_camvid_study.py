"""``benchmarks/camvid_study.py`` (issue 14): the plan, the wall-time match, study.json's schema, resumability."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import camvid_study as study
import pytest

REPO = Path(__file__).resolve().parents[2]

SCHEMA = {"row": str, "method": str, "steps": int, "trained_steps": int, "seed": int, "val_miou": float,
          "val_tail_miou": float, "wall_s": float, "cpu": str}
CLASSES = ["sky", "road", "pole", "bicyclist"]
LABELED_SHARE = [0.4, 0.55, 0.02, 0.03]  # pole < 3 % is a tail class; bicyclist (3 %) is not


def test_plan_runs_every_seed_at_the_smaller_budgets_then_ablations_then_the_largest() -> None:
    runs = study.plan((300, 1000, 2000), (0, 1, 2))
    names = [run.name for run in runs]
    assert names[:4] == ["supervised-300-seed0", "mt-cutmix-300-seed0", "des4-300-seed0",
                         "supervised-same-wall-time-300-seed0"]
    assert sum(1 for run in runs if run.steps in (300, 1000) and run.row == "des4") == 6  # 3 seeds × 2 budgets
    assert {run.row for run in runs if run.steps == 1000} >= {"dt", "dt-sh", "des4-quantity", "des4-confidence"}
    assert {(run.row, run.seed) for run in runs if run.steps == 2000} == {
        ("supervised", 0), ("mt-cutmix", 0), ("des4", 0), ("supervised-same-wall-time", 0)}
    # Seed by seed: the target budget's first seed before the other seeds of the small budget.
    assert names.index("des4-1000-seed0") < names.index("supervised-300-seed1")
    assert names.index("des4-1000-seed2") < names.index("dt-1000-seed0") < names.index("des4-2000-seed0")
    assert {run.method for run in runs} == {"supervised", "mean-teacher", "des4"}
    assert study.plan((300, 1000), (0,))[-1].steps == 1000  # two budgets: both seeded, no "largest" stage


def test_rows_limit_the_plan_and_the_report_names_its_recipe_and_budget(tmp_path: Path) -> None:
    """The demo's seeds (configs/camvid_demo.yaml): supervised, DeS4 and the wall-time row only, targets at 240."""
    settings = study.StudySettings(recipe=REPO / "configs" / "camvid_demo.yaml", split_dir=tmp_path,
                                   runs_dir=tmp_path / "runs", report_dir=tmp_path, budgets=(240,), seeds=(0, 1),
                                   rows=("supervised", "des4", "supervised-same-wall-time"))
    assert [run.name for run in settings.runs()] == [
        f"{row}-240-seed{seed}" for seed in (0, 1) for row in ("supervised", "des4", "supervised-same-wall-time")]
    assert study.report_labels(settings) == (240, "configs/camvid_demo.yaml")
    assert "Recipe `configs/camvid_demo.yaml`" in study.render_markdown([], *study.report_labels(settings))


def test_wall_matched_steps_hand_computed() -> None:
    # DeS4 trained 300 steps in 600 s; supervised 300 steps in 330 s (1.1 s/step) → ⌊600 / 1.1⌋ = 545 steps.
    assert study.wall_matched_steps(600.0, 300, 330.0) == 545
    with pytest.raises(ValueError, match="no logged steps"):
        study.wall_matched_steps(600.0, 0, 0.0)


def fake_run(folder: Path, miou_per_class: list[float], steps: int, seconds_per_step: float,
             student: bool = True) -> None:
    folder.mkdir(parents=True)
    teacher = {"mean_iou": sum(miou_per_class) / len(miou_per_class),
               "per_class_iou": dict(zip(CLASSES, miou_per_class, strict=True))}
    final = {"step": steps, "teacher": teacher,
             "pseudo_labels": {"classes": CLASSES, "labeled_share": LABELED_SHARE}}
    if student:
        final["student"] = {"mean_iou": 0.5}
    (folder / "results.json").write_text(json.dumps({"final": final}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"step": s + 1, "seconds": seconds_per_step}) + "\n"
                                              for s in range(steps)))


def make_settings(tmp_path: Path, **kwargs) -> object:
    kwargs.setdefault("split_dir", REPO / "reports" / "camvid" / "split")
    return study.StudySettings(recipe=REPO / "configs" / "camvid_study.yaml", runs_dir=tmp_path / "runs",
                               report_dir=tmp_path / "report", **kwargs)


def test_study_json_entries_have_the_issue_schema_in_percent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, budgets=(10,), seeds=(0, 1))
    for seed, offset in ((0, 0.0), (1, 0.02)):
        fake_run(settings.runs_dir / f"supervised-10-seed{seed}", [0.9, 0.8, 0.1 + offset, 0.2], 10, 1.0, False)
        fake_run(settings.runs_dir / f"des4-10-seed{seed}", [0.9, 0.8, 0.3 + offset, 0.3], 10, 2.0)
    fake_run(settings.runs_dir / "mt-cutmix-10-seed0", [0.9, 0.8, 0.2, 0.2], 10, 2.0)
    assert study.steps_for(settings, study.Run("supervised-same-wall-time", 10, 0)) == 20  # 20 s at 1 s/step
    fake_run(settings.runs_dir / "supervised-same-wall-time-10-seed0", [0.9, 0.85, 0.15, 0.2], 20, 1.0, False)
    assert study.steps_for(settings, study.Run("supervised-same-wall-time", 10, 2)) is None  # its runs are missing
    entries = study.write_report(settings)
    saved = json.loads((settings.report_dir / "study.json").read_text())
    assert saved == json.loads(json.dumps(entries))
    assert len(saved) == 6
    for entry in saved:
        for key, kind in SCHEMA.items():
            assert isinstance(entry[key], kind), (key, entry[key])
    des4 = next(e for e in saved if e["row"] == "des4" and e["seed"] == 0)
    assert des4["method"] == "des4" and des4["steps"] == des4["trained_steps"] == 10
    assert des4["val_miou"] == pytest.approx(57.5)  # percent
    assert des4["val_tail_miou"] == pytest.approx(30.0)  # pole only: 0.02 < 3 %; bicyclist's 3 % is not tail
    assert des4["wall_s"] == pytest.approx(20.0)
    wall = next(e for e in saved if e["row"] == "supervised-same-wall-time")
    assert (wall["method"], wall["steps"], wall["trained_steps"]) == ("supervised", 10, 20)
    markdown = (settings.report_dir / "study.md").read_text()
    assert "| des4 | 2 (57.50, 58.00) | 57.75 | 0.50 |" in markdown
    assert (settings.report_dir / "study_curves.png").stat().st_size > 5000


def test_a_fresh_checkout_keeps_the_committed_runs_and_matches_wall_time_from_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, budgets=(10,), seeds=(0,))
    fake_run(settings.runs_dir / "supervised-10-seed0", [0.9, 0.8, 0.1, 0.2], 10, 1.0, False)
    fake_run(settings.runs_dir / "des4-10-seed0", [0.9, 0.8, 0.3, 0.3], 10, 2.0)
    saved = study.write_report(settings)
    shutil.rmtree(settings.runs_dir)  # outputs/ is not in git: a new checkout has only study.json
    assert study.write_report(settings) == saved
    assert study.steps_for(settings, study.Run("supervised-same-wall-time", 10, 0)) == 20
    assert [line.split(":")[0] for line in _dry_run_lines(settings)] == ["[study] mt-cutmix-10-seed0",
                                                                        "[study] supervised-same-wall-time-10-seed0"]
    # --rows trains only the rows named, and the report it rewrites keeps the others (a GPU's second call).
    fake_run(settings.runs_dir / "mt-cutmix-10-seed0", [0.9, 0.8, 0.2, 0.2], 10, 2.0)
    settings.rows = ("supervised-same-wall-time",)
    assert [line.split(":")[0] for line in _dry_run_lines(settings)] == ["[study] supervised-same-wall-time-10-seed0"]
    assert {entry["row"] for entry in study.write_report(settings)} == {"supervised", "des4", "mt-cutmix"}


def _dry_run_lines(settings) -> list[str]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        study.run_study(settings, dry_run=True)
    return [line for line in buffer.getvalue().splitlines() if line.startswith("[study]")]


def test_targets_are_checked_on_the_means_over_shared_seeds_and_missing_rows_say_so() -> None:
    def entry(row: str, seed: int, miou: float, tail: float) -> dict:
        return {"row": row, "steps": 1000, "seed": seed, "val_miou": miou, "val_tail_miou": tail, "wall_s": 1.0,
                "trained_steps": 1000, "per_class_iou": {"sky": miou}}

    entries = [entry("supervised", 0, 50.0, 10.0), entry("supervised", 1, 52.0, 12.0), entry("des4", 0, 54.0, 16.0),
               entry("des4", 1, 55.0, 14.0), entry("mt-cutmix", 0, 51.5, 11.0)]
    results = {r["target"]: r for r in study.check_targets(study.summarise(entries), 1000)}
    assert results["DeS4 − supervised, equal steps"]["value"] == pytest.approx(3.5)  # 54.5 − 51
    assert results["DeS4 − supervised, equal steps"]["met"] is True
    assert results["DeS4 − supervised, tail classes"]["value"] == pytest.approx(4.0)
    # MT has seed 0 only: compared with supervised's seed 0 (51.5 − 50), not with its 2-seed mean (51).
    assert results["MT + CutMix − supervised"]["value"] == pytest.approx(1.5)
    assert results["MT + CutMix − supervised"]["seeds"] == 1
    assert results["DeS4 − supervised, equal wall time"]["value"] is None  # no wall-time row yet
    assert math.isclose(results["DeS4 − MT + CutMix"]["value"], 2.5)  # seed 0: 54 − 51.5


def test_cli_refuses_a_missing_recipe_with_exit_code_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--recipe", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert exit_info.value.code == 2
    assert "--recipe" in capsys.readouterr().err


def test_tiny_study_end_to_end_and_resumable(tmp_path: Path, camvid_root: Path) -> None:
    settings = make_settings(
        tmp_path, budgets=(2,), seeds=(0,), data_root=str(camvid_root), threads=1, extra_args=("--backbone", "test_resnet", "--encoder-weights", "none", "--decoder-channels", "16",
                               "--crop-size", "48", "--num-workers", "0", "--eval-max-images", "2"))
    entries = study.run_study(settings)
    assert [e["row"] for e in entries] == ["supervised", "mt-cutmix", "des4", "supervised-same-wall-time"]
    assert all(0.0 <= e["val_miou"] <= 100.0 for e in entries)
    assert entries[3]["trained_steps"] >= 1 and entries[3]["steps"] == 2
    stamp = (settings.runs_dir / "des4-2-seed0" / "results.json").stat().st_mtime_ns
    study.run_study(settings)  # finished runs are not trained again
    assert (settings.runs_dir / "des4-2-seed0" / "results.json").stat().st_mtime_ns == stamp
