"""transformers' own common test mixins (``ModelTesterMixin``, ``ImageProcessingTestMixin``) run against DeS4 with a
tiny config: the conformance bar of a transformers model (issue 32).

The mixins are not copied here. ``scripts/test.sh`` unpacks ``tests/`` from the transformers source distribution of
the installed version (``pip download --no-binary :all: transformers==X``) and names it in
``$DES4_TRANSFORMERS_TESTS``; without it these tests skip. Two helper modules that the sdist's
``test_modeling_common.py`` imports are not in the sdist (``exporters/``, ``generation/``): empty stand-ins take their
place, so the export and generation mixins do not run (DeS4 generates nothing; ``tests/test_modeling.py`` exports).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.modeling_outputs import SemanticSegmenterOutput

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor, Des4ImageProcessorPil

SOURCE = Path(os.environ.get("DES4_TRANSFORMERS_TESTS", "")) if os.environ.get("DES4_TRANSFORMERS_TESTS") else None
if SOURCE is None or not (SOURCE / "test_modeling_common.py").is_file():
    pytest.skip(f"transformers {transformers.__version__}'s common test mixins are not unpacked: run through "
                "scripts/test.sh, which sets $DES4_TRANSFORMERS_TESTS", allow_module_level=True)
pytest.importorskip("parameterized", reason="the mixins need it: pip install -e '.[test]'")

PACKAGE = "transformers_common_tests"


FIXTURES = Path(tempfile.mkdtemp(prefix="des4-transformers-fixtures-"))


def _local_fixture(url: str) -> str:
    """A stand-in file for one of transformers' test fixture URLs: a 640×480 picture with smooth structure (so that
    the resampling of two backends can be compared), or for a ``.png`` a label map with a few classes."""
    path = FIXTURES / f"{abs(hash(url))}{Path(url).suffix}"
    if not path.exists():
        rows, cols = np.mgrid[0:480, 0:640].astype(np.float64)
        if url.endswith(".png"):  # a segmentation map: class indices in bands
            Image.fromarray(((rows // 60 + cols // 160) % 5).astype(np.uint8)).save(path)
        else:
            channels = [np.sin(rows / 37 + k) * np.cos(cols / 53 - k) for k in range(3)]
            Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)).save(path)
    return str(path)


def _load_mixins() -> tuple[types.ModuleType, types.ModuleType]:
    """``test_modeling_common`` and ``test_image_processing_common`` imported as modules of one package (their
    relative imports need it), with empty stand-ins for the two helper modules the sdist leaves out."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(SOURCE)]
        sys.modules[PACKAGE] = package
        for name, mixin in (("exporters.test_export", "ExportTesterMixin"),
                            ("generation.test_utils", "GenerationTesterMixin")):
            for prefix in (f"{PACKAGE}.{name.split('.')[0]}", f"{PACKAGE}.{name}"):
                sys.modules.setdefault(prefix, types.ModuleType(prefix))
            setattr(sys.modules[f"{PACKAGE}.{name}"], mixin, type(mixin, (), {}))
        # utils/fetch_hub_objects_for_ci.py (not in the sdist either) maps a fixture URL to CI's local copy: here, to
        # a made-up picture of the same kind (a photo, or an ADE20k-style label map), for a suite that never downloads
        fetch = sys.modules.setdefault("fetch_hub_objects_for_ci", types.ModuleType("fetch_hub_objects_for_ci"))
        fetch.url_to_local_path = _local_fixture
    modeling, image_processing = (importlib.import_module(f"{PACKAGE}.test_modeling_common"),
                                  importlib.import_module(f"{PACKAGE}.test_image_processing_common"))
    if hasattr(image_processing, "httpx"):  # transformers < 5.25 fetches its fixture photo itself
        image_processing.httpx = types.SimpleNamespace(
            get=lambda url, **_: types.SimpleNamespace(content=Path(_local_fixture(url)).read_bytes()))
    return modeling, image_processing


modeling_common, image_processing_common = _load_mixins()

ID2LABEL = {0: "background", 1: "road", 2: "car"}


