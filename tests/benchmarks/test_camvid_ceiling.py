"""The ceiling study's machinery (issue 30): the labeled draw, compute in supervised-step equivalents, the shared-CPU
mark, the report's one-machine tables and the step-cost ratios it reads."""

from __future__ import annotations

import json

import camvid_ceiling as ceiling
import numpy as np
import pytest
from camvid_ceiling_report import paired_gap, supervised_step_cpu, write_report

RATIOS = {"machine": {"cpu_model": "Test CPU"}, "training": {
    "des4_over_supervised": 1.7, "mean_teacher_over_supervised": 1.5, "batch_size": 6, "unlabeled_batch_size": 2,
    "crop_size": 160}}


def test_the_labeled_draw_holds_every_class_and_is_seeded():
    counts = {f"f{i}": np.eye(4, dtype=int)[i % 4] * 10 for i in range(40)}  # each frame holds one class
    chosen, draws = ceiling.draw_labeled(list(counts), 4, counts)
    assert len(chosen) == 4 and sorted(int(np.argmax(counts[i])) for i in chosen) == [0, 1, 2, 3]
    assert ceiling.draw_labeled(list(counts), 4, counts) == (chosen, draws) and draws >= 1
    with pytest.raises(RuntimeError, match="covers every class"):
        ceiling.draw_labeled(list(counts)[:3], 3, counts)  # three frames cannot hold four classes


def test_steps_become_supervised_step_equivalents_by_the_measured_ratios():
    assert ceiling.sup_step_equivalents("supervised", 1000, 0.0, RATIOS) == 1000
    # DeS4 with a 20 % labeled-only warm-up: 200 steps cost one supervised step each, 800 cost 1.7
    assert ceiling.sup_step_equivalents("des4", 1000, 0.2, RATIOS) == pytest.approx(200 + 800 * 1.7)
    assert ceiling.sup_step_equivalents("mt-cutmix", 1000, 0.0, RATIOS) == pytest.approx(1500)
    assert ceiling.sup_step_equivalents("des4", 1000, 0.2, {}) is None  # no ratios measured: no figure


def test_a_run_that_shared_its_cpu_or_was_cut_off_is_marked(tmp_path):
    run = tmp_path / "des4-500-seed0"
    run.mkdir()
    record = tmp_path / "des4-500-seed0.segments.json"
    assert ceiling.shared_cpu(run)  # no record of its segments: unknown, so shared
    record.write_text(json.dumps([{"wall_s": 100.0, "own_cpu_s": 190.0, "others_cpu_s": 4.0}]))
    assert not ceiling.shared_cpu(run)
    record.write_text(json.dumps([{"wall_s": 100.0, "own_cpu_s": 150.0, "others_cpu_s": 40.0}]))
    assert ceiling.shared_cpu(run)  # others used 40 % of a core meanwhile
    record.write_text(json.dumps([{"wall_s": 100.0, "own_cpu_s": 190.0, "others_cpu_s": 4.0}, {"open": True}]))
    assert ceiling.shared_cpu(run)  # a segment killed with its session


def _record(row, seed, miou, split="val", cpu="CPU A", steps=1000, shared=False):
    return {"fraction": "1/8", "row": row, "method": row, "steps": steps, "seed": seed, "eval_split": split,
            "val_miou": miou if split == "val" else None, "val_tail_miou": miou - 20 if split == "val" else None,
            "dev_miou": miou if split == "dev" else None, "dev_tail_miou": miou - 20 if split == "dev" else None,
            "sup_step_equiv": 1700.0, "cpu_s": 900.0, "wall_s": 500.0, "shared_cpu": shared, "cpu": cpu,
            "resolution": "240×180", "crop": 160, "batch": "6+2", "commit": "abc1234"}


