"""DeS4 network (SPEC §1): timm encoder E → DeepLabv3+ decoder D → cosine prototype head P.

No training logic lives here. The trainer builds its teacher and student from the separate
submodules ``encoder``, ``decoder`` and ``prototype_head``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Iterator
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.generic import can_return_tuple

from .configuration_des4 import Des4Config
from .hub_names import explain_hub_errors, resolve_pretrained_name

logger = logging.getLogger(__name__)
# The image-segmentation pipeline checks a fixed list of transformers' own classes and logs at error level that any
# other "is not supported"; DeS4 works in it, so that false line is dropped.
logging.getLogger("transformers.pipelines.base").addFilter(
    lambda record: "'Des4ForSemanticSegmentation' is not supported" not in record.getMessage())

# Set while `from_pretrained` builds the model: a saved checkpoint already holds the encoder
# weights, so building it must never download or read `encoder_weights`.
_LOADING_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar("des4_loading", default=False)


# Set by code that scores a model whose prototypes may be partly uninitialised and says so itself (evaluation).
_ALLOW_UNINITIALISED: contextvars.ContextVar[bool] = contextvars.ContextVar("des4_allow_uninit", default=False)


@contextlib.contextmanager
def _flag_set(flag: contextvars.ContextVar[bool]) -> Iterator[None]:
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def _loading_checkpoint() -> contextlib.AbstractContextManager[None]:
    return _flag_set(_LOADING_CHECKPOINT)


def allow_uninitialized_prototypes() -> contextlib.AbstractContextManager[None]:
    """Let a loaded model with uninitialised prototypes run in eval mode (the caller warns about those classes); also
    a decorator."""
    return _flag_set(_ALLOW_UNINITIALISED)


def prototype_logits(embeddings: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """Eq. 6: ``logit_c = s · cos(f, p_c)`` for (B, d, h, w) or (N, d) embeddings and (C, d) prototypes; the scale s
    lets a cross-entropy fit cosines in [-1, 1]. The paper's "argmin over a similarity" is read as argmax."""
    prototypes = F.normalize(prototypes.to(embeddings.dtype), dim=1)
    if embeddings.dim() == 2:
        return scale * F.normalize(embeddings, dim=1) @ prototypes.t()
    if embeddings.dim() != 4:
        raise ValueError(f"embeddings must be (B, d, h, w) or (N, d), got shape {tuple(embeddings.shape)}")
    return scale * torch.einsum("bdhw,cd->bchw", F.normalize(embeddings, dim=1), prototypes)


