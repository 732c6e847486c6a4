"""The run record says what ran (issue 31): the method's resolved flags only (a supervised run has no teacher, so no
decoupled teacher, shared head or re-weighting), and a step budget whose epochs never contradict its steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from des4_hf.method.recipe import METHODS, resolve_recipe
from des4_hf.training.checkpointing import TEACHER_OPTIONS, training_record
from des4_hf.training.config import TrainConfig
from des4_hf.training.trainer import Trainer

EXPECTED = {  # (teacher, decoupled, shared_head, reweight) per method preset (paper Table 3)
    "des4": (True, True, True, True),
    "mean-teacher": (True, False, False, False),
    "supervised": (False, False, False, False),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"f{index}.jpg")
        Image.fromarray(rng.integers(0, 3, (32, 40), dtype=np.uint8)).save(root / "SegmentationClass" / f"f{index}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("f0\nf1\nf2\nf3\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("f4\nf5\n")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


@pytest.mark.parametrize("method", METHODS)
def test_the_record_of_each_method_preset_says_what_ran(method, data_root, tmp_path):
    config = TrainConfig(method=method, backbone="test_resnet", encoder_weights=None, decoder_channels=16,
                         crop_size=32, batch_size=1, dataset="camvid", data_root=str(data_root), labeled_fraction=0.5,
                         num_workers=0, max_steps=6, epochs=80.0, output_dir=str(tmp_path / "run"),
                         mixed_precision="fp32")
    trainer = Trainer(config)
    trainer.prepare_data()
    trainer.build()
    record = training_record(trainer)
    teacher, decoupled, shared_head, reweight = EXPECTED[method]
    assert (record["method"], record["teacher"], record["decoupled"], record["shared_head"], record["reweight"]) == \
        (method, teacher, decoupled, shared_head, reweight)
    recipe = record["recipe"]
    assert not {"decoupled", "shared_head", "reweight"} & set(recipe)  # only the resolved flags above
    assert (set(TEACHER_OPTIONS) & set(recipe)) == (set(TEACHER_OPTIONS) if teacher else set())
    assert recipe["max_steps"] == 6 and recipe["epochs"] == round(6 / trainer.steps_per_epoch, 3)  # not 80


def test_a_full_label_semi_supervised_run_draws_its_unlabeled_batches_from_the_labeled_images(data_root, tmp_path):
    """``unlabeled_includes_labeled``: with every train image labeled, DeS4 still has an unlabeled stream (the
    ceiling study's full-label rows), and the record says so; without it the trainer refuses in one line."""
    from des4_hf.data import DataError, SemiSupervisedSplit

    SemiSupervisedSplit(["f0", "f1", "f2", "f3"], [], "full").save(tmp_path / "split")
    common = dict(method="des4", backbone="test_resnet", encoder_weights=None, decoder_channels=16, crop_size=32,
                  batch_size=1, dataset="camvid", data_root=str(data_root), split=str(tmp_path / "split"),
                  num_workers=0, max_steps=2, mixed_precision="fp32")
    trainer = Trainer(TrainConfig(**common, unlabeled_includes_labeled=True, output_dir=str(tmp_path / "full")))
    trainer.prepare_data()
    trainer.build()
    assert sorted(trainer.unlabeled_hf["id"]) == sorted(trainer.labeled_hf["id"]) == ["f0", "f1", "f2", "f3"]
    assert trainer.unlabeled_stream is not None and trainer.unlabeled_stream.batches_per_epoch == 4
    assert training_record(trainer)["recipe"]["unlabeled_includes_labeled"] is True
    refused = Trainer(TrainConfig(**common, output_dir=str(tmp_path / "refused")))
    refused.prepare_data()
    with pytest.raises(DataError, match="leaves 0 unlabeled image.*--unlabeled-includes-labeled"):
        refused.build()


def test_a_preset_wins_over_the_switches():
    assert resolve_recipe("mean-teacher", decoupled=True, shared_head=True).decoupled is False
    assert resolve_recipe("supervised").record()["teacher"] is False
    with pytest.raises(ValueError, match="method='fixmatch'"):
        resolve_recipe("fixmatch")


@pytest.mark.slow  # trains two steps
def test_exporting_the_student_saves_the_student_and_says_so(data_root, tmp_path):
    """SPEC §2.9 option ``export: student``: best/ and last/ hold the student, chosen by its val mIoU."""
    import torch

    from des4_hf import Des4ForSemanticSegmentation

    config = TrainConfig(method="des4", backbone="test_resnet", encoder_weights=None, decoder_channels=16,
                         crop_size=32, batch_size=1, dataset="camvid", data_root=str(data_root), labeled_fraction=0.5,
                         num_workers=0, max_steps=2, output_dir=str(tmp_path / "run"), mixed_precision="fp32",
                         export="student", overlays=0)
    trainer = Trainer(config)
    trainer.train()
    saved = Des4ForSemanticSegmentation.from_pretrained(tmp_path / "run" / "last")
    model = trainer.accelerator.unwrap_model(trainer.model)
    for name, expected in model.export("student").state_dict().items():
        assert torch.equal(saved.state_dict()[name], expected), name
    assert not all(torch.equal(saved.state_dict()[name], value)
                   for name, value in model.export("teacher").state_dict().items())
    assert saved.config.training["exported"] == "student"
