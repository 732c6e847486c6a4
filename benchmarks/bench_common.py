"""What every benchmark section shares (benchmarks/benchmark.py): settings, the one timing helper
(round-robin medians, device-synchronised), synthetic inputs, and a training step exactly as the trainer takes it."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from des4_hf.configuration_des4 import Des4Config
from des4_hf.inference import autocast, resolve_precision
from des4_hf.method import sampling
from des4_hf.method.recipe import METHODS as RECIPE_METHODS
from des4_hf.method.step import TeacherStudent, apply_prototype_updates
from des4_hf.modeling_des4 import Des4ForSemanticSegmentation
from des4_hf.training.config import TrainConfig

METHODS = tuple(reversed(RECIPE_METHODS))  # supervised, mean-teacher, des4: the cheapest first in every table
GOALS = {"des4_over_mean_teacher": 1.25, "mes_share": 0.03, "smp_over_ours_images_per_s": 1.05}
SMP_SKIPPED = "skipped: pip install 'des4-hf[benchmark]'"
# The trainer's defaults (SGD, 10× lr on the decoders, τ1, τ2), read from TrainConfig so they cannot drift.
_DEFAULTS = TrainConfig()
MEMORY_MARKER = "DES4_MEMORY_RESULT "


@dataclass
class BenchmarkSettings:
    backbone: str = "efficientnet_lite0"
    crop_size: int = 224
    batch_size: int = 4
    unlabeled_batch_size: int | None = None  # None: batch_size (the trainer's default)
    decoder_channels: int = 128
    separable_convs: bool = True  # the CamVid demo's decoder (Des4Config.separable_convs)
    num_classes: int = 11
    iterations: int = 7
    warmup: int = 2
    scaling_iterations: int = 3
    bf16_iterations: int | None = None  # None: `iterations`, or 2 on a CPU without native bf16
    crop_sizes: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    device: str = "auto"
    train_precision: str = "auto"
    channels_last: bool = True  # training memory format, as TrainConfig.channels_last
    quick: bool = False
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    predict_size: list[int] = field(default_factory=lambda: [4000, 6000])  # (H, W) of the predict-memory image
    predict_crop: int = 512


# ----------------------------------------------------------------------------------------------- helpers


def cpu_has_native_bf16() -> bool:
    """True when oneDNN reports native bf16 (AVX512-BF16 / AMX); reported, never used to choose a precision."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round16(value: float) -> int:
    return max(32, int(round(value / 16)) * 16)


def _summary(seconds: Sequence[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms),
            "times_ms": [round(v, 3) for v in ms]}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf


