"""Des4ForSemanticSegmentation: shapes, loss, init, submodules, checkpoints, Auto classes, pipeline (issue 3).

Everything runs on timm's tiny random ``test_resnet`` encoder with a 16-wide decoder, offline, on the CPU.
"""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput

import des4_hf  # noqa: F401  (registers the Auto classes)
from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor, PrototypeHead
from des4_hf.loading import UsageError, load_model_and_processor
from des4_hf.method.prototypes import update_prototypes_

ID2LABEL = {0: "background", 1: "road", 2: "car"}
WEIGHTS = "model.safetensors"


def tiny_config(**kwargs) -> Des4Config:
    defaults = dict(backbone="test_resnet", id2label=ID2LABEL, decoder_channels=16, low_level_channels=8)
    return Des4Config(**{**defaults, **kwargs})


def touched_model() -> Des4ForSemanticSegmentation:
    """A tiny model whose BN statistics and prototypes are no longer their initial values."""
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config())
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))  # moves BatchNorm running statistics
    sums = torch.randn(3, 16)
    counts = torch.tensor([4.0, 0.0, 2.0])  # class 1 unseen: its flag stays False
    update_prototypes_(model.prototype_head, sums, counts, momentum=0.9)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model (with its image processor) and the model it was saved from."""
    directory = tmp_path_factory.mktemp("des4_model")
    model = touched_model()
    model.save_pretrained(directory)
    Des4ImageProcessor().save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(1)
    return Des4ForSemanticSegmentation(tiny_config()).eval()


# -- shapes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(37, 51), (1, 1), (65, 33), (16, 16)])
@pytest.mark.parametrize("batch", [1, 2])
def test_logits_at_input_size_for_any_size(eval_model, batch, size):
    height, width = size
    with torch.no_grad():
        outputs = eval_model(torch.randn(batch, 3, height, width), output_hidden_states=True)
    assert isinstance(outputs, SemanticSegmenterOutput)
    assert outputs.loss is None
    assert outputs.logits.shape == (batch, 3, height, width)
    assert torch.isfinite(outputs.logits).all()
    (embeddings,) = outputs.hidden_states
    assert embeddings.shape == (batch, 16, math.ceil(height / 4), math.ceil(width / 4))


def test_output_stride_8_and_tuple_outputs():
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config(output_stride=8)).eval()
    pixel_values = torch.randn(1, 3, 37, 51)
    with torch.no_grad():
        logits, (embeddings,) = model(pixel_values, output_hidden_states=True, return_dict=False)
        assert model(pixel_values).hidden_states is None  # only on request
    assert logits.shape == (1, 3, 37, 51)
    assert embeddings.shape == (1, 16, 10, 13)


def test_separable_decoder_is_lighter_and_round_trips(tmp_path):
    torch.manual_seed(0)
    full = Des4ForSemanticSegmentation(tiny_config())
    separable = Des4ForSemanticSegmentation(tiny_config(separable_convs=True)).eval()
    separable.prototype_head.initialized.fill_(True)  # as if trained: a never-trained model refuses inference
    depthwise = [m for m in separable.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    # 3 atrous ASPP branches, the fusion conv and the embedding conv become depthwise + pointwise.
    assert len(depthwise) == 5 and all(m.groups == m.in_channels for m in depthwise)
    assert [m.dilation for m in depthwise[:3]] == [(6, 6), (12, 12), (18, 18)]
    count = lambda model: sum(p.numel() for p in model.decoder.parameters())  # noqa: E731
    assert count(separable) < count(full) / 2
    separable.save_pretrained(tmp_path)
    loaded = Des4ForSemanticSegmentation.from_pretrained(tmp_path)
    assert loaded.config.separable_convs is True
    for key, tensor in separable.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    pixel_values = torch.randn(1, 3, 37, 51)
    with torch.no_grad():  # identical weights; oneDNN's depthwise kernels may round differently (~1e-6)
        torch.testing.assert_close(loaded(pixel_values).logits, separable(pixel_values).logits, rtol=0, atol=1e-4)


def test_logits_are_scaled_cosines(eval_model):
    with torch.no_grad():
        logits = eval_model(torch.randn(1, 3, 32, 32)).logits
    assert logits.abs().max() <= eval_model.config.logit_scale + 1e-4


def test_bad_pixel_values_shape(eval_model):
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        eval_model(torch.randn(1, 1, 32, 32))


# -- loss ------------------------------------------------------------------------------------------------
def test_loss_ignores_255_like_cross_entropy():
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config()).train()
    pixel_values = torch.randn(2, 3, 37, 51)
    labels = torch.randint(0, 3, (2, 37, 51))
    labels[0, :10] = 255
    labels[1, :, :20] = 255
    outputs = model(pixel_values, labels=labels)
    valid = labels != 255
    flat_logits = outputs.logits.permute(0, 2, 3, 1)[valid]  # (N_valid, C)
    expected = F.cross_entropy(flat_logits, labels[valid])
    torch.testing.assert_close(outputs.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        outputs.loss, F.cross_entropy(outputs.logits, labels, ignore_index=255), rtol=1e-5, atol=1e-6
    )
    outputs.loss.backward()
    assert model.decoder.embed.weight.grad is not None


def test_all_ignored_labels_give_zero_loss_without_nan():
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config()).train()
    outputs = model(torch.randn(2, 3, 32, 32), labels=torch.full((2, 32, 32), 255))
    assert outputs.loss.item() == 0.0
    outputs.loss.backward()  # still attached to the graph
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_labels_at_the_wrong_size_are_rejected(eval_model):
    with pytest.raises(ValueError, match="one label map per image"):
        eval_model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 16, 16, dtype=torch.long))


# -- structure and initialisation ------------------------------------------------------------------------
def test_post_init_keeps_timm_weights():
    torch.manual_seed(123)
    reference = timm.create_model("test_resnet", pretrained=False, features_only=True, output_stride=16)
    torch.manual_seed(123)
    model = Des4ForSemanticSegmentation(tiny_config())
    expected = reference.state_dict()
    actual = model.encoder.body.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), f"post_init changed timm's {key}"


def test_encoder_decoder_and_head_are_separate_submodules(eval_model):
    assert isinstance(eval_model.encoder, nn.Module)
    assert isinstance(eval_model.decoder, nn.Module)
    assert isinstance(eval_model.prototype_head, PrototypeHead)
    groups = [
        {id(p) for p in eval_model.encoder.parameters()},
        {id(p) for p in eval_model.decoder.parameters()},
    ]
    assert all(groups) and not groups[0] & groups[1]
    assert groups[0] | groups[1] == {id(p) for p in eval_model.parameters()}  # the head has no parameters
    assert list(eval_model.prototype_head.parameters()) == []
    # The trainer composes them: embed = decoder(encoder(x)), logits = head(embed).
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        embeddings = eval_model.decoder(*eval_model.encoder(pixel_values))
        torch.testing.assert_close(embeddings, eval_model.embed(pixel_values))
        assert eval_model.prototype_head(embeddings).shape == (1, 3, 8, 8)


def test_prototypes_and_flags_are_persistent_buffers(eval_model):
    state = eval_model.state_dict()
    prototypes = state["prototype_head.prototypes"]
    assert prototypes.shape == (3, 16)
    torch.testing.assert_close(prototypes.norm(dim=1), torch.ones(3))
    assert state["prototype_head.initialized"].dtype == torch.bool
    assert state["prototype_head.initialized"].shape == (3,)
    assert not state["prototype_head.initialized"].any()  # a fresh model has seen no class
    assert not eval_model.prototype_head.prototypes.requires_grad


# -- checkpoints ---------------------------------------------------------------------------------------
def test_round_trip_is_exact(saved):
    directory, original = saved
    loaded = Des4ForSemanticSegmentation.from_pretrained(directory)
    assert not loaded.training
    assert all(not module.training for module in loaded.modules())
    expected, actual = original.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), f"{key} changed in the round trip"
    assert loaded.prototype_head.initialized.tolist() == [True, False, True]
    pixel_values = torch.randn(2, 3, 37, 51)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, original(pixel_values).logits)


def test_auto_classes(saved):
    directory, _ = saved
    assert isinstance(AutoConfig.from_pretrained(directory), Des4Config)
    model = AutoModelForSemanticSegmentation.from_pretrained(directory)
    assert isinstance(model, Des4ForSemanticSegmentation) and not model.training
    assert isinstance(AutoImageProcessor.from_pretrained(directory), Des4ImageProcessor)


def test_pipeline_returns_one_mask_per_present_class(saved):
    directory, _ = saved
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))  # 56 wide, 40 high
    segmenter = pipeline("image-segmentation", model=str(directory))
    results = segmenter(image)

    processor = Des4ImageProcessor()
    model = Des4ForSemanticSegmentation.from_pretrained(directory)
    with torch.no_grad():
        label_map = model(**processor(image)).logits[0].argmax(0)
    present = sorted(int(c) for c in label_map.unique())
    assert sorted(result["label"] for result in results) == sorted(ID2LABEL[c] for c in present)
    coverage = np.zeros((40, 56), dtype=int)
    for result in results:
        mask = result["mask"]
        assert mask.size == image.size
        array = np.asarray(mask) > 0
        class_id = {v: k for k, v in ID2LABEL.items()}[result["label"]]
        np.testing.assert_array_equal(array, (label_map == class_id).numpy())
        coverage += array
    assert (coverage == 1).all()  # the masks partition the image


def test_a_batched_pipeline_takes_images_of_mixed_sizes_with_a_padding_processor(saved, tmp_path):
    directory, model = saved
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)) for size in ((40, 56, 3), (33, 21, 3))]
    padded = tmp_path / "padded"
    for name in ("config.json", WEIGHTS):
        (padded / name).parent.mkdir(exist_ok=True)
        (padded / name).write_bytes((directory / name).read_bytes())
    Des4ImageProcessor(do_pad=True, pad_size={"height": 48, "width": 64}).save_pretrained(padded)
    batched = pipeline("image-segmentation", model=str(padded), batch_size=2)(images)  # "Sizes of tensors must match"
    one_by_one = [pipeline("image-segmentation", model=str(padded))(image) for image in images]
    for image, results, expected in zip(images, batched, one_by_one, strict=True):
        assert [r["label"] for r in results] == [r["label"] for r in expected]
        for result, reference in zip(results, expected, strict=True):
            assert result["mask"].size == image.size
            np.testing.assert_array_equal(np.asarray(result["mask"]), np.asarray(reference["mask"]))


def _rewrite_weights(source, target, edit):
    """Copy a saved model to ``target`` with ``edit`` applied to its weights."""
    target.mkdir()
    (target / "config.json").write_bytes((source / "config.json").read_bytes())
    tensors = load_file(source / WEIGHTS)
    edit(tensors)
    save_file(tensors, target / WEIGHTS, metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("key", ["prototype_head.prototypes", "prototype_head.initialized"])
def test_a_checkpoint_without_prototypes_warns_runs_and_the_applications_refuse_it(saved, tmp_path, key, caplog):
    directory, _ = saved
    broken = _rewrite_weights(directory, tmp_path / "broken", lambda tensors: tensors.pop(key))
    model, info = Des4ForSemanticSegmentation.from_pretrained(broken, output_loading_info=True)
    assert sorted(info["missing_keys"]) == [key]
    assert "lacks 1 tensors" in caplog.text and "prototypes of 3 classes are uninitialised" in caplog.text
    assert not model.prototype_head.initialized.any()  # a bank that was never stored was never set
    assert model(torch.randn(1, 3, 32, 32)).logits.isfinite().all()  # transformers' way: it warns and runs
    with pytest.raises(UsageError, match=rf"--model {broken}: the checkpoint lacks 1 tensors \(e.g. \['{key}'\]\)"):
        load_model_and_processor(str(broken), torch.device("cpu"))


def test_checkpoint_with_wrong_prototype_shape_fails(saved, tmp_path):
    directory, _ = saved

    def wrong_shape(tensors):
        tensors["prototype_head.prototypes"] = F.normalize(torch.randn(5, 16), dim=1)

    broken = _rewrite_weights(directory, tmp_path / "broken", wrong_shape)
    with pytest.raises(ValueError, match=r"shape"):
        Des4ForSemanticSegmentation.from_pretrained(broken)


def test_fine_tuning_to_new_classes_keeps_the_network_and_starts_fresh_prototypes(saved, caplog):
    directory, model = saved
    labels = {0: "road", 1: "car", 2: "sky", 3: "tree", 4: "sign"}
    with caplog.at_level("WARNING", logger="des4_hf"):
        tuned, info = Des4ForSemanticSegmentation.from_pretrained(
            directory, id2label=labels, label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True,
            output_loading_info=True)
    assert info["uninitialized_prototypes"] == list(labels.values())  # reported, as transformers reports keys
    assert "prototype_head.prototypes" in [key for key, *_ in info["mismatched_keys"]]
    assert "the prototypes of 5 classes are uninitialised" in caplog.text and "TRAIN this model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="des4_hf"):
        for _ in range(2):  # transformers' convention: it runs, and says so once
            assert tuned(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5, 32, 32)
    assert caplog.text.count("none of the 5 class prototypes is initialised") == 1
    with pytest.raises(ValueError, match=r"none of the 5 class prototypes is initialised \(\['road', 'car'"):
        tuned._check_prototypes()  # what des4-predict, des4-evaluate and the web demo refuse with
    assert tuned.config.num_labels == 5 and tuned.prototype_head.prototypes.shape == (5, 16)
    assert not bool(tuned.prototype_head.initialized.any()), "the new classes' prototypes wait for their data"
    torch.testing.assert_close(tuned.decoder.embed.weight, model.decoder.embed.weight)
    torch.testing.assert_close(tuned.encoder.state_dict(), model.encoder.state_dict())
    tuned.train()(torch.randn(2, 3, 32, 32))  # training is what sets them
    update_prototypes_(tuned.prototype_head, torch.randn(5, 16), torch.ones(5), 0.99)
    assert tuned.eval()(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5, 32, 32)  # once set, inference runs


def test_a_model_saved_before_its_new_classes_were_trained_is_still_flagged(saved, tmp_path):
    directory, _ = saved
    labels = {0: "road", 1: "car"}
    tuned = Des4ForSemanticSegmentation.from_pretrained(directory, id2label=labels, label2id={"road": 0, "car": 1},
                                                        ignore_mismatched_sizes=True)
    tuned.save_pretrained(tmp_path / "untrained")
    reloaded = Des4ForSemanticSegmentation.from_pretrained(tmp_path / "untrained")
    assert reloaded._prototypes_pending  # flagged again after the round trip: it warns, the applications refuse it
    with pytest.raises(ValueError, match="never trained on data of these classes"):
        reloaded._check_prototypes()
    from des4_hf.modeling_des4 import allow_uninitialized_prototypes

    with allow_uninitialized_prototypes():  # what evaluate_segmentation does (it names the classes in a warning)
        assert reloaded(torch.randn(1, 3, 32, 32)).logits.shape == (1, 2, 32, 32)


def test_truncated_weights_name_the_folder(saved, tmp_path):
    directory, _ = saved
    broken = tmp_path / "truncated"
    broken.mkdir()
    for name in ("config.json", WEIGHTS):
        (broken / name).write_bytes((directory / name).read_bytes())
    (broken / WEIGHTS).write_bytes((broken / WEIGHTS).read_bytes()[:-1000])  # a download cut short
    with pytest.raises(ValueError, match=f"{broken}: its weights file is truncated or corrupt"):
        Des4ForSemanticSegmentation.from_pretrained(broken)


def test_a_checkpoint_missing_another_tensor_warns_and_the_applications_refuse_it(saved, tmp_path, caplog):
    directory, model = saved
    broken = _rewrite_weights(
        directory, tmp_path / "broken", lambda tensors: tensors.pop("decoder.embed.weight")
    )
    loaded, info = Des4ForSemanticSegmentation.from_pretrained(broken, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["decoder.embed.weight"] and "lacks 1 tensors" in caplog.text
    assert info["uninitialized_prototypes"] == model.uninitialized_classes()  # the rest came from the file
    torch.testing.assert_close(loaded.prototype_head.prototypes, model.prototype_head.prototypes)
    with pytest.raises(UsageError, match=r"lacks 1 tensors \(e\.g\. \['decoder\.embed\.weight'\]\)"):
        load_model_and_processor(str(broken), torch.device("cpu"))


def test_loading_never_fetches_encoder_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config()).eval()
    model.config.encoder_weights = "imagenet"
    model.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained tried to fetch encoder weights")

    # Whatever des4_hf.pretrained becomes, loading a checkpoint must not call into it or download.
    fake = types.ModuleType("des4_hf.pretrained")
    fake.resolve_encoder_state_dict = refuse
    fake.load_encoder_weights = refuse
    monkeypatch.setitem(sys.modules, "des4_hf.pretrained", fake)
    monkeypatch.setattr(des4_hf, "pretrained", fake, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_create_model = timm.create_model

    def create_model(*args, **kwargs):
        assert not kwargs.get("pretrained"), "timm was asked for pretrained weights"
        return real_create_model(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    loaded = Des4ForSemanticSegmentation.from_pretrained(tmp_path)
    assert loaded.config.encoder_weights == "imagenet"  # the record is kept
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


REMOTE_CODE = r"""
import json, sys
sys.modules["des4_hf"] = sys.modules["des4_hf_scripts"] = None  # not importable in this process
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

