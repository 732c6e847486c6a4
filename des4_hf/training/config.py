"""TrainConfig: one typed, flat dataclass for a DeS4 run, loaded from YAML and overridable on the command line.

Every value is checked before any data or weights are loaded, so a typo fails in a second, not after
the first evaluation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configuration_des4 import Des4Config
from ..data.augment import AugmentConfig
from ..inference import PRECISIONS
from ..method.losses import CLASS_WEIGHTINGS
from ..method.recipe import METHOD_PRESETS, METHODS, Recipe, resolve_recipe
from ..method.sampling import SAMPLERS

REPORT_TO = ("none", "tensorboard", "wandb")
PROTOTYPE_INITS = ("orthonormal", "first-mean")
EXPORTS = ("teacher", "student")
MAX_CROP_SIZE = 4096
#: every option with a fixed set of values (also the command line's choices)
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS, "sampler": SAMPLERS, "class_weighting": CLASS_WEIGHTINGS, "mixed_precision": PRECISIONS,
    "report_to": REPORT_TO, "prototype_init": PROTOTYPE_INITS, "export": EXPORTS}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (plain YAML keeps the last one, silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice; keep one",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _runtime_types(annotation: Any) -> tuple[type, ...]:
    """The types a field accepts: ``int`` also where ``float`` is, ``list`` where ``tuple`` is (YAML has none)."""
    union = typing.get_origin(annotation) in (types.UnionType, typing.Union)
    kinds = [typing.get_origin(kind) or kind for kind in (typing.get_args(annotation) if union else (annotation,))]
    return (*kinds, *((int,) if float in kinds else ()), *((list,) if tuple in kinds else ()))


#: Des4Config's defaults (the architecture, τ1, τ2, MES k and α) and AugmentConfig's: defined there, once
_MODEL = {name: parameter.default for name, parameter in inspect.signature(Des4Config.__init__).parameters.items()}
_AUGMENT = AugmentConfig()


@dataclass
class TrainConfig:
    """A DeS4 / mean-teacher / supervised training run (SPEC §2–5).

    Epochs count passes over the *unlabeled* set, the labeled set being cycled alongside (U2PL's
    convention [choice]); ``max_steps`` (optimizer steps), when given, overrides ``epochs``.
    """

    # -- what to train ------------------------------------------------------------------------------
    method: str = "des4"
    decoupled: bool = True  # D.T.: E^T is an EMA of E^S only; D^T trained by L_l^ub (Table 3)
    shared_head: bool = True  # S.H.: one prototype bank for teacher and student
    reweight: bool = True  # P.R.: Eq. 7 pixel weights in L_l^ub
    sampler: str = "mes"  # prototype feature sampler: mes | quantity | confidence (Table 4)
    # -- model --------------------------------------------------------------------------------------
    backbone: str = _MODEL["backbone"]
    encoder_weights: str | None = "imagenet"
    output_stride: int = _MODEL["output_stride"]
    decoder_channels: int = _MODEL["decoder_channels"]
    separable_convs: bool = _MODEL["separable_convs"]  # depthwise-separable decoder convs
    logit_scale: float = _MODEL["logit_scale"]
    # Fine-tuning: a saved DeS4 model (folder or Hub id) whose encoder and decoder start the run; its prototypes are
    # kept when its classes are the dataset's, else the new classes' start fresh (prototype_init)
    init_from: str | None = None
    # -- data ---------------------------------------------------------------------------------------
    dataset: str = "camvid"  # a kind understood by des4_hf.data.load_segmentation_dataset
    data_root: str | None = None
    split: str | None = None  # a named split (e.g. voc-blended-1323) or a split folder
    labeled_fraction: float = 0.125  # used when `split` is None: a seeded random split
    crop_size: int = _AUGMENT.crop_size
    scale_range: tuple[float, float] = _AUGMENT.scale_range
    # the rest of des4_hf.data.augment.AugmentConfig (its defaults: U2PL / UniMatch [choice]); cutmix_prob < 1
    # leaves some strong views unmixed (SPEC §2.9 option)
    hflip_prob: float = _AUGMENT.hflip_prob
    jitter_prob: float = _AUGMENT.jitter_prob
    brightness: float = _AUGMENT.brightness
    contrast: float = _AUGMENT.contrast
    saturation: float = _AUGMENT.saturation
    hue: float = _AUGMENT.hue
    grayscale_prob: float = _AUGMENT.grayscale_prob
    blur_prob: float = _AUGMENT.blur_prob
    blur_sigma: tuple[float, float] = _AUGMENT.blur_sigma
    cutmix_prob: float = _AUGMENT.cutmix_prob
    cutmix_area: tuple[float, float] = _AUGMENT.cutmix_area
    cutmix_ratio: tuple[float, float] = _AUGMENT.cutmix_ratio
    strong_views: int = _AUGMENT.strong_views  # 2: two strong views, L_u their mean (UniMatch)
    frame_scale: float = 1.0  # every frame (train and val) resized once by this factor before cropping; (0, 1]
    cache_frames: bool = False  # keep decoded (and resized) frames in memory: each file is decoded once
    # -- optimisation (per device; global batch = batch_size × processes × grad_accum_steps) ---------
    batch_size: int = 2
    unlabeled_batch_size: int | None = None  # defaults to batch_size
    grad_accum_steps: int = 1
    epochs: float = 80.0
    max_steps: int | None = None
    lr: float = 0.001
    head_lr_multiplier: float = 10.0  # decoder + head at 10× the backbone lr [choice, as U2PL]
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    lambda_supervised: float = 1.0  # λ1
    lambda_unsupervised: float = 1.5  # λ2
    encoder_momentum: float = _MODEL["encoder_momentum"]  # τ1 (Eq. 5), with warm-up min(1 − 1/(step+1), τ1)
    prototype_momentum: float = _MODEL["prototype_momentum"]  # τ2 (Eq. 12)
    mes_num_zones: int = _MODEL["mes_num_zones"]
    mes_alpha: float = _MODEL["mes_alpha"]
    # The early-phase [choice]s of SPEC §2.7 and §3.8; the recipes' values were chosen on the dev split
    # (benchmarks/camvid_dev_probes.sh, reports/camvid/README.md). None is in the paper.
    pseudo_label_quantile: float | None = None  # per batch, drop each class's least confident q of pseudo labels
    prototype_init: str = "orthonormal"  # random orthonormal bank blended by Eq. 12 | "first-mean" of a class
    pixel_balanced_losses: bool = True  # L_u × B_u/B_l: an unlabeled pixel weighs λ2 × a labeled one
    supervised_warmup: float = 0.0  # first fraction of the steps on labels only; the EMA teacher restarts after it
    ema_teacher_bank: bool = True  # SPEC §4: a mean teacher's own bank is an EMA of the student's (else MES)
    # The strongest later methods' ingredients (SPEC §2.9), off by default until the dev split says they help; a run
    # that uses one is named after it in reports ("DeS4 + FP"): it is no longer the paper's DeS4 alone.
    pseudo_label_threshold: float | None = None  # drop pseudo labels of confidence below it (beside the quantile)
    feature_perturbation: float = 0.0  # p of channel dropout on an extra student pass of the weak view (0 = off)
    export: str = "teacher"  # the network best/ and last/ hold and best is chosen by: "teacher" | "student"
    unsupervised_rampup: float = 0.0  # λ2 ramps up as exp(−5(1−t)²) over this fraction (Mean Teacher)
    # Per-class CE weights from the labeled pixel counts (des4_hf.method.losses.class_balancing_weights): on the labeled
    # losses, and on L_u unless unlabeled_class_weights is false (SPEC §2.9 option; the ceiling study's MT collapse)
    class_weighting: str = "none"
    unlabeled_class_weights: bool = True  # the class weights also weigh L_u (pseudo labels); False: labeled losses only
    # The unlabeled stream also draws the labeled images, their masks unused: how a semi-supervised row trains when every
    # image is labeled (the ceiling study's full-label rows); off, as in the paper, whose unlabeled set is the rest
    unlabeled_includes_labeled: bool = False
    # -- machinery ----------------------------------------------------------------------------------
    mixed_precision: str = "auto"
    channels_last: bool = True
    num_workers: int = 2
    seed: int = 0
    output_dir: str = "outputs/des4"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 1000
    eval_max_images: int | None = None
    log_every: int = 10
    report_to: str = "none"
    resume: str | None = None  # "latest" or a checkpoint folder
    overlays: int = 4  # example overlays written after the final evaluation
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded in the model config

    def __post_init__(self) -> None:
        if isinstance(self.encoder_weights, str) and self.encoder_weights.lower() in ("", "none", "null", "random"):
            self.encoder_weights = None  # "--encoder-weights none" on the command line
        self.scale_range = tuple(self.scale_range) if isinstance(self.scale_range, list) else self.scale_range
        if self.mixed_precision == "no":  # Accelerate's word for fp32, as earlier recipes wrote it
            self.mixed_precision = "fp32"
        self.validate()
        for name, value in METHOD_PRESETS[self.method].items():
            setattr(self, name, value)

    @property
    def recipe(self) -> Recipe:
        """The flags that apply to this run (:func:`des4_hf.method.recipe.resolve_recipe`)."""
        return resolve_recipe(self.method, self.decoupled, self.shared_head, self.reweight, self.sampler,
                              self.ema_teacher_bank)

    # -- derived ------------------------------------------------------------------------------------
    @property
    def effective_unlabeled_batch_size(self) -> int:
        return self.unlabeled_batch_size if self.unlabeled_batch_size is not None else self.batch_size

    def validate(self) -> None:
        errors: list[str] = []
        hints = typing.get_type_hints(type(self))  # types first: a YAML "false" or 2.7 must not pass as a bool or int
        for item in dataclasses.fields(self):
            value, kinds = getattr(self, item.name), _runtime_types(hints[item.name])
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                errors.append(f"{item.name}={value!r}: expected "
                              + " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds))
        errors += [f"{item.name}={getattr(self, item.name)!r}: must be a finite number" for item in dataclasses.fields(self)
                   if isinstance(getattr(self, item.name), float) and not math.isfinite(getattr(self, item.name))]
        if not all(math.isfinite(v) for v in self.scale_range if isinstance(v, (int, float))):
            errors.append(f"scale_range={self.scale_range!r}: must be finite numbers")
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

        def check(condition: bool, message: str) -> None:
            if not condition:
                errors.append(message)

        for name, choices in CHOICES.items():
            check(getattr(self, name) in choices, f"{name}={getattr(self, name)!r}: choose one of {', '.join(choices)}")
        check(32 <= self.crop_size <= MAX_CROP_SIZE, f"crop_size={self.crop_size}: use 32 to {MAX_CROP_SIZE} pixels (the "
              "papers use 513 and 769; larger crops need more memory than any machine has)")
        check(len(self.scale_range) == 2 and all(isinstance(v, (int, float)) for v in self.scale_range)
              and 0 < self.scale_range[0] <= self.scale_range[1],
              f"scale_range={self.scale_range}: two increasing positive factors, e.g. [0.5, 2.0]")
        check(0 < self.frame_scale <= 1, f"frame_scale={self.frame_scale}: a factor in (0, 1] (1 = the files' size)")
        check(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")
        check(self.effective_unlabeled_batch_size >= 1, "unlabeled_batch_size must be >= 1")
        check(self.grad_accum_steps >= 1, f"grad_accum_steps={self.grad_accum_steps}: must be >= 1")
        check(self.epochs > 0 or (self.max_steps or 0) > 0, "give epochs > 0 or max_steps > 0")
        check(self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps}: must be >= 1")
        check(self.lr > 0, f"lr={self.lr}: must be > 0")
        check(self.weight_decay >= 0, f"weight_decay={self.weight_decay}: must be >= 0")
        check(0 < self.labeled_fraction < 1, f"labeled_fraction={self.labeled_fraction}: must be in (0, 1)")
        check(self.pseudo_label_quantile is None or 0 <= self.pseudo_label_quantile < 1,
              f"pseudo_label_quantile={self.pseudo_label_quantile}: the share of each class's pseudo labels to drop, "
              "in [0, 1) (e.g. 0.2), or null")
        check(self.pseudo_label_threshold is None or 0 <= self.pseudo_label_threshold < 1,
              f"pseudo_label_threshold={self.pseudo_label_threshold}: a softmax confidence in [0, 1) (e.g. 0.95), or null")
        check(0 <= self.feature_perturbation < 1,
              f"feature_perturbation={self.feature_perturbation}: a dropout probability in [0, 1) (0.5 as UniMatch; 0 = off)")
        check(0 <= self.supervised_warmup < 1,
              f"supervised_warmup={self.supervised_warmup}: a fraction of the steps in [0, 1) (0 = off)")
        check(0 <= self.unsupervised_rampup <= 1,
              f"unsupervised_rampup={self.unsupervised_rampup}: a fraction of the steps in [0, 1] (0 = off)")
        check(min(self.checkpoint_every, self.eval_every, self.log_every, self.keep_checkpoints) >= 1,
              "checkpoint_every, eval_every, log_every and keep_checkpoints must be >= 1 (keep_checkpoints 0 would "
              "delete every checkpoint as soon as it is written)")
        check(self.num_workers >= 0, "num_workers must be >= 0")
        try:  # the architecture's and augmentation's own checks (backbone, stride, momenta, MES, boxes) up front
            self.model_config()
            self.augment_config()
        except (ValueError, TypeError) as error:
            errors.append(str(error))
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    def model_config(self, class_names: Sequence[str] = ("class_0", "class_1"), training: dict[str, Any] | None = None,
                     random_encoder: bool = False) -> Des4Config:
        """The :class:`Des4Config` this run builds, for ``class_names`` (``training``: the run's record;
        ``random_encoder``: no encoder weights loaded, e.g. for timing)."""
        return Des4Config(
            backbone=self.backbone, encoder_weights=None if random_encoder else self.encoder_weights,
            output_stride=self.output_stride,
            decoder_channels=self.decoder_channels, separable_convs=self.separable_convs, logit_scale=self.logit_scale,
            prototype_momentum=self.prototype_momentum, encoder_momentum=self.encoder_momentum,
            mes_num_zones=self.mes_num_zones, mes_alpha=self.mes_alpha, id2label=dict(enumerate(class_names)),
            label2id={name: index for index, name in enumerate(class_names)}, training=training)

    def augment_config(self) -> AugmentConfig:
        """The :class:`AugmentConfig` of this run's views (its fields are this config's of the same names)."""
        return AugmentConfig(**{item.name: tuple(value) if isinstance(value := getattr(self, item.name), list) else value
                                for item in dataclasses.fields(AugmentConfig)})

    # -- I/O ----------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (recipes live in configs/)")
        try:
            with path.open() as handle:
                values = yaml.load(handle, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as error:  # a typo in the recipe: where it is, not a traceback
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of option: value at the top level")
        values.update(overrides or {})
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known options: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["scale_range"] = list(self.scale_range)
        return values

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