def test_the_report_pools_miou_over_machines_pairs_seeds_and_keeps_seconds_apart(tmp_path):
    records = [_record("supervised", s, 50 + s) for s in (0, 1, 2)] + [_record("des4", s, 53 + s) for s in (0, 1)]
    records[-1] = {**records[-1], "cpu": "CPU B"}  # seed 1 of DeS4 ran on another machine (a later session)
    records.append(_record("mt-cutmix", 0, 45))  # one seed so far
    records += [_record("des4", 0, 40, split="dev", shared=True), _record("des4", 0, 41, split="dev", cpu="CPU B",
                                                                        steps=2000)]
    groups = {}
    for r in records:
        if r["eval_split"] == "val":
            groups.setdefault((r["fraction"], r["row"]), []).append(r)
    assert paired_gap(groups, "1/8", "des4", "supervised") == (3.0, 2)  # over the two seeds both rows ran
    write_report(records, tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)
    text = (tmp_path / "ceiling.md").read_text()
    assert "A = CPU A; B = CPU B" in text and (tmp_path / "ceiling_curves.png").is_file()
    machine_a, machine_b = text.split("### Machine A: CPU A")[1].split("### Machine B: CPU B")
    assert "| dev | 1/8 | des4 | 1000 | 0 | 40.00 | – | 20.00 | 1700 | shared | shared | shared |" in machine_a  # shared
    # A's supervised runs cost 0.9 CPU s a step, so its DeS4 run's 900 CPU s are 1000 supervised steps (ratios: 1700)
    assert "| val | 1/8 | des4 | 1000 | 0 | 53.00 | – | 33.00 | 1700 | 1000 | 900 | 500 |" in machine_a
    assert "default threads: 0.900 s from 3 runs" in machine_a
    # B trained no supervised run alone: no CPU-based check there; its half ran on A
    assert "| dev | 1/8 | des4 | 2000 | 0 | 41.00 | +1.00 | 21.00 | 1700 | – | 900 | 500 |" in machine_b
    assert "none yet, so –" in machine_b
    assert "| val | 1/8 | des4 | 1000 | 1 | 54.00 |" in machine_b and "| 0 | 53.00 |" not in machine_b
    assert "| 1/8 | des4 | 1000 | 2 | 53.50 | 1.00 | 33.50 | 1700 | A, B |" in text  # both seeds, from both machines
    # a target is judged over 3 paired seeds: before that the table says how far it has got; one seed has no spread
    assert "| DeS4 − supervised at 1/8 | ≥ +3.0 | +3.00 (2 seeds) | pending (2 of 3 seeds) |" in text
    assert "| DeS4 − MT + CutMix at 1/8 | ≥ +0.0 | +8.00 (1 seed) | pending (1 of 3 seeds) |" in text
    assert "| 1/8 | mt-cutmix | 1000 | 1 | 45.00 | – | 25.00 |" in text
    assert "| 1/8 | des4 (teacher) | 40.00 | 41.00 |" in text  # one search grid over both machines
    assert json.loads((tmp_path / "ceiling.json").read_text()) == records


def test_a_supervised_steps_cpu_seconds_come_from_runs_alone_on_the_cpu_at_the_same_thread_count():
    records = [{**_record("supervised", s, 50, steps=2000), "cpu_s": cpu, "threads": 2} for s, cpu in
               enumerate((1300.0, 1400.0, 2000.0))]
    records += [{**_record("supervised", 0, 50, shared=True), "cpu_s": 5000.0, "threads": 2},  # shared: not a cost
                {**_record("supervised+equal-compute", 0, 50, steps=4000), "cpu_s": 2000.0, "threads": 1},
                {**_record("des4", 0, 53), "threads": 2}]  # not supervised
    assert supervised_step_cpu(records) == {2: (pytest.approx(0.7), 3), 1: (0.5, 1)}


def test_the_benchmark_measures_the_step_cost_ratios_at_the_studys_batches(tmp_path):
    import benchmark

    assert benchmark.main(["--only", "training", "--quick", "--batch-size", "3", "--unlabeled-batch-size", "1",
                           "--out", str(tmp_path)]) == 0
    ratios = json.loads((tmp_path / "step_ratios.json").read_text())
    training = ratios["training"]
    assert (training["batch_size"], training["unlabeled_batch_size"]) == (3, 1)
    assert training["des4_over_supervised"] > 0 and training["mean_teacher_over_supervised"] > 0
    assert ratios["machine"]["cpu_model"]