@functools.cache
def _checkpointable(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` that is also a transformers ``GradientCheckpointingLayer`` (checkpointed once enabled, in training)."""
    return type(cls.__name__, (GradientCheckpointingLayer, cls), {"__module__": cls.__module__})

class Des4Encoder(nn.Module):
    """A timm ``features_only`` encoder returning the stride-4 (low-level) and last (high-level) features."""

    def __init__(self, config: Des4Config) -> None:
        super().__init__()
        try:
            self.body = timm.create_model(config.backbone, pretrained=False, features_only=True,
                                          output_stride=config.output_stride)
        except Exception as error:  # timm raises several types; all mean "this backbone cannot do it"
            raise ValueError(f"backbone={config.backbone!r} cannot be built with features_only=True and output_stride="
                             f"{config.output_stride} ({error}). Pick a CNN-style timm backbone such as 'resnet101' "
                             "or 'efficientnet_lite0'.") from error
        reductions, channels = self.body.feature_info.reduction(), self.body.feature_info.channels()
        if 4 not in reductions:
            raise ValueError(f"backbone={config.backbone!r} has no stride-4 feature (its reductions are {reductions}); "
                             "the DeepLabv3+ decoder needs one. Pick a CNN-style backbone such as 'resnet101'.")
        self.output_stride = config.output_stride
        self.low_level_index = reductions.index(4)
        self.low_level_channels = channels[self.low_level_index]
        self.high_level_channels = channels[-1]
        self.stem_name = next(name for name, module in self.body.named_modules() if isinstance(module, nn.Conv2d))
        # timm initialised these tensors: `_init_weights` skips them. Built on the meta device (from_pretrained), they
        # hold nothing yet: unflagged, those the checkpoint lacks are materialised and initialised as timm does.
        for tensor in (*self.body.parameters(), *self.body.buffers()):
            if not tensor.is_meta:
                tensor._is_hf_initialized = True  # type: ignore[attr-defined]
        # Activation checkpointing, transformers' way: each stage becomes a GradientCheckpointingLayer (its class
        # extended in place: parameters and their names unchanged). Not the stem's first module (its input needs no
        # gradient) nor in-place ones (checkpointed alone, they overwrite the tensor the recompute needs).
        for index, module in enumerate(self.body.children()):
            if index > 0 and getattr(module, "inplace", False) is not True:
                module.__class__ = _checkpointable(type(module))

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """(low-level, high-level) features of the input zero-padded to a multiple of the output stride."""
        features = self.body(pad_to_multiple(pixel_values, self.output_stride))
        return features[self.low_level_index], features[-1]


def _conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, separable: bool = False,
          bias: bool = False) -> list[nn.Module]:
    """A k×k conv, or with ``separable`` (Xception-style DeepLabv3+) a depthwise k×k + pointwise 1×1 pair: at
    stride 4 the full 3×3 convs cost more than a light encoder (config ``separable_convs``)."""
    padding = 0 if kernel_size == 1 else dilation
    if separable and kernel_size > 1:
        return [nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation,
                          groups=in_channels, bias=False), nn.Conv2d(in_channels, out_channels, 1, bias=bias)]
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=bias)]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                  separable: bool = False) -> nn.Sequential:
    return nn.Sequential(*_conv(in_channels, out_channels, kernel_size, dilation, separable),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Module):
    """Image-level pooling branch. No BatchNorm: a 1×1 map with batch size 1 cannot be batch-normalised."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, one 3×3 atrous conv per rate, image pooling, 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, rates: list[int], dropout: float,
                 separable: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, out_channels, 1)] + [
            _conv_bn_relu(in_channels, out_channels, 3, dilation=rate, separable=separable) for rate in rates])
        self.pooling = ASPPPooling(in_channels, out_channels)
        self.project = _conv_bn_relu(out_channels * (len(rates) + 2), out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.dropout(self.project(torch.cat(outputs, dim=1)))


class Des4Decoder(nn.Module):
    """DeepLabv3+ decoder producing the pixel embedding ``f`` (d channels, stride 4)."""

    def __init__(self, config: Des4Config, low_level_in: int, high_level_in: int) -> None:
        super().__init__()
        width = config.decoder_channels
        separable = config.separable_convs
        self.aspp = ASPP(high_level_in, width, list(config.aspp_rates), config.decoder_dropout, separable)
        self.low_level_project = _conv_bn_relu(low_level_in, config.low_level_channels, 1)
        self.fuse = _conv_bn_relu(width + config.low_level_channels, width, 3, separable=separable)
        # Linear last conv (no BN/ReLU): a ReLU would confine embeddings to the positive orthant,
        # where every cosine is >= 0 and prototypes separate worse.
        convs = _conv(width, width, 3, separable=separable, bias=True)
        self.embed = nn.Sequential(*convs) if separable else convs[0]

    def forward(self, low_level: Tensor, high_level: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Embeddings at stride 4; with the unpadded input ``size`` (H, W), cropped to ⌈H/4⌉ × ⌈W/4⌉."""
        context = self.aspp(high_level)
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        embeddings = self.embed(self.fuse(torch.cat([context, self.low_level_project(low_level)], dim=1)))
        if size is None:
            return embeddings
        return crop(embeddings, ((size[0] + 3) // 4, (size[1] + 3) // 4))


def placeholder_prototypes(num_classes: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """The bank of a head whose prototypes were never set (``initialized`` all false): fixed unit vectors, the same
    in ``__init__`` and ``_init_weights`` (also on the meta device), whatever the global seed."""
    # The global generator advances as much as when these were drawn from it (on ``device``), so that a seeded run
    # draws the same data and weights as in earlier versions and reproduces their published figures.
    torch.randn(num_classes, dim, device=device)
    generator = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(num_classes, dim, generator=generator, device="cpu"), dim=1)

class PrototypeHead(nn.Module):
    """Non-learnable cosine prototype classifier P (SPEC §1); its updates (Eq. 12) are the method's
    (:mod:`des4_hf.method.prototypes`).

    ``prototypes`` (C × d, L2-normalised) and ``initialized`` (C,) are persistent buffers: they *are*
    the classifier, so every checkpoint carries them. They never receive gradients.
    """

    prototypes: Tensor
    initialized: Tensor

    def __init__(self, num_classes: int, dim: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("prototypes", placeholder_prototypes(num_classes, dim), persistent=True)
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool), persistent=True)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def forward(self, embeddings: Tensor) -> Tensor:
        return prototype_logits(embeddings, self.prototypes, self.scale)


def pad_to_multiple(pixel_values: Tensor, multiple: int) -> Tensor:
    """Zero-pad (bottom/right) to multiples of ``multiple``; zero is the dataset mean after normalisation. While
    compiling, always padded (by 0 where it fits): no branch on the size, so ``torch.compile(dynamic=True)`` traces one
    graph; in eager mode an input that fits is used as it is (no copy)."""
    height, width = pixel_values.shape[-2:]  # the amounts by floor division: inductor's symbolic shapes lack `%`
    pad_h = (height + multiple - 1) // multiple * multiple - height
    pad_w = (width + multiple - 1) // multiple * multiple - width
    if not torch.compiler.is_compiling() and pad_h == 0 and pad_w == 0:
        return pixel_values
    return F.pad(pixel_values, (0, pad_w, 0, pad_h))


def crop(tensor: Tensor, size: tuple[int, int]) -> Tensor:
    """The top-left ``size`` (h, w) of a (…, H, W) tensor: a view in eager mode; while compiling or exporting, a copy
    by a negative pad (the same values), since a view's strides make ``torch.export`` specialise on whether the crop
    is a no-op (a multiple of 4 or 16) and one program then runs only that family of sizes."""
    if torch.compiler.is_compiling():
        return F.pad(tensor, (0, size[1] - tensor.shape[-1], 0, size[0] - tensor.shape[-2]))
    return tensor[..., : size[0], : size[1]]


def segmentation_loss(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (still in the graph) when all are ignored; no host sync."""
    labels = labels.long()
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return per_pixel.sum() / (labels != ignore_index).sum().clamp_min(1)


class Des4PreTrainedModel(PreTrainedModel):
    config_class = Des4Config
    config: Des4Config
    base_model_prefix = "des4"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True  # the encoder's stages (GradientCheckpointingLayer, see Des4Encoder)
    _no_split_modules = ["Des4Encoder", "Des4Decoder", "PrototypeHead"]  # device_map="auto" keeps each whole

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every tensor, as timm initialises its CNNs (He-normal convs, BN at identity) and the prototypes as SPEC §1
        says; tensors already set (timm's at construction, a checkpoint's at load) carry ``_is_hf_initialized`` and
        are skipped by the ``transformers.initialization`` functions."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hf_init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            if module.weight is not None:
                hf_init.ones_(module.weight)
                hf_init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                hf_init.zeros_(module.running_mean)
                hf_init.ones_(module.running_var)
                hf_init.zeros_(module.num_batches_tracked)
        elif isinstance(module, PrototypeHead):
            hf_init.copy_(module.prototypes, placeholder_prototypes(*module.prototypes.shape, module.prototypes.device))
            hf_init.zeros_(module.initialized)


class Des4ForSemanticSegmentation(Des4PreTrainedModel):
    """DeS4 segmenter: ``logits = P(D(E(x)))`` at the input's resolution; with ``labels`` also the loss.

    ``Des4ForSemanticSegmentation(Des4Config(backbone="resnet101", num_labels=21))(pixel_values, labels=labels)``
    """

    # Armed by `from_pretrained` when no loaded prototype was ever set from data (a model loaded to fine-tune to new
    # classes, before training): eval-mode inference warns once until training sets them; the applications refuse it.
    # Some classes unset (never in a run's labels) only warn at load: the others' predictions are real.
    _prototypes_pending: bool = False

    def __init__(self, config: Des4Config) -> None:
        super().__init__(config)
        self.encoder = Des4Encoder(config)
        self.decoder = Des4Decoder(config, self.encoder.low_level_channels, self.encoder.high_level_channels)
        self.prototype_head = PrototypeHead(config.num_labels, config.decoder_channels, config.logit_scale)
        self.post_init()
        if config.encoder_weights and not _LOADING_CHECKPOINT.get():
            from .pretrained import load_encoder_weights, resolve_encoder_state_dict

            state_dict = resolve_encoder_state_dict(config.backbone, config.encoder_weights)
            if state_dict is not None:
                load_encoder_weights(self.encoder.body, state_dict)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's first convolution, which embeds the pixels: transformers' input embeddings of a vision model
        (a ViT's patch embedding)."""
        return self.encoder.body.get_submodule(self.encoder.stem_name)

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Put ``value`` in place of the encoder's first convolution (:meth:`get_input_embeddings`)."""
        self.encoder.body.set_submodule(self.encoder.stem_name, value)

    # -- pieces the trainer composes -------------------------------------------------------------
    def embed(self, pixel_values: Tensor) -> Tensor:
        """Pixel embeddings ``f = D(E(x))`` (B, d, ⌈H/4⌉, ⌈W/4⌉), un-normalised."""
        return self.decoder(*self.encoder(pixel_values), size=tuple(pixel_values.shape[-2:]))

    @staticmethod
    def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Bring stride-4 logits to ``size`` (H, W) the way :meth:`forward` does."""
        height, width = size
        padded = ((height + 3) // 4 * 4, (width + 3) // 4 * 4)
        return crop(F.interpolate(logits, size=padded, mode="bilinear", align_corners=False), size)

    @can_return_tuple
    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, output_hidden_states: bool | None = None,
                **kwargs: Any) -> SemanticSegmenterOutput:
        r"""
        pixel_values: (B, 3, H, W) normalised images; any H and W.
        labels: optional (B, H, W) class indices, ``config.semantic_loss_ignore_index`` (255) ignored.
        output_hidden_states: also return ``hidden_states = (embeddings,)``, the (B, d, ⌈H/4⌉, ⌈W/4⌉) pixel
            embeddings the prototypes classify.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (batch, 3, height, width), got {tuple(pixel_values.shape)}; "
                             "use Des4ImageProcessor to convert images.")
        if self._prototypes_pending and not self.training and not torch.compiler.is_compiling():
            self._warn_untrained()
        embeddings = self.embed(pixel_values)
        logits = self.upsample_logits(self.prototype_head(embeddings), tuple(pixel_values.shape[-2:]))

        loss = None
        if labels is not None:
            if labels.shape[-2:] != logits.shape[-2:]:
                raise ValueError(f"labels are {tuple(labels.shape[-2:])} but pixel_values are "
                                 f"{tuple(logits.shape[-2:])}: give one label map per image at the image's size.")
            loss = segmentation_loss(logits, labels, self.config.semantic_loss_ignore_index)

        hidden_states = (embeddings,) if output_hidden_states else None
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def uninitialized_classes(self) -> list[str]:
        """Names of the classes whose prototype was never set from data (they would score as random directions)."""
        flags = self.prototype_head.initialized.tolist()
        return [self.config.id2label.get(index, str(index)) for index, done in enumerate(flags) if not done]

    def _warn_untrained(self) -> None:
        """transformers' convention for a model not trained yet: it runs, and says so once (the applications refuse
        it through :meth:`_check_prototypes`)."""
        if bool(self.prototype_head.initialized.any()):
            self._prototypes_pending = False
            return
        if not getattr(self, "_untrained_warned", False) and not _ALLOW_UNINITIALISED.get():
            self._untrained_warned = True
            logger.warning("none of the %d class prototypes is initialised: this model was never trained on data of "
                           "its classes, so its predictions are arbitrary. You should probably TRAIN this model "
                           "(des4-train --init-from <this model> ...).", self.config.num_labels)

    def _check_prototypes(self) -> None:
        """Refuse a model none of whose prototypes was ever set (des4-predict, des4-evaluate and the web demo call it:
        their users want predictions, not the arbitrary ones of a model not trained yet)."""
        if bool(self.prototype_head.initialized.any()):
            self._prototypes_pending = False  # trained since it was loaded: no more checks
        elif not _ALLOW_UNINITIALISED.get():
            names = self.uninitialized_classes()
            raise ValueError(
                f"none of the {len(names)} class prototypes is initialised ({names[:8]}{'...' if len(names) > 8 else ''})"
                ": the model was never trained on data of these classes (e.g. loaded to fine-tune to new classes), so "
                "its predictions would be arbitrary. Train it first (des4-train --init-from <this model> ...); "
                "evaluate_segmentation scores it anyway, with a warning.")

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Load a saved DeS4 model; fails loudly when the checkpoint lacks its prototypes.

        Building the model never fetches encoder weights here: the checkpoint holds them.
        """
        # Short names ("des4-voc-aug") → <namespace>/<name>; local dirs and full repo ids pass through.
        pretrained_model_name_or_path = resolve_pretrained_name(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        try:
            with _loading_checkpoint(), explain_hub_errors(pretrained_model_name_or_path, kwargs.get("revision")):
                model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                      **kwargs)
        except Exception as error:
            if type(error).__name__ == "SafetensorError":  # safetensors' own error names neither file nor fix
                raise ValueError(f"{pretrained_model_name_or_path}: its weights file is truncated or corrupt "
                                 f"({error}). Save or download the model again.") from error
            if not isinstance(error, RuntimeError) or "mismatched" not in str(error):
                raise
            raise ValueError(f"{pretrained_model_name_or_path}: some tensors have a different shape from what "
                             "config.json describes (see the load report above; e.g. prototypes saved for another "
                             "num_labels). Fix config.json to match the weights, or re-export the model with "
                             "`save_pretrained`.") from error
        _check_loading_info(info, pretrained_model_name_or_path, model)
        info["uninitialized_prototypes"] = missing = model.uninitialized_classes()
        if missing:
            model._prototypes_pending = len(missing) == model.config.num_labels
            logger.warning("%s: the prototypes of %d classes are uninitialised (%s%s): they are set from data by "
                           "training%s.", pretrained_model_name_or_path, len(missing), missing[:8],
                           "..." if len(missing) > 8 else "", "; you should probably TRAIN this model (it runs, but predicts arbitrary "
                           "classes; des4-predict, des4-evaluate and the web demo refuse it)" if model._prototypes_pending
                           else "; until then the model cannot predict these classes")
        return (model, info) if want_info else model


def _check_loading_info(info: dict[str, Any], source: Any, model: Des4ForSemanticSegmentation) -> None:
    missing = sorted(info.get("missing_keys", []))
    if missing:  # transformers' convention: initialised afresh, with a warning; the applications refuse such a model
        if "prototype_head.prototypes" in missing:
            model.prototype_head.initialized.zero_()  # a bank that was never stored was never set
        logger.warning("%s: the checkpoint lacks %d tensors (e.g. %s), initialised afresh: train the model before "
                       "using its predictions, or re-export it with `model.save_pretrained(...)`.", source,
                       len(missing), missing[:5])
    broken = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
              if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())]
    if broken:  # e.g. saved from a diverged run: it would predict one class everywhere
        raise ValueError(f"{source}: {len(broken)} stored tensors contain NaN or inf (e.g. {broken[:3]}); the "
                         "checkpoint is corrupt or comes from a diverged run. Use an earlier checkpoint.")