class Des4ModelTester:
    """What the mixins read from a model tester: a tiny config and a batch."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 2, image_size: int = 32) -> None:
        self.parent, self.batch_size, self.image_size = parent, batch_size, image_size
        self.num_labels, self.is_training = len(ID2LABEL), True
        self.num_hidden_layers = 1  # hidden_states = (the pixel embeddings,)

    def get_config(self) -> Des4Config:
        config = Des4Config(backbone="test_resnet", id2label=ID2LABEL, decoder_channels=16, low_level_channels=8,
                            encoder_weights=None)
        return config

    def prepare_config_and_inputs_for_common(self) -> tuple[Des4Config, dict[str, torch.Tensor]]:
        pixel_values = modeling_common.floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class Des4ModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (Des4ForSemanticSegmentation,)
    has_attentions = False
    test_resize_embeddings = False  # no token embeddings: a pixel model

    def setUp(self) -> None:
        self.model_tester = Des4ModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            batch, _, height, width = inputs_dict["pixel_values"].shape
            generator = torch.Generator().manual_seed(0)  # the same labels on every call (tuple vs dict outputs)
            inputs_dict["labels"] = torch.randint(0, self.model_tester.num_labels, (batch, height, width),
                                                  generator=generator)
        return inputs_dict

    def test_hidden_states_output(self):
        """DeS4's own contract in place of the mixin's token-shaped one (as transformers' SegFormer test does):
        ``hidden_states`` = (the pixel embeddings at stride 4,), asked for by argument or by the config."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        size = self.model_tester.image_size
        for ask in ({"output_hidden_states": True}, {}):
            config.output_hidden_states = not ask
            model = Des4ForSemanticSegmentation(config).eval()
            with torch.no_grad():
                (embeddings,) = model(**inputs_dict, **ask).hidden_states
            self.assertEqual(tuple(embeddings.shape),
                             (self.model_tester.batch_size, config.decoder_channels, size // 4, size // 4))

    def test_model_get_set_embeddings(self):
        """A vision model's contract in place of the mixin's token one (as transformers' ViT test does): the input
        embeddings are the layer that embeds pixels, here the encoder's first convolution; a new one is used."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = Des4ForSemanticSegmentation(config)
        stem = model.get_input_embeddings()
        self.assertIsInstance(stem, torch.nn.Conv2d)
        self.assertEqual(stem.in_channels, 3)
        self.assertIsNone(model.get_output_embeddings())
        calls = []
        replacement = torch.nn.Conv2d(3, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        replacement.register_forward_hook(lambda *_: calls.append(1))
        model.set_input_embeddings(replacement)
        self.assertIs(model.get_input_embeddings(), replacement)
        model.train()(**inputs_dict)
        self.assertEqual(calls, [1])


class Des4ImageProcessingTester(getattr(image_processing_common, "ImageProcessingTester", object)):
    """What the image-processing mixin reads: the processor's settings, inputs and the shapes it should return."""

    def __init__(self, parent: unittest.TestCase) -> None:
        self.parent, self.batch_size, self.num_channels = parent, 7, 3
        self.min_resolution, self.max_resolution, self.num_labels = 30, 400, len(ID2LABEL)
        self.do_resize, self.size = True, {"height": 18, "width": 20}
        self.image_processing_classes = BACKENDS

    def prepare_image_processor_dict(self) -> dict[str, object]:
        return {"do_resize": self.do_resize, "size": self.size, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5]}

    def prepare_post_process_semantic_segmentation_inputs(self) -> tuple[dict[str, object], dict[str, int]]:
        logits = torch.randn(self.batch_size, self.num_labels, self.size["height"], self.size["width"])
        return {"outputs": SemanticSegmenterOutput(logits=logits)}, {"num_labels": self.num_labels, **self.size}

    def expected_output_image_shape(self, images) -> tuple[int, int, int]:
        return self.num_channels, self.size["height"], self.size["width"]

    def prepare_image_inputs(self, equal_resolution=False, numpify=False, torchify=False, **kwargs):
        return image_processing_common.prepare_image_inputs(
            batch_size=kwargs.get("batch_size") or self.batch_size,
            min_resolution=kwargs.get("min_resolution") or self.min_resolution,
            max_resolution=kwargs.get("max_resolution") or self.max_resolution,
            num_channels=kwargs.get("num_channels") or self.num_channels,
            equal_resolution=equal_resolution, numpify=numpify, torchify=torchify)


BACKENDS = {"torchvision": Des4ImageProcessor, "pil": Des4ImageProcessorPil}


POST_PROCESS_MIXINS = tuple(getattr(image_processing_common, name) for name in ("PostProcessSemanticSegmentationTestMixin",)
                            if hasattr(image_processing_common, name))  # transformers >= 5.25


class Des4ImageProcessingTest(image_processing_common.ImageProcessingTestMixin, *POST_PROCESS_MIXINS,
                              unittest.TestCase):
    image_processor_tester_class = Des4ImageProcessingTester

    def setUp(self) -> None:  # the mixin finds a model's processors by its test folder's name: named here instead
        self.image_processor_tester = Des4ImageProcessingTester(self)
        if not isinstance(getattr(type(self), "image_processing_classes", None), property):  # transformers < 5.25
            self.image_processing_classes = BACKENDS

    @property
    def image_processor_dict(self) -> dict[str, object]:
        return self.image_processor_tester.prepare_image_processor_dict()

    @unittest.skip("deliberate refusal: DeS4 takes RGB images only (a 4-value image_mean is refused in one line)")
    def test_call_numpy_4_channels(self):
        pass