def test_options_that_help_on_seed_0_get_more_seeds_and_gains_are_paired_with_the_same_commits_baseline(tmp_path):
    first = {"baseline": 40.0, "fp": 40.6, "two-views": 40.4, "threshold-0.95": 38.0}
    assert ceiling.helping_options(first, 0.5) == ["fp"]
    records = [_record("des4+baseline", s, 40 + s, split="dev") for s in (0, 1, 2)]
    records += [_record("des4+fp", s, 41 + s, split="dev") for s in (0, 1, 2)]
    records += [_record("des4+two-views", 0, 39, split="dev"), _record("des4", 0, 45, split="dev")]
    write_report(records, tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)
    text = (tmp_path / "ceiling.md").read_text()
    assert "| des4 | fp | 3 | 42.00 | +1.00 | +1.00 | – |" in text
    assert "| des4 | two-views | 1 | 39.00 | -1.00 | -1.00 | – |" in text
    search = text.split("## Budget search")[1].split("## Options")[0]
    assert "| 1/8 | des4 (teacher) | 45.00 |" in search and "+fp" not in search  # options stay out of the search


def test_a_run_that_exports_its_student_is_scored_by_its_student(tmp_path):
    final = {"teacher": {"mean_iou": 0.40}, "student": {"mean_iou": 0.44}}
    assert ceiling.exported_network(tmp_path, final) == "teacher"  # no train_config.yaml: the default export
    (tmp_path / "train_config.yaml").write_text("method: des4\nexport: student\n")
    assert ceiling.exported_network(tmp_path, final) == "student"  # what best/ and last/ hold
    assert ceiling.exported_network(tmp_path, {"teacher": {"mean_iou": 0.40}}) == "teacher"  # a supervised run


def test_the_label_fractions_val_runs_come_before_the_full_label_search(tmp_path, monkeypatch):
    calls = []

    def train(self, split, fraction, row, steps, seed):
        calls.append((split, fraction, row, steps, seed))
        return {"dev_miou": 40.0 + min(steps, 1000) / 100}  # doubling past 1000 gains nothing

    monkeypatch.setattr(ceiling.Study, "train", train)
    study = object.__new__(ceiling.Study)
    study.min_gain, study.ratios = 0.5, {}  # no step-cost ratios: no equal-compute row
    study.run(["search", "val"])
    first_full = next(i for i, call in enumerate(calls) if call[1] == "full")
    assert {call[1] for call in calls[:first_full]} == {"1/32", "1/8"}
    assert sum(call[0] == "val" for call in calls[:first_full]) == 2 * 3 * 3  # 2 fractions × 3 rows × 3 seeds
    assert ("val", "1/8", "des4", 1000, 2) in calls[:first_full] and ("val", "full", "supervised", 1000, 0) in calls
    assert {call[2] for call in calls[first_full:]} == set(ceiling.ROWS)  # three rows at full labels too
    assert calls[-1] == ("val", "full", "des4", 1000, 2)
    calls.clear()
    study.run(["val"])  # val alone still finds the budgets (the search's runs are finished: read, not retrained)
    assert sum(call[0] == "val" for call in calls) == 3 * 3 * 3
    calls.clear()
    study.run(["search", "val", "options"])  # the question (val at 1/32 and 1/8) is answered before any option trains
    first_option = next(i for i, call in enumerate(calls) if call[0] == "dev" and "+" in call[2])
    assert sum(call[0] == "val" and call[1] != "full" for call in calls[:first_option]) == 2 * 3 * 3
    assert all(call[1] == "full" for call in calls[first_option:] if call[0] == "val")


def test_full_label_semi_supervised_rows_draw_unlabeled_batches_from_the_labeled_images():
    flag = "--unlabeled-includes-labeled"
    assert flag in ceiling.row_args("full", "des4") and flag in ceiling.row_args("full", "mt-cutmix+fp")
    assert flag not in ceiling.row_args("full", "supervised") and flag not in ceiling.row_args("1/8", "des4")
    assert ceiling.row_args("1/8", "mt-cutmix") == tuple(ceiling.ROW_ARGS["mt-cutmix"])


def _study(tmp_path):
    import argparse

    report_dir = tmp_path / "reports" / "ceiling"
    (report_dir / "splits").mkdir(parents=True)
    (report_dir / "splits" / "selection.json").write_text(json.dumps({"classes": ["road", "sign"],
                                                                       "train_class_share": [0.9, 0.01]}))
    return ceiling.Study(argparse.Namespace(recipe=ceiling.REPO / "configs" / "camvid_ceiling.yaml", data_root=tmp_path,
                                            runs_dir=tmp_path / "runs", report_dir=report_dir, min_gain=0.5, extra=[]))