model_dir, image_path = sys.argv[1], sys.argv[2]
model = AutoModelForSemanticSegmentation.from_pretrained(model_dir, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
with torch.no_grad():
    logits = model(**processor(Image.open(image_path), return_tensors="pt")).logits
segmenter = pipeline("image-segmentation", model=model_dir, trust_remote_code=True)
print("RESULT " + json.dumps({"module": type(model).__module__, "training": model.training,
                              "logits": logits.flatten().tolist(),
                              "labels": sorted(item["label"] for item in segmenter(image_path))}))
"""


@pytest.mark.slow  # starts a process
@pytest.mark.lowest
def test_a_saved_model_loads_with_trust_remote_code_where_des4_hf_is_not_installed(saved, tmp_path):
    import json
    import os
    import subprocess

    directory, model = saved
    image = Image.fromarray((np.random.default_rng(0).random((29, 41, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "image.png")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_CODE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, str(script), str(directory), str(tmp_path / "image.png")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr  # no question: trusted explicitly
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["module"].startswith("transformers_modules.") and not result["training"]
    with torch.no_grad():
        expected = model(**Des4ImageProcessor()(image, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(result["logits"]).view_as(expected), expected)
    predicted = {ID2LABEL[int(index)] for index in expected.argmax(1).unique()}
    assert set(result["labels"]) == predicted
    assert "not supported" not in done.stderr, "the pipeline complains about the model"


LOADERS = """
import sys
import des4_hf  # registers DeS4: no remote code needed
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, AutoVideoProcessor, pipeline

folder = sys.argv[1]
AutoModelForSemanticSegmentation.from_pretrained(folder)
AutoImageProcessor.from_pretrained(folder)
segmenter = pipeline("image-segmentation", model=folder)
try:
    AutoVideoProcessor.from_pretrained(folder)
except ValueError as error:  # DeS4 has no video processor: an error, never a question
    print("no video processor:", str(error).splitlines()[0])
print("LOADED", type(segmenter).__name__)
"""


@pytest.mark.slow  # starts a process
@pytest.mark.lowest
def test_loading_asks_no_question_with_des4_hf_installed(saved, tmp_path):
    """pipeline() and the Auto classes load a saved folder without the custom-code prompt (transformers 5.25's
    pipeline also tries an AutoVideoProcessor, which would ask), with stdin closed as in CI."""
    import os
    import subprocess

    script = tmp_path / "loaders.py"
    script.write_text(LOADERS)
    done = subprocess.run([sys.executable, str(script), str(saved[0])], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED ImageSegmentationPipeline" in done.stdout and "no video processor" in done.stdout
    assert "custom code" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


# -- conformance: the checks of transformers' ModelTesterMixin that apply to a segmenter, written for DeS4 --------
def test_batching_equivalence(eval_model):
    """Each image's logits in a batch equal its logits alone (eval mode: BatchNorm uses its running statistics)."""
    torch.manual_seed(1)
    pixel_values = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        batched = eval_model(pixel_values).logits
        alone = torch.cat([eval_model(pixel_values[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_determinism(eval_model):
    pixel_values = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        first, second = eval_model(pixel_values).logits, eval_model(pixel_values).logits
    assert torch.equal(first, second) and torch.isfinite(first).all()


def test_training_reaches_every_parameter():
    """One backward pass from the loss in ``forward`` gives a finite gradient to every parameter, and the
    prototypes (buffers, Eq. 12) receive none."""
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config()).train()
    labels = torch.randint(0, 3, (2, 32, 40))
    labels[0, :4] = 255
    model(torch.randn(2, 3, 32, 40), labels=labels).loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    assert not model.prototype_head.prototypes.requires_grad


def test_hidden_states_match_between_dict_and_tuple_outputs(eval_model):
    pixel_values = torch.randn(1, 3, 30, 42)
    with torch.no_grad():
        as_dict = eval_model(pixel_values, output_hidden_states=True)
        logits, (embeddings,) = eval_model(pixel_values, output_hidden_states=True, return_dict=False)
    assert embeddings.shape == (1, 16, math.ceil(30 / 4), math.ceil(42 / 4))
    assert torch.equal(as_dict.logits, logits) and torch.equal(as_dict.hidden_states[0], embeddings)


def test_checkpoint_with_non_finite_weights_is_refused_naming_them(saved, tmp_path):
    directory, _ = saved

    def diverged(tensors):  # what a run that blew up saves: it predicted class 0 everywhere, silently
        name = next(key for key in tensors if key.startswith("encoder.") and tensors[key].is_floating_point())
        tensors[name] = torch.full_like(tensors[name], float("nan"))

    broken = _rewrite_weights(directory, tmp_path / "broken", diverged)
    with pytest.raises(ValueError, match=rf"{broken}: 1 stored tensors contain NaN or inf \(e\.g\. \['encoder\."):
        Des4ForSemanticSegmentation.from_pretrained(broken)


@pytest.mark.parametrize("backbone", ["test_resnet", "efficientnet_lite0"])
def test_a_model_built_on_the_meta_device_initialises_every_tensor(backbone):
    config = tiny_config(backbone=backbone)
    with torch.device("meta"):  # as from_pretrained / accelerate's init_empty_weights / FSDP build it
        model = Des4ForSemanticSegmentation(config)
    model.to_empty(device="cpu")
    with torch.no_grad():  # what uninitialised memory may hold
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
    model.init_weights()
    untouched = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
                 if (tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
                 or (tensor.dtype == torch.int64 and bool((tensor == 7).any()))]
    assert not untouched, f"{len(untouched)} tensors left as the memory held them, e.g. {untouched[:3]}"
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    fan_out = convs[0].weight[0].numel() // convs[0].weight.shape[1] * convs[0].weight.shape[0]
    assert abs(float(convs[0].weight.std()) - math.sqrt(2 / fan_out)) < 0.5 * math.sqrt(2 / fan_out)  # He, as timm
    assert not bool(model.prototype_head.initialized.any())
    torch.testing.assert_close(model.prototype_head.prototypes.norm(dim=1), torch.ones(3))


def test_construction_keeps_timm_init_and_draws_the_same_random_numbers():
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config())
    after = torch.randn(3)
    torch.manual_seed(0)
    timm_body = timm.create_model("test_resnet", pretrained=False, features_only=True, output_stride=16)
    for (name, expected), actual in zip(timm_body.state_dict().items(), model.encoder.body.state_dict().values(),
                                        strict=True):
        assert torch.equal(expected, actual), f"{name}: post_init re-initialised timm's encoder"
    torch.manual_seed(0)
    Des4ForSemanticSegmentation(tiny_config())
    assert torch.equal(torch.randn(3), after)  # construction is deterministic, as the training recipes rely on


# transformers 5.25 renamed gradient_checkpointing_* to activation_checkpointing_* and keeps the old names until v6.
CHECKPOINTING_NAMES = [name for name in ("activation_checkpointing", "gradient_checkpointing")
                       if hasattr(Des4ForSemanticSegmentation, f"{name}_enable")]


@pytest.mark.parametrize("name", CHECKPOINTING_NAMES)
def test_gradient_checkpointing_through_timm_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(tiny_config()).train()
    pixel_values, labels = torch.randn(2, 3, 48, 40), torch.randint(0, 3, (2, 48, 40))

    saved = []  # tensors kept for backward outside a checkpointed stage

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)  # the decoder's dropout
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
            loss = model(pixel_values, labels=labels).loss
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert len(layers) >= 4 and all(module in set(model.encoder.body.children()) for module in layers)

    def checkpointing() -> bool:  # transformers' own test of is_*_checkpointing, under either name
        return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())

    plain, kept_plain = gradients(), len(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name is deprecated on transformers >= 5.25
        getattr(model, f"{name}_enable")()
        assert checkpointing() and all(module.gradient_checkpointing for module in layers)
        checkpointed = gradients()
        assert len(saved) < kept_plain / 2  # the stages keep their inputs only, and recompute the rest in backward
        assert plain.keys() == checkpointed.keys()
        for key in plain:
            torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-5)
        getattr(model, f"{name}_disable")()
    assert not checkpointing()
    assert set(Des4ForSemanticSegmentation(tiny_config()).state_dict()) == set(model.state_dict())  # names unchanged


@pytest.mark.slow  # dynamo traces 6 sizes: about 30 s
def test_compiled_with_dynamic_shapes_does_not_recompile_per_size(eval_model):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(eval_model, backend="eager", dynamic=True, fullgraph=True)  # fullgraph: no break
    with torch.no_grad():
        for size in ((50, 70), (45, 33), (64, 48), (37, 91), (96, 80), (29, 61)):  # (not square: duck sizing)
            pixel_values = torch.randn(1, 3, *size)
            torch.testing.assert_close(compiled(pixel_values).logits, eval_model(pixel_values).logits)
    # torch's own shape guards (whether the stride-4 crop is a no-op, i.e. a multiple of 16; a small / large conv
    # input) split sizes into a few graphs; a branch on the size in our code would add one per size
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3, "a recompile per size"


@pytest.mark.slow  # inductor compiles C++: about a minute on 2 cores
@pytest.mark.onednn_bf16  # inductor reads oneDNN's native-bf16 answer
def test_inductor_on_mixed_sizes(eval_model):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(eval_model, dynamic=True)
    with torch.no_grad():
        for size in ((50, 70), (45, 33)):  # it failed on a second size that is not a multiple of 16
            pixel_values = torch.randn(1, 3, *size)
            torch.testing.assert_close(compiled(pixel_values).logits, eval_model(pixel_values).logits,
                                       rtol=1e-4, atol=1e-4)


def test_device_map_auto_loads_whole_modules(saved):
    directory, model = saved
    loaded = Des4ForSemanticSegmentation.from_pretrained(directory, device_map="auto")
    assert set(Des4ForSemanticSegmentation._no_split_modules) == {"Des4Encoder", "Des4Decoder", "PrototypeHead"}
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)


@pytest.mark.slow  # exports once: about 20 s
def test_torch_export_with_dynamic_height_and_width_runs_any_size(eval_model):
    from torch.export import Dim, export

    class Logits(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).logits

    wrapped = Logits(eval_model)
    dynamic = {"pixel_values": {2: Dim.AUTO, 3: Dim.AUTO}}  # export finds the range; torch's solver cannot prove
    program = export(wrapped, (torch.randn(1, 3, 50, 70),), dynamic_shapes=dynamic)  # some guards of explicit Dims
    # (it held one size family only: whether the size was a multiple of 4 / 16 was baked in by the crops)
    with torch.no_grad():
        for size in ((50, 70), (64, 48), (45, 33), (200, 300)):
            pixel_values = torch.randn(1, 3, *size)
            torch.testing.assert_close(program.module()(pixel_values), wrapped(pixel_values), rtol=1e-4, atol=1e-4)
