"""``scripts/predict.py`` / ``des4-predict`` on real CamVid images with a tiny random model (issue 3, pt 7).

CamVid is read in place from ../shared/data/camvid (the fixture skips without it); nothing is copied
into the repository: folders of images are made of symbolic links under pytest's tmp_path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from des4_hf_scripts.predict import main
from PIL import Image

from des4_hf import Des4ForSemanticSegmentation

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_LABELS = 4
FAST = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def baseline(model_dir, camvid_image_paths, not_an_image, tmp_path_factory):
    """One run over three CamVid images and a broken file: (exit code, stderr, output folder)."""
    out = tmp_path_factory.mktemp("preds")
    stderr = io.StringIO()  # module-scoped fixtures cannot use capsys
    inputs = [str(camvid_image_paths[0]), str(not_an_image), *map(str, camvid_image_paths[1:])]
    with contextlib.redirect_stderr(stderr):
        code = main(["--model", str(model_dir), *inputs, "--out", str(out), *FAST])
    return code, stderr.getvalue(), out


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P", f"{path.name} is {image.mode}, not a palette PNG"
        return np.asarray(image).copy()


def test_outputs_at_each_images_own_size(baseline, camvid_image_paths):
    code, stderr, out = baseline
    for path in camvid_image_paths:
        with Image.open(path) as source:
            size = source.size
        assert size == (480, 360)
        mask = read_mask(out / f"{path.stem}.png")
        assert mask.shape == (360, 480)  # 480 wide, 360 high
        assert mask.max() < NUM_LABELS
        with Image.open(out / f"{path.stem}_overlay.jpg") as blended:
            assert blended.format == "JPEG" and blended.mode == "RGB" and blended.size == size
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_a_broken_file_is_named_skipped_and_fails_the_run(baseline, not_an_image, camvid_image_paths):
    code, stderr, out = baseline
    assert code == 1
    assert str(not_an_image) in stderr and "not a readable image" in stderr
    assert not (out / "notes.png").exists() and not (out / "notes_overlay.jpg").exists()
    # The images after the broken one were still processed.
    assert (out / f"{camvid_image_paths[2].stem}.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        name for path in camvid_image_paths for name in (f"{path.stem}.png", f"{path.stem}_overlay.jpg")
    )


def test_folder_input(model_dir, camvid_image_paths, baseline, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in camvid_image_paths[:2]:
        (folder / path.name).symlink_to(path)
    (folder / "readme.txt").write_text("not an image, not an image extension: ignored\n")
    out = tmp_path / "preds"
    assert main(["--model", str(model_dir), str(folder), "--out", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        name for path in camvid_image_paths[:2] for name in (f"{path.stem}.png", f"{path.stem}_overlay.jpg")
    )
    for path in camvid_image_paths[:2]:
        np.testing.assert_array_equal(
            read_mask(out / f"{path.stem}.png"), read_mask(baseline[2] / f"{path.stem}.png")
        )


def test_batches_give_the_same_masks(model_dir, camvid_image_paths, baseline, tmp_path):
    out = tmp_path / "preds"
    inputs = [str(path) for path in camvid_image_paths]
    assert main(["--model", str(model_dir), *inputs, "--out", str(out), "--batch-size", "2", *FAST]) == 0
    for path in camvid_image_paths:
        batched, single = read_mask(out / f"{path.stem}.png"), read_mask(baseline[2] / f"{path.stem}.png")
        # oneDNN may sum in another order for another batch size (logits differ by ~1e-6), and a random
        # model has exact near-ties, so allow a handful of flipped pixels (0 on this machine).
        assert (batched != single).sum() <= 0.0001 * single.size, f"{path.name}: batching changed the mask"


def test_sliding_window(model_dir, camvid_image_paths, tmp_path):
    out = tmp_path / "preds"
    argv = ["--model", str(model_dir), str(camvid_image_paths[0]), "--out", str(out)]
    assert main([*argv, "--sliding-window", "--crop-size", "128", "--stride", "96", *FAST]) == 0
    mask = read_mask(out / f"{camvid_image_paths[0].stem}.png")
    assert mask.shape == (360, 480) and mask.max() < NUM_LABELS


def test_missing_preprocessor_config_falls_back_with_a_warning(
    model_dir, camvid_image_paths, tmp_path, caplog
):
    bare = tmp_path / "bare_model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).symlink_to(model_dir / name)
    with caplog.at_level(logging.WARNING, logger="des4_hf.predict"):
        code = main(["--model", str(bare), str(camvid_image_paths[0]), "--out", str(tmp_path / "p"), *FAST])
    assert code == 0
    assert "preprocessor_config.json" in caplog.text and "Des4ImageProcessor() defaults" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "{tmp}/no_such_model/"], "no such directory"),
        (["--model", "{tmp}"], "holds no config.json, so it is not a folder written by save_pretrained"),
        (["--model", "someorg/des4-not-on-the-hub"], "is not in the local Hugging Face cache and Hub access is"),
        (["--stride", "200", "--crop-size", "128", "--sliding-window"], "--stride 200"),
        (["--crop-size", "1", "--stride", "1", "--sliding-window"], "--crop-size 1: use at least 64"),
        (["--crop-size", "128", "--stride", "8", "--sliding-window"], "--stride 8"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--precision", "fp16"], "not supported on the CPU"),
    ],
)
def test_bad_arguments_exit_2(model_dir, camvid_image_paths, tmp_path, capsys, extra, message):
    argv = ["--model", str(model_dir), str(camvid_image_paths[0]), "--out", str(tmp_path / "p"), *FAST]
    argv += [item.format(tmp=tmp_path) for item in extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_input_folder_is_never_the_output_folder(model_dir, camvid_image_paths, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(camvid_image_paths[0].read_bytes())  # a PNG input: <stem>.png would replace it
    before = (folder / "a.png").read_bytes()
    for inputs in ([str(folder)], [str(folder / "a.png")]):
        assert main(["--model", str(model_dir), *inputs, "--out", str(folder), *FAST]) == 2
        assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"] and (folder / "a.png").read_bytes() == before


def test_an_output_folder_that_cannot_be_made_is_one_line(model_dir, camvid_image_paths, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "preds"
    assert main(["--model", str(model_dir), str(camvid_image_paths[0]), "--out", str(out), *FAST]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("des4-predict: --out") and "Traceback" not in "\n".join(error)


def test_debug_shows_the_error_instead_of_the_line(camvid_image_paths, tmp_path):
    from des4_hf.loading import UsageError

    with pytest.raises(UsageError, match="no such directory"):
        main(["--model", str(tmp_path / "missing/"), str(camvid_image_paths[0]), "--out", str(tmp_path / "p"),
              "--debug", *FAST])


def test_no_inputs_found_exits_2(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "--model",
                str(model_dir),
                str(empty),
                str(tmp_path / "missing.jpg"),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no input images found" in err and "missing.jpg" in err


def test_usage_errors_from_argparse_exit_2(capsys):
    assert main(["--out", "x", "image.jpg"]) == 2  # --model missing
    assert "--model" in capsys.readouterr().err


def test_the_script_runs(model_dir, camvid_image_paths, not_an_image, tmp_path):
    out = tmp_path / "preds"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "predict.py"),
            "--model",
            str(model_dir),
            str(camvid_image_paths[0]),
            str(not_an_image),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert str(not_an_image) in result.stderr
    assert read_mask(out / f"{camvid_image_paths[0].stem}.png").shape == (360, 480)


def test_a_model_with_non_finite_weights_is_refused_in_one_line(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "diverged"
    broken.mkdir()
    for item in model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    tensors["decoder.embed.weight"] = torch.full_like(tensors["decoder.embed.weight"], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    assert main(["--model", str(broken), str(image), "--out", str(tmp_path / "masks"), *FAST]) == 2  # was 0
    error = capsys.readouterr().err  # after transformers' loading bar
    last = error.strip().splitlines()[-1]
    assert "Traceback" not in error and last.startswith("des4-predict: --model") and "decoder.embed.weight" in last
    assert "NaN or inf" in last and not (tmp_path / "masks").exists()


@pytest.mark.onednn_bf16
def test_auto_precision_is_timed_on_the_loaded_model(model_dir, tmp_path, probing, caplog):
    timed = probing({"fp32-nchw": 0.2, "fp32-channels_last": 0.5, "bf16-nchw": 0.9, "bf16-channels_last": 0.9})
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    with caplog.at_level(logging.INFO, logger="des4_hf"):
        assert main(["--model", str(model_dir), str(image), "--out", str(tmp_path / "masks"), *FAST]) == 0
    assert len(timed) == 4, "both precisions in both memory formats"
    (line,) = [record.getMessage() for record in caplog.records if "image(s) on" in record.getMessage()]
    assert "precision fp32" in line and "channels_last" not in line, line
    timed.clear()
    assert main(["--model", str(model_dir), str(image), "--out", str(tmp_path / "m2"), "--no-channels-last", *FAST]) == 0
    assert not timed, "NCHW was already timed for this network and CPU: cached"


def test_a_model_with_untrained_new_classes_is_refused_in_one_line(model_dir, tmp_path, capsys):
    tuned = Des4ForSemanticSegmentation.from_pretrained(model_dir, id2label={0: "road", 1: "car"},
                                                        label2id={"road": 0, "car": 1}, ignore_mismatched_sizes=True)
    tuned.save_pretrained(tmp_path / "tuned")
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    assert main(["--model", str(tmp_path / "tuned"), str(image), "--out", str(tmp_path / "masks"), *FAST]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"des4-predict: --model {tmp_path / 'tuned'}: none of the 2 class prototypes") and \
        "Train it first" in last


def test_a_large_image_goes_through_the_sliding_window_without_asking(model_dir, tmp_path):
    """Memory stays bounded (issue 34, problem 7): above --sliding-window-above pixels (1024) des4-predict predicts
    from crops, as --sliding-window does, instead of one whole-image forward."""
    rng = np.random.default_rng(0)
    wide = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (96, 1100, 3), dtype=np.uint8)).save(wide)
    masks = {}
    for name, extra in (("auto", []), ("window", ["--sliding-window"]), ("whole", ["--sliding-window-above", "2000"])):
        assert main(["--model", str(model_dir), str(wide), "--out", str(tmp_path / name), "--no-progress",
                     "--device", "cpu", "--precision", "fp32", *extra]) == 0
        masks[name] = read_mask(tmp_path / name / "wide.png")
    assert np.array_equal(masks["auto"], masks["window"])
    assert not np.array_equal(masks["auto"], masks["whole"])  # a whole-image forward sees other context
    assert main(["--model", str(model_dir), str(wide), "--out", str(tmp_path / "x"), "--sliding-window-above", "8"]) == 2