def test_export_student_is_the_baselines_own_run_scored_by_its_student(tmp_path, monkeypatch):
    study = _study(tmp_path)
    baseline = study.folder("dev", "1/8", "des4+baseline", 1000, 0)
    baseline.mkdir(parents=True)
    scores = {"teacher": (0.40, {"road": 0.70, "sign": 0.10}), "student": (0.44, {"road": 0.72, "sign": 0.16})}
    final = {name: {"mean_iou": miou, "per_class_iou": per_class} for name, (miou, per_class) in scores.items()}
    (baseline / "results.json").write_text(json.dumps({"final": final}))
    trained = []
    monkeypatch.setattr(ceiling.Study, "_train", lambda self, folder, *key: trained.append(folder))
    monkeypatch.setattr(ceiling.Study, "write_report", lambda self: None)

    record = study.train("dev", "1/8", "des4+export-student", 1000, 0)
    assert trained == []  # --export changes what is saved, not what is trained: no second run
    assert record["row"] == "des4+export-student" and record["same_run_as"] == "des4+baseline"
    assert record["dev_miou"] == pytest.approx(44.0) and record["dev_tail_miou"] == pytest.approx(16.0)
    baseline_record = study.train("dev", "1/8", "des4+baseline", 1000, 0)
    assert baseline_record["dev_miou"] == pytest.approx(40.0)  # its teacher
    # the record keeps the student's per-class IoU: export-student can be scored once the folder is gone
    assert baseline_record["student_per_class_iou"] == pytest.approx({"road": 72.0, "sign": 16.0})


def test_each_rows_options_train_at_its_own_chosen_budget_des4_first(monkeypatch):
    calls = []
    monkeypatch.setattr(ceiling.Study, "train", lambda self, *key: calls.append(key) or {"dev_miou": 40.0})
    study = object.__new__(ceiling.Study)
    study.min_gain = 0.5
    study.options({("1/8", "des4"): 8000, ("1/8", "mt-cutmix"): 4000, ("1/8", "supervised"): 2000})
    assert calls == [("dev", "1/8", f"{row}+{option}", steps, 0) for row, steps in (("des4", 8000), ("mt-cutmix", 4000))
                     for option in ceiling.OPTIONS]  # no option helped: seed 0 only, and no supervised option


def test_the_options_baseline_is_the_search_run_where_its_commit_trains_alike(tmp_path, monkeypatch):
    study = _study(tmp_path)
    search_run = {**_record("des4", 0, 46.0, split="dev", steps=4000), "student_miou": 48.5, "tail_classes": ["sign"],
                  "student_per_class_iou": {"road": 90.0, "sign": 12.0}}
    study.records[study.key(search_run)] = search_run
    trained, alike = [], []
    monkeypatch.setattr(ceiling.Study, "_train", lambda self, folder, *key: trained.append(key))
    monkeypatch.setattr(ceiling.Study, "record", lambda self, folder, *key, network=None: {"row": key[2]})
    monkeypatch.setattr(ceiling.Study, "write_report", lambda self: None)
    monkeypatch.setattr(ceiling, "same_training_code", lambda commit, other: alike.append(commit) or commit == "abc1234")

    baseline = study.train("dev", "1/8", "des4+baseline", 4000, 0)
    assert trained == [] and alike == ["abc1234"]  # the same command at a commit that trains alike: not run twice
    assert baseline["row"] == "des4+baseline" and baseline["same_run_as"] == "des4" and baseline["dev_miou"] == 46.0
    # its student, from the record alone (the run's folder is on another machine)
    student = study.train("dev", "1/8", "des4+export-student", 4000, 0)
    assert trained == [] and student["dev_miou"] == 48.5 and student["dev_tail_miou"] == pytest.approx(12.0)
    assert student["per_class_iou"] == {"road": 90.0, "sign": 12.0} and student["same_run_as"] == "des4+baseline"

    study.records[study.key(search_run)] = {**search_run, "commit": "0ld0000"}  # the search ran other training code
    assert study.train("dev", "1/8", "mt-cutmix+baseline", 4000, 0)["row"] == "mt-cutmix+baseline"  # no search run
    study.records[("dev", "1/8", "des4", 4000, 1)] = {**search_run, "seed": 1, "commit": "0ld0000"}
    study.train("dev", "1/8", "des4+baseline", 4000, 1)
    assert [key[:3] for key in trained] == [("dev", "1/8", "mt-cutmix+baseline"), ("dev", "1/8", "des4+baseline")]


