"""Des4ImageProcessor: colour/bit-depth conversion, normalisation, resize, save/load, post-processing.

Issue 3, point 5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

import des4_hf  # noqa: F401  (registers the Auto classes)
from des4_hf import Des4ImageProcessor
from des4_hf.image_processing_des4 import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

HEIGHT, WIDTH = 12, 20
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
# Two inputs "agree" when their [0, 1] values differ by at most one 8-bit step; in normalised units
# that is 1/255 divided by the channel's std.
ONE_STEP = (1.0 / 255.0) / STD


@pytest.fixture
def rgb8() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def expected_values(rgb8: np.ndarray) -> torch.Tensor:
    """The (3, H, W) normalised tensor of an 8-bit RGB array, computed by hand."""
    unit = torch.from_numpy(rgb8.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (unit - MEAN) / STD


def pixels(image, **kwargs) -> torch.Tensor:
    return Des4ImageProcessor()(image, **kwargs)["pixel_values"]


def assert_within_one_step(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert ((actual - expected).abs() <= ONE_STEP + 1e-6).all()


def test_rgb_pil_is_normalised_with_imagenet_statistics(rgb8):
    values = pixels(Image.fromarray(rgb8))
    assert values.shape == (1, 3, HEIGHT, WIDTH) and values.dtype == torch.float32
    torch.testing.assert_close(values[0], expected_values(rgb8), rtol=0, atol=1e-6)


def test_grayscale_pil_is_repeated_to_three_channels(rgb8):
    gray = rgb8[..., 0]
    image = Image.fromarray(gray)
    assert image.mode == "L"
    values = pixels(image)
    torch.testing.assert_close(
        values[0], expected_values(np.repeat(gray[..., None], 3, axis=-1)), atol=1e-6, rtol=0
    )


def test_rgba_pil_drops_alpha(rgb8):
    alpha = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb8, alpha], axis=-1))
    assert rgba.mode == "RGBA"
    torch.testing.assert_close(pixels(rgba)[0], expected_values(rgb8), atol=1e-6, rtol=0)


def sixteen_bit(values8: np.ndarray) -> np.ndarray:
    """The 16-bit version of 8-bit data (×257), plus low-bit detail that 8 bits cannot hold."""
    detail = np.random.default_rng(2).integers(0, 257, values8.shape).astype(np.uint32)
    return np.minimum(values8.astype(np.uint32) * 257 + detail, 65535).astype(np.uint16)


def test_sixteen_bit_pil_matches_eight_bit(rgb8, tmp_path):
    gray8 = rgb8[..., 1]
    image16 = Image.fromarray(sixteen_bit(gray8))
    assert image16.mode == "I;16"
    expected = expected_values(np.repeat(gray8[..., None], 3, axis=-1))
    assert_within_one_step(pixels(image16)[0], expected)
    # A 16-bit PNG read back from disk (how such images usually arrive).
    image16.save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as reread:
        assert reread.mode in {"I;16", "I"}
        assert_within_one_step(pixels(reread)[0], expected)


def test_uint16_numpy_matches_eight_bit(rgb8):
    assert_within_one_step(pixels(sixteen_bit(rgb8))[0], expected_values(rgb8))
    gray8 = rgb8[..., 2]
    assert_within_one_step(
        pixels(sixteen_bit(gray8))[0], expected_values(np.repeat(gray8[..., None], 3, axis=-1))
    )


def test_chw_tensors(rgb8):
    expected = expected_values(rgb8)
    chw_uint8 = torch.from_numpy(rgb8).permute(2, 0, 1).contiguous()
    torch.testing.assert_close(pixels(chw_uint8)[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels(chw_uint8.float() / 255.0)[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels(rgb8.transpose(2, 0, 1))[0], expected, atol=1e-6, rtol=0)  # CHW NumPy


def test_batch_of_same_size_images(rgb8):
    values = Des4ImageProcessor()([Image.fromarray(rgb8), Image.fromarray(rgb8[::-1].copy())])["pixel_values"]
    assert values.shape == (2, 3, HEIGHT, WIDTH)
    torch.testing.assert_close(values[1], expected_values(rgb8[::-1].copy()), atol=1e-6, rtol=0)


def test_numpy_return_tensors(rgb8):
    values = pixels(Image.fromarray(rgb8), return_tensors="np")
    assert isinstance(values, np.ndarray) and values.shape == (1, 3, HEIGHT, WIDTH)


def test_different_size_batch_is_an_error(rgb8):
    with pytest.raises(ValueError, match="different sizes"):
        Des4ImageProcessor()([Image.fromarray(rgb8), Image.fromarray(rgb8[:5])])


def test_no_resize_by_default(rgb8):
    assert pixels(Image.fromarray(rgb8)).shape[-2:] == (HEIGHT, WIDTH)


def test_resize_options(rgb8):
    image = Image.fromarray(rgb8)  # 20 wide, 12 high
    fixed = Des4ImageProcessor(do_resize=True, size={"height": 24, "width": 30})(image)["pixel_values"]
    assert fixed.shape == (1, 3, 24, 30)
    shortest = Des4ImageProcessor(do_resize=True, size={"shortest_edge": 6})(image)["pixel_values"]
    assert shortest.shape == (1, 3, 6, 10)
    per_call = Des4ImageProcessor()(image, do_resize=True, size={"height": 8, "width": 8})["pixel_values"]
    assert per_call.shape == (1, 3, 8, 8)
    # A constant image stays constant through resizing and normalisation.
    flat = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    resized = Des4ImageProcessor(do_resize=True, size={"height": 7, "width": 9})(flat)["pixel_values"]
    torch.testing.assert_close(resized[0], expected_values(flat)[:, :7, :9], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [None, {"height": 8}, {"width": 8, "shortest_edge": 4}])
def test_bad_resize_size(size):
    with pytest.raises(ValueError, match="shortest_edge"):
        Des4ImageProcessor(do_resize=True, size=size)


def test_bad_normalisation():
    with pytest.raises(ValueError, match="positive std"):
        Des4ImageProcessor(image_std=(0.2, 0.0, 0.2))


def test_unsupported_input_type():
    with pytest.raises(TypeError, match="PIL image"):
        Des4ImageProcessor()("not an image")


def test_save_load_round_trip(tmp_path, rgb8):
    processor = Des4ImageProcessor(
        do_resize=True,
        size={"height": 16, "width": 24},
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.25, 0.5, 1.0),
    )
    processor.save_pretrained(tmp_path)
    for loaded in (
        Des4ImageProcessor.from_pretrained(tmp_path),
        AutoImageProcessor.from_pretrained(tmp_path),
    ):
        assert isinstance(loaded, Des4ImageProcessor)
        assert loaded.do_resize and loaded.size == {"height": 16, "width": 24}
        assert loaded.image_mean == [0.5, 0.5, 0.5] and loaded.image_std == [0.25, 0.5, 1.0]
        image = Image.fromarray(rgb8)
        assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])


def test_post_process_semantic_segmentation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 10)
    processor = Des4ImageProcessor()
    native = processor.post_process_semantic_segmentation({"logits": logits})
    assert [m.shape for m in native] == [(8, 10), (8, 10)]
    assert torch.equal(native[0], logits[0].argmax(0)) and native[0].dtype == torch.int64

    resized = processor.post_process_semantic_segmentation(
        {"logits": logits}, target_sizes=[(16, 20), (5, 7)]
    )
    assert [tuple(m.shape) for m in resized] == [(16, 20), (5, 7)]
    assert all(int(m.max()) < 4 and int(m.min()) >= 0 for m in resized)
    # Same size: no resampling, exactly the argmax.
    same = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(8, 10), (8, 10)])
    assert all(torch.equal(a, b) for a, b in zip(same, native))
    # Works on model outputs (attribute access) too.
    from transformers.modeling_outputs import SemanticSegmenterOutput

    from_outputs = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits))
    assert torch.equal(from_outputs[1], native[1])
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(8, 10)])


@pytest.mark.parametrize("field, value", [("image_mean", [0.5, float("nan"), 0.5]), ("image_std", [0.2, 0.2, float("inf")])])
def test_saved_statistics_that_are_not_finite_are_refused(tmp_path, field, value):
    Des4ImageProcessor().save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    saved[field] = value
    path.write_text(json.dumps(saved))  # Python's json writes NaN / Infinity, as a broken export would
    with pytest.raises(ValueError, match=rf"{field}=.*three finite values each.*preprocessor_config\.json"):
        Des4ImageProcessor.from_pretrained(tmp_path)


# -- transformers-5 conventions (issue 16) --------------------------------------------------------------------------
def test_call_time_options_override_the_saved_ones(rgb8, caplog):
    processor = Des4ImageProcessor()
    image = Image.fromarray(rgb8)
    halves = processor(image, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])["pixel_values"]
    unit = torch.from_numpy(rgb8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    torch.testing.assert_close(halves, (unit - 0.5) / 0.5)  # they were silently ignored
    assert processor.image_mean == list(IMAGENET_DEFAULT_MEAN), "a call never changes the processor"
    assert processor(image, do_normalize=False)["pixel_values"].max() <= 1.0
    resized = processor(image, do_resize=True, size={"height": 6, "width": 10})["pixel_values"]
    assert resized.shape == (1, 3, 6, 10)
    with pytest.raises(ValueError, match="do_convert_rgb=False but the image has 1 channel"):
        processor(image.convert("L"), do_convert_rgb=False)
    ambiguous = rgb8[:3, :4]  # (3, 4, 3): HWC or CHW? the caller says
    as_hwc = processor(ambiguous, input_data_format="channels_last")["pixel_values"]
    as_chw = processor(ambiguous, input_data_format="channels_first")["pixel_values"]
    assert as_hwc.shape == (1, 3, 3, 4) and as_chw.shape == (1, 3, 4, 3)
    with caplog.at_level("WARNING", logger="des4_hf"):
        processor(image, do_center_crop=True)
    assert "ignores unknown argument(s) ['do_center_crop']" in caplog.text


def test_segmentation_maps_become_labels_resized_reduced_and_padded_like_their_images(rgb8):
    label_map = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    label_map[:, WIDTH // 2:] = 3
    label_map[0, 0] = 255
    image = Image.fromarray(rgb8)
    out = Des4ImageProcessor()(image, segmentation_maps=Image.fromarray(label_map))
    assert out["labels"].dtype == torch.int64 and torch.equal(out["labels"][0], torch.from_numpy(label_map).long())
    reduced = Des4ImageProcessor(do_reduce_labels=True)(image, segmentation_maps=label_map)["labels"][0]
    assert reduced[0, 0] == 255 and reduced[1, 0] == 255 and reduced[0, -1] == 2  # 0 → ignore, 3 → 2, 255 kept
    processor = Des4ImageProcessor(do_resize=True, size={"height": 6, "width": 10}, do_pad=True,
                                   pad_size={"height": 8, "width": 12})
    both = processor(image, segmentation_maps=label_map)
    assert both["pixel_values"].shape == (1, 3, 8, 12) and both["labels"].shape == (1, 8, 12)
    assert bool((both["labels"][0, 6:] == 255).all()) and bool((both["labels"][0, :, 10:] == 255).all())
    assert set(both["labels"][0, :6, :10].unique().tolist()) <= {0, 3, 255}, "nearest: no blended class ids"
    assert bool((both["pixel_values"][0, :, 6:] == 0).all()), "padded with the mean (0 after normalisation)"
    with pytest.raises(ValueError, match="1 segmentation maps for 2 images"):
        Des4ImageProcessor()([image, image], segmentation_maps=[label_map])


def test_padding_lets_mixed_sizes_batch_and_post_processing_crops_it_off():
    torch.manual_seed(0)
    processor = Des4ImageProcessor(do_pad=True, pad_size={"height": 40, "width": 48})
    images = [Image.fromarray(np.full((30, 48, 3), 90, np.uint8)), Image.fromarray(np.full((40, 20, 3), 200, np.uint8))]
    pixel_values = processor(images)["pixel_values"]
    assert pixel_values.shape == (2, 3, 40, 48)
    logits = torch.randn(2, 4, 40, 48)
    maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(30, 48), (40, 20)])
    assert [tuple(m.shape) for m in maps] == [(30, 48), (40, 20)]
    assert torch.equal(maps[1], logits[1, :, :40, :20].argmax(0)), "cropped, not squeezed"
    with pytest.raises(ValueError, match="does not fit pad_size"):
        processor(Image.fromarray(np.zeros((50, 10, 3), np.uint8)))


def test_post_processing_takes_the_transformers_5_signature():
    logits = torch.randn(2, 3, 8, 10)
    plain = Des4ImageProcessor().post_process_semantic_segmentation({"logits": logits}, target_sizes=[(16, 20)] * 2)
    scored = Des4ImageProcessor().post_process_semantic_segmentation(
        {"logits": logits}, target_sizes=[(16, 20)] * 2, return_segmentation_scores=True)
    assert torch.equal(scored[0]["segmentation"], plain[0]) and scored[0]["segmentation_scores"].shape == (3, 16, 20)


def test_new_options_round_trip(tmp_path):
    Des4ImageProcessor(do_pad=True, pad_size={"height": 64, "width": 96}, do_reduce_labels=True).save_pretrained(
        tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert loaded.do_pad and loaded.pad_size == {"height": 64, "width": 96} and loaded.do_reduce_labels


def test_torchvision_and_pil_backends_resolve_without_a_fallback_warning(tmp_path, rgb8, caplog):
    from transformers.utils import logging as hf_logging

    from des4_hf import Des4ImageProcessorPil

    Des4ImageProcessor(do_resize=True, size={"height": 6, "width": 10}).save_pretrained(tmp_path)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            tensor_backend = AutoImageProcessor.from_pretrained(tmp_path)  # transformers 5 asks for torchvision
            pil_backend = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    finally:
        hf_logging.disable_propagation()
    assert "backend is not available" not in caplog.text
    assert type(tensor_backend) is Des4ImageProcessor and type(pil_backend) is Des4ImageProcessorPil
    image = Image.fromarray(rgb8)
    torch.testing.assert_close(pil_backend(image)["pixel_values"], tensor_backend(image)["pixel_values"],
                               rtol=0, atol=1e-3)  # the same bilinear resize, by PIL and by torch
    label_map = np.arange(HEIGHT * WIDTH, dtype=np.int64).reshape(HEIGHT, WIDTH) % 7
    labels = pil_backend(image, segmentation_maps=label_map)["labels"]
    assert labels.shape == (1, 6, 10) and set(labels.unique().tolist()) <= set(range(7))
