"""Des4Config: the architecture of a DeS4 segmenter and how it was trained (SPEC §1, §3, §5)."""

from __future__ import annotations

import difflib
from typing import Any

from transformers import PreTrainedConfig


def _check_timm_backbone(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    suggestions = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of {suggestions}?" if suggestions else ""
    raise ValueError(f"backbone={name!r} is not a timm model name.{hint} Any model from `timm.list_models()` that "
                     "supports `features_only=True` and has a stride-4 feature works (e.g. 'resnet101', 'resnet50', "
                     "'efficientnet_lite0', 'convnext_tiny').")


class Des4Config(PreTrainedConfig):
    r"""Configuration of [`Des4ForSemanticSegmentation`] (SPEC §1).

    Args:
        backbone: a timm model name, built with ``features_only=True``.
        encoder_weights: where the encoder starts when the model is *created* (never when a checkpoint is loaded):
            None, ``"imagenet"``, ``"imagenet-offline"`` or a local weights file (:mod:`des4_hf.pretrained`).
        output_stride, aspp_rates, low_level_channels, decoder_dropout: DeepLabv3+ (16; 6/12/18 at OS16; 48; 0.1).
        decoder_channels: the decoder width, also the embedding / prototype dimension d.
        separable_convs: depthwise-separable 3×3 decoder convs (Xception-style, as smp): off as in U2PL, on for
            light encoders, where the stride-4 full convs cost more than the encoder (the CamVid recipes).
        logit_scale: s in ``logit_c = s * cos(f, p_c)`` (Eq. 6, SPEC §1 [choice]: 10).
        prototype_momentum, encoder_momentum, mes_num_zones, mes_alpha: τ2, τ1, k and α as trained (Eq. 5, 10–12).
        training: the trainer's record of the run (method, split, recipe); not used by the model.
    """

    model_type = "des4"

    def __init__(self, backbone: str = "resnet101", encoder_weights: str | None = None, output_stride: int = 16,
                 decoder_channels: int = 256, aspp_rates: list[int] | tuple[int, ...] | None = None,
                 low_level_channels: int = 48, decoder_dropout: float = 0.1, separable_convs: bool = False,
                 logit_scale: float = 10.0, semantic_loss_ignore_index: int = 255, prototype_momentum: float = 0.99,
                 encoder_momentum: float = 0.99, mes_num_zones: int = 5, mes_alpha: float = 0.1,
                 training: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride={output_stride!r} is not supported: use 16 (default) or 8.")
        # DeepLabv3+'s rates: 6/12/18 at OS16, doubled at OS8 (a twice larger map, the same field of view).
        default_rates = [rate * 16 // output_stride for rate in (6, 12, 18)]
        aspp_rates = [int(rate) for rate in (default_rates if aspp_rates is None else aspp_rates)]
        if len(aspp_rates) == 0 or any(rate < 1 for rate in aspp_rates):
            raise ValueError(f"aspp_rates={aspp_rates!r}: give one or more positive atrous rates, e.g. [6, 12, 18].")
        if decoder_channels < 1 or low_level_channels < 1:
            raise ValueError("decoder_channels and low_level_channels must be positive integers.")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale={logit_scale!r} must be > 0 (the paper-faithful default is 10).")
        for name, value in (("prototype_momentum", prototype_momentum), ("encoder_momentum", encoder_momentum)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be in [0, 1) (the paper uses 0.99).")
        if mes_num_zones < 1:
            raise ValueError(f"mes_num_zones={mes_num_zones!r} must be >= 1 (the paper uses k = 5).")
        if mes_alpha <= 0:
            raise ValueError(f"mes_alpha={mes_alpha!r} must be > 0 (the paper uses 0.1).")
        if not isinstance(backbone, str) or not backbone:
            raise ValueError("backbone must be a timm model name such as 'resnet101'.")
        _check_timm_backbone(backbone)

        self.backbone = backbone
        self.encoder_weights = encoder_weights
        self.output_stride = int(output_stride)
        self.decoder_channels = int(decoder_channels)
        self.aspp_rates = aspp_rates
        self.low_level_channels = int(low_level_channels)
        self.decoder_dropout = float(decoder_dropout)
        self.separable_convs = bool(separable_convs)
        self.logit_scale = float(logit_scale)
        self.semantic_loss_ignore_index = int(semantic_loss_ignore_index)
        self.prototype_momentum = float(prototype_momentum)
        self.encoder_momentum = float(encoder_momentum)
        self.mes_num_zones = int(mes_num_zones)
        self.mes_alpha = float(mes_alpha)
        self.training = dict(training) if training else {}
        super().__init__(**kwargs)
        if self.id2label is not None and not self.label2id:
            self.label2id = {label: index for index, label in self.id2label.items()}
        names = list((self.id2label or {}).values())
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # label2id would map them to one index: a class unreachable by name
            raise ValueError(f"id2label names {repeated} more than once: give each class its own name.")
        if self.num_labels < 2:
            # Decided (issue 16): no sigmoid mode as SegFormer's num_labels=1. A pixel goes to its nearest class
            # prototype; one prototype has nothing to be nearer than, and MES needs the background's pixels too.
            raise ValueError(f"num_labels={self.num_labels}: DeS4 needs at least 2 classes. It labels each pixel with "
                             "its nearest class prototype, so a binary task needs a prototype for the background as "
                             "well: pass id2label={0: 'background', 1: '<object>'} (the argmax then gives the 0/1 mask "
                             "a sigmoid model gives at 0.5).")

    @property
    def ignore_index(self) -> int:
        return self.semantic_loss_ignore_index