def test_two_commits_train_alike_only_when_the_training_code_is_equal_to_the_byte():
    if ceiling.git_commit() == "unknown":
        pytest.skip("not a git checkout")
    assert ceiling.same_training_code("HEAD", "HEAD")
    assert not ceiling.same_training_code("e55917b^", "e55917b")  # the full-label option: des4_hf/ and scripts/
    assert ceiling.same_training_code("c4b3595", "96f3dba")  # the equal-compute row: benchmarks/ only
    assert not ceiling.same_training_code("no-such-commit", "HEAD")


def test_the_search_grid_shows_teacher_and_student_per_budget_and_the_chosen_one_in_bold(tmp_path):
    records = [_record("supervised", 0, miou, split="dev", steps=steps)
               for steps, miou in ((500, 40.0), (1000, 42.0), (2000, 42.2))]
    records += [{**_record("des4", 0, miou, split="dev", steps=steps), "student_miou": student}
                for steps, miou, student in ((500, 41.0, 41.5), (1000, 43.0, 44.0))]
    write_report(records, tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)
    text = (tmp_path / "ceiling.md").read_text()
    assert "| fraction | row | 500 steps | 1000 steps | 2000 steps |" in text
    assert "| 1/8 | supervised | 40.00 | **42.00** | 42.20 |" in text  # 2000 gained 0.2 < 0.5: 1000 is chosen
    assert "| 1/8 | des4 (teacher) | 41.00 | 43.00 |  |" in text  # still searching: nothing in bold
    assert "| 1/8 | des4 (student) | 41.50 | 44.00 |  |" in text
    assert "supervised (student)" not in text


def test_the_search_trains_the_row_at_the_smallest_undecided_budget_next(monkeypatch):
    gains = {"supervised": 1000, "mt-cutmix": 16000, "des4": 4000}  # each row's score stops rising past this budget
    calls = []

    def train(self, split, fraction, row, steps, seed):
        calls.append((fraction, row, steps))
        return {"dev_miou": 40.0 + min(steps, gains[row]) / 1000}

    monkeypatch.setattr(ceiling.Study, "train", train)
    study = object.__new__(ceiling.Study)
    study.min_gain = 0.5
    chosen = study.search([("1/8", row) for row in ceiling.ROWS])
    assert chosen == {("1/8", "supervised"): 1000, ("1/8", "mt-cutmix"): 8000, ("1/8", "des4"): 4000}
    budgets = [steps for _, _, steps in calls]
    assert budgets == sorted(budgets)  # no row goes on to a budget while another waits at a smaller one
    assert calls[:3] == [("1/8", row, 500) for row in ceiling.ROWS]  # ties: the rows in order
    assert calls[-2:] == [("1/8", "mt-cutmix", 8000), ("1/8", "des4", 8000)] and len(calls) == 3 + 5 + 5


def test_a_row_still_gaining_at_the_largest_budget_is_chosen_there_and_marked(tmp_path):
    records = [_record("des4", 0, 40.0 + steps / 1000, split="dev", steps=steps)
               for steps in (500, 1000, 2000, 4000, ceiling.MAX_BUDGET)]
    write_report(records, tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)
    grid = next(line for line in (tmp_path / "ceiling.md").read_text().splitlines() if line.startswith("| 1/8 | des4"))
    assert grid.endswith(f"| **{40.0 + ceiling.MAX_BUDGET / 1000:.2f}** (cap) |")
    write_report(records[:-1], tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)  # below the cap, still gaining: no choice yet
    assert "**" not in next(line for line in (tmp_path / "ceiling.md").read_text().splitlines()
                            if line.startswith("| 1/8 | des4"))