def interleaved_timings(
    functions: dict[str, Callable[[], Any]], device: torch.device, warmup: dict[str, int] | int,
    iterations: dict[str, int] | int,
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Warm each function up, then time them round-robin (one call of each in turn).

    Returns per name the wall times (s, device synchronised) and whatever each timed call returned.
    """
    names = list(functions)
    warm = {n: warmup if isinstance(warmup, int) else warmup.get(n, 0) for n in names}
    runs = {n: iterations if isinstance(iterations, int) else iterations[n] for n in names}
    for name in names:
        for _ in range(warm[name]):
            functions[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    extras: dict[str, list[Any]] = {n: [] for n in names}
    for index in range(max(runs.values(), default=0)):
        for name in names:
            if index >= runs[name]:
                continue
            _sync(device)
            start = time.perf_counter()
            extra = functions[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            extras[name].append(extra)
    return times, extras


class _CallTimer:
    """Replaces ``module.name`` by a wrapper that records the wall time of every call (device synced)."""

    def __init__(self, module: Any, name: str, device: torch.device) -> None:
        self.module, self.name, self.device = module, name, device
        self.seconds: list[float] = []
        self.capture_next = False  # keep a copy of the next call's arguments
        self.first_call: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    @contextlib.contextmanager
    def patched(self) -> Iterator[_CallTimer]:
        original = getattr(self.module, self.name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.capture_next:
                self.capture_next = False
                self.first_call = (tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args),
                                   {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()})
            _sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds.append(time.perf_counter() - start)

        setattr(self.module, self.name, wrapper)
        try:
            yield self
        finally:
            setattr(self.module, self.name, original)

    def take(self) -> float:
        """Total seconds recorded since the last ``take``."""
        total = sum(self.seconds)
        self.seconds.clear()
        return total


# ----------------------------------------------------------------------------------------------- inputs


def class_frequencies(num_classes: int) -> Tensor:
    """A long-tailed class distribution (CamVid-like: a few large classes, a tail under 1 %)."""
    weights = torch.tensor([0.55 ** i for i in range(num_classes)], dtype=torch.float64)
    return weights / weights.sum()


def make_batches(batch_size: int, crop: int, num_classes: int, device: torch.device, channels_last: bool,
                 seed: int = 0, unlabeled_batch_size: int | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One labeled and one unlabeled batch as the data streams deliver them (same keys and dtypes)."""
    if unlabeled_batch_size is not None and unlabeled_batch_size != batch_size:
        labeled, _ = make_batches(batch_size, crop, num_classes, device, channels_last, seed)
        _, unlabeled = make_batches(unlabeled_batch_size, crop, num_classes, device, channels_last, seed + 1)
        return labeled, unlabeled
    generator = torch.Generator().manual_seed(seed)
    block = 8  # labels come in 8 × 8 blocks: regions, not salt-and-pepper
    cells = math.ceil(crop / block)
    coarse = torch.multinomial(class_frequencies(num_classes).float(), batch_size * cells * cells,
                               replacement=True, generator=generator).view(batch_size, 1, cells, cells)
    labels = torch.nn.functional.interpolate(coarse.float(), scale_factor=block, mode="nearest")[:, 0, :crop, :crop]
    labels = labels.long()
    labels[torch.rand(labels.shape, generator=generator) < 0.03] = 255  # a few ignored pixels
    box = torch.zeros(batch_size, crop, crop, dtype=torch.bool)
    box[:, crop // 8 : crop // 8 + crop // 2, crop // 4 : crop // 4 + crop // 2] = True
    padding = torch.zeros(batch_size, crop, crop, dtype=torch.bool)
    padding[:, -max(1, crop // 16) :] = True

    def images() -> Tensor:
        x = torch.randn(batch_size, 3, crop, crop, generator=generator).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    labeled = {"pixel_values": images(), "labels": labels.to(device)}
    unlabeled = {"pixel_values_weak": images(), "pixel_values_strong": images(),
                 "padding_mask": padding.to(device), "cutmix_mask": box.to(device)}
    return labeled, unlabeled


def model_config(settings: BenchmarkSettings) -> Des4Config:
    return Des4Config(backbone=settings.backbone, encoder_weights=None, decoder_channels=settings.decoder_channels,
                      separable_convs=settings.separable_convs, num_labels=settings.num_classes)


def train_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The trainer's precision rule (the package's one resolver) for ``device``."""
    return resolve_precision(precision, device).autocast_dtype


class StepRunner:
    """A :class:`TeacherStudent` + SGD for one method, stepping exactly as ``Trainer.train_step`` does."""

    def __init__(self, method: str, settings: BenchmarkSettings, device: torch.device) -> None:
        torch.manual_seed(settings.seed)
        student = Des4ForSemanticSegmentation(model_config(settings))
        if method not in METHODS:
            raise ValueError(f"method={method!r}: one of {METHODS}")
        # mean-teacher = Table 3's first row: D.T., S.H. and P.R. off (TrainConfig's method presets).
        self.model = TeacherStudent(student, TrainConfig(method=method))
        self.method, self.device, self.settings = method, device, settings
        self.model.to(device).train()
        if settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        backbone, decoders = self.model.trainable_parameter_groups()
        self.optimizer = torch.optim.SGD(
            [{"params": backbone, "lr": _DEFAULTS.lr},
             {"params": decoders, "lr": _DEFAULTS.lr * _DEFAULTS.head_lr_multiplier}],
            lr=_DEFAULTS.lr, momentum=_DEFAULTS.momentum, weight_decay=_DEFAULTS.weight_decay)
        self.dtype = train_autocast_dtype(settings.train_precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.class_ratio = sampling.class_ratio((class_frequencies(settings.num_classes) * 1e6).round().long())
        self.steps = 0
        self.prototype_seconds: list[float] = []

    def batches(self, batch_size: int, crop: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        labeled, unlabeled = make_batches(batch_size, crop, self.settings.num_classes, self.device,
                                          self.settings.channels_last, self.settings.seed,
                                          self.settings.unlabeled_batch_size)
        return labeled, (None if self.method == "supervised" else unlabeled)

    def step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> None:
        generator = torch.Generator(device="cpu").manual_seed(self.steps)
        with autocast(self.device, self.dtype):
            output = self.model(labeled, unlabeled, class_ratio=self.class_ratio, generator=generator)
        if not math.isfinite(float(output.loss.detach())):
            raise RuntimeError(f"{self.method}: non-finite loss in the benchmark step")
        if self.scaler is not None:
            self.scaler.scale(output.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            output.loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_teacher(self.steps, _DEFAULTS.encoder_momentum)
        _sync(self.device)
        start = time.perf_counter()
        apply_prototype_updates(self.model, output.teacher_statistics, output.student_statistics,
                                _DEFAULTS.prototype_momentum)
        _sync(self.device)
        self.prototype_seconds.append(time.perf_counter() - start)
        self.steps += 1
