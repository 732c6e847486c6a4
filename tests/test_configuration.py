"""Des4Config: defaults, OS8 ASPP rates, save/load, and errors that say what is allowed (issue 3, point 2)."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, PreTrainedConfig

import des4_hf  # noqa: F401  (registers the Auto classes)
from des4_hf import Des4Config


def test_defaults_follow_the_spec():
    config = Des4Config()
    assert isinstance(config, PreTrainedConfig)
    assert config.model_type == "des4"
    assert config.backbone == "resnet101"
    assert config.encoder_weights is None  # no download unless asked for
    assert config.output_stride == 16
    assert config.decoder_channels == 256
    assert config.aspp_rates == [6, 12, 18]
    assert config.low_level_channels == 48
    assert config.logit_scale == 10.0
    assert config.semantic_loss_ignore_index == 255 == config.ignore_index
    assert config.prototype_momentum == 0.99
    assert config.encoder_momentum == 0.99
    assert (config.mes_num_zones, config.mes_alpha) == (5, 0.1)
    assert config.num_labels == 2


def test_aspp_rates_double_at_output_stride_8():
    assert Des4Config(backbone="test_resnet", output_stride=8).aspp_rates == [12, 24, 36]
    assert Des4Config(backbone="test_resnet", output_stride=16).aspp_rates == [6, 12, 18]
    # Explicit rates are kept as given.
    assert Des4Config(backbone="test_resnet", output_stride=8, aspp_rates=(1, 2)).aspp_rates == [1, 2]


def test_labels_from_id2label():
    id2label = {0: "background", 1: "road", 2: "car"}
    config = Des4Config(backbone="test_resnet", id2label=id2label)
    assert config.num_labels == 3
    assert config.id2label == id2label
    assert Des4Config(backbone="test_resnet", num_labels=4).id2label == {i: f"LABEL_{i}" for i in range(4)}


def test_label2id_is_derived_from_id2label():
    config = Des4Config(backbone="test_resnet", id2label={0: "background", 1: "road", 2: "car"})
    assert config.label2id == {"background": 0, "road": 1, "car": 2}


def test_save_load_round_trip(tmp_path):
    config = Des4Config(
        backbone="test_resnet",
        output_stride=8,
        decoder_channels=32,
        id2label={0: "background", 1: "road", 2: "car"},
        logit_scale=12.5,
        prototype_momentum=0.95,
        mes_num_zones=3,
        mes_alpha=0.2,
        training={"method": "des4", "split": "1/8"},
    )
    config.save_pretrained(tmp_path)
    for loaded in (Des4Config.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, Des4Config)
        expected = {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}
        assert {key: value for key, value in loaded.to_dict().items() if key != "_name_or_path"} == expected
        assert loaded.id2label == {0: "background", 1: "road", 2: "car"}  # int keys survive JSON
        assert loaded.aspp_rates == [12, 24, 36]
        assert loaded.training == {"method": "des4", "split": "1/8"}


def test_unknown_backbone_suggests_names():
    with pytest.raises(ValueError, match=r"resnet10[1t]") as error:
        Des4Config(backbone="resnet1011")
    message = str(error.value)
    assert "'resnet1011' is not a timm model name" in message
    assert "Did you mean" in message and "timm.list_models()" in message


@pytest.mark.parametrize("stride", [4, 12, 32])
def test_output_stride_must_be_8_or_16(stride):
    with pytest.raises(ValueError, match=r"output_stride=.*use 16 \(default\) or 8"):
        Des4Config(backbone="test_resnet", output_stride=stride)


@pytest.mark.parametrize("kwargs", [{"num_labels": 1}, {"id2label": {0: "only"}}])
def test_at_least_two_classes(kwargs):  # binary = background + object, with the reason in the error
    with pytest.raises(ValueError, match=r"num_labels=1: DeS4 needs at least 2 classes.*prototype for the background"):
        Des4Config(backbone="test_resnet", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"aspp_rates": [6, 0]}, "positive atrous rates"),
        ({"logit_scale": 0.0}, r"must be > 0"),
        ({"prototype_momentum": 1.0}, r"must be in \[0, 1\)"),
        ({"encoder_momentum": -0.1}, r"must be in \[0, 1\)"),
        ({"mes_num_zones": 0}, r"must be >= 1"),
        ({"mes_alpha": 0.0}, r"must be > 0"),
    ],
)
def test_other_bad_values_say_what_is_allowed(kwargs, allowed):
    with pytest.raises(ValueError, match=allowed):
        Des4Config(backbone="test_resnet", **kwargs)