def test_a_record_states_the_settings_the_run_trained_with_not_the_recipes(tmp_path):
    import argparse

    recipe = ceiling.REPO / "configs" / "camvid_ceiling.yaml"
    report_dir = tmp_path / "reports" / "ceiling"
    (report_dir / "splits").mkdir(parents=True)
    (report_dir / "splits" / "selection.json").write_text(json.dumps({"classes": ["road", "sign"],
                                                                       "train_class_share": [0.9, 0.01]}))
    (report_dir / "step_ratios.json").write_text(json.dumps(RATIOS))
    study = ceiling.Study(argparse.Namespace(recipe=recipe, data_root=tmp_path, runs_dir=tmp_path / "runs",
                                             report_dir=report_dir, min_gain=0.5, extra=[]))
    final = {"teacher": {"mean_iou": 0.5, "per_class_iou": {"road": 0.9, "sign": 0.1}}}
    folders = {}
    for name, config in (("recipe", ""), ("device", "frame_scale: 1.0\ncrop_size: 360\nsupervised_warmup: 0.1\n")):
        folders[name] = study.folder("dev", "1/8", "des4", 1000, 0).with_name(name)
        folders[name].mkdir(parents=True)
        (folders[name] / "results.json").write_text(json.dumps({"final": final}))
        if config:  # --frame-scale 1.0 --crop-size 360 --supervised-warmup 0.1, as the trainer records them
            (folders[name] / "train_config.yaml").write_text(config)
    recipe_record = study.record(folders["recipe"], "dev", "1/8", "des4", 1000, 0)
    device_record = study.record(folders["device"], "dev", "1/8", "des4", 1000, 0)
    assert (recipe_record["resolution"], recipe_record["crop"]) == ("240×180", 160)  # no train_config: the recipe's
    assert (device_record["resolution"], device_record["crop"]) == ("480×360", 360)
    assert recipe_record["sup_step_equiv"] == pytest.approx(200 + 800 * 1.7)  # warm-up steps count as supervised
    assert device_record["sup_step_equiv"] == pytest.approx(100 + 900 * 1.7)


def test_val_gives_supervised_des4s_compute_at_1_32_and_1_8_for_the_equal_compute_comparison(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ceiling.Study, "train", lambda self, *key: calls.append(key) or {"dev_miou": 40.0})
    study = object.__new__(ceiling.Study)
    study.min_gain, study.ratios, study.settings = 0.5, RATIOS, {"supervised_warmup": 0.1}
    assert study.equal_compute({("1/8", "des4"): 1000}) == {("1/8", ceiling.EQUAL_COMPUTE): 100 + 900 * 1.7}
    assert study.equal_compute({("1/32", "des4"): 2000, ("full", "des4"): 1000}) == {
        ("1/32", ceiling.EQUAL_COMPUTE): 200 + 1800 * 1.7}  # not at full labels
    study.ratios = {}
    assert study.equal_compute({("1/8", "des4"): 1000}) == {}  # no step-cost ratios: no equal compute
    study.ratios = RATIOS
    study.run(["search", "val"])  # 500 → 1000 gains nothing: every row's budget is 500, DeS4's costs 50 + 450 × 1.7
    assert [key for key in calls if key[2] == ceiling.EQUAL_COMPUTE] == [
        ("val", fraction, ceiling.EQUAL_COMPUTE, 815, seed) for seed in ceiling.SEEDS for fraction in ("1/32", "1/8")]
    records = [_record("des4", s, 50 + s) for s in (0, 1, 2)] + [_record(ceiling.EQUAL_COMPUTE, s, 48.0, steps=1700)
                                                                  for s in (0, 1, 2)]
    records += [{**_record(row, 0, miou), "fraction": "1/32"} for row, miou in (("des4", 40.0),
                                                                              (ceiling.EQUAL_COMPUTE, 41.0))]
    write_report(records, tmp_path, RATIOS, 0.5, ceiling.MAX_BUDGET)
    text = (tmp_path / "ceiling.md").read_text()
    assert "| DeS4 − supervised at 1/8, equal compute | ≥ +1.5 | +3.00 (3 seeds) | yes |" in text
    assert "| DeS4 − supervised at 1/32, equal compute | no target | -1.00 (1 seed) | – |" in text
