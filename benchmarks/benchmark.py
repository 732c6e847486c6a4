"""Speed and memory benchmark (issue 8, part 1): every figure is a ratio measured in one run.

``python benchmarks/benchmark.py --out reports/`` runs, on the CPU or (unchanged) on a GPU:

1. **training** — one optimizer step as the trainer does it (``TeacherStudent.forward`` → backward → SGD step →
   ``update_teacher`` → ``apply_prototype_updates``) for ``supervised``, ``mean-teacher`` (decoupled,
   shared head and re-weighting off) and ``des4`` on the same batch and crop; DeS4/MT (goal ≤ 1.25).
   The methods are timed round-robin (one step of each in turn) so that a change in machine load hits
   them alike; each figure is the median after warm-up.
2. **mes** — the share of a DeS4 step spent in ``sample_class_features`` (timed by wrapping the name
   :mod:`des4_hf.method.step` calls) plus ``apply_prototype_updates`` (goal ≤ 3 %), and the
   vectorised selection against a straightforward per-class implementation of the same rule, on the
   labels/entropies of a real step.
3. **inference** — images/s of the exported teacher (``Des4ForSemanticSegmentation``) in fp32 NCHW,
   fp32 channels_last and bf16 autocast (plus fp16 on CUDA); whether ``resolve_precision("auto")``
   picked the fastest; and segmentation_models_pytorch's DeepLabV3Plus with the same timm encoder
   (``tu-<name>``) at the auto precision (goal: ``smp images/s ÷ ours ≤ 1.05``). smp is the
   ``benchmark`` extra; without it that part says ``skipped``.
4. **memory** — peak memory of a training step per method, each method in a fresh subprocess:
   CPU peak RSS (the kernel's high-water mark, reset after a warm-up step) and, on CUDA,
   ``max_memory_allocated``.
5. **scaling** — DeS4 step time over 3 crop sizes and 3 batch sizes.

Inputs are synthetic (random images, long-tailed blocky labels, CutMix boxes), built once: data
loading and augmentation are not part of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from des4_hf.configuration_des4 import Des4Config
from des4_hf.inference import PROBE_CACHE, autocast, cpu_model, probe_precision, resolve_precision
from des4_hf.method import sampling
from des4_hf.method import step as step_module
from des4_hf.method.step import TeacherStudent, apply_prototype_updates
from des4_hf.modeling_des4 import Des4ForSemanticSegmentation
from des4_hf.training.config import TrainConfig

METHODS = ("supervised", "mean-teacher", "des4")
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


# ----------------------------------------------------------------------------------------------- sections


def bench_training(settings: BenchmarkSettings, device: torch.device) -> tuple[dict[str, Any], dict[str, Any],
                                                                                 StepRunner, Any]:
    """Sections ``training`` and ``mes`` (share of the step); returns the DeS4 runner and a captured MES call."""
    runners = {method: StepRunner(method, settings, device) for method in METHODS}
    inputs = {method: runner.batches(settings.batch_size, settings.crop_size) for method, runner in runners.items()}
    mes_timer = _CallTimer(step_module, "sample_class_features", device)
    statistics_timer = _CallTimer(TeacherStudent, "_sample", device)

    def timed_step(method: str) -> Callable[[], Any]:
        runner = runners[method]

        def run() -> Any:
            mes_timer.take()
            statistics_timer.take()
            if method == "des4" and mes_timer.first_call is None:  # the teacher's MES inputs of a real step
                mes_timer.capture_next = True
            runner.step(*inputs[method])
            return {"mes_s": mes_timer.take(), "statistics_s": statistics_timer.take(),
                    "prototype_s": runner.prototype_seconds[-1]}

        return run

    with mes_timer.patched(), statistics_timer.patched():
        times, extras = interleaved_timings({m: timed_step(m) for m in METHODS}, device, settings.warmup,
                                            settings.iterations)
    per_method = {m: _summary(times[m]) for m in METHODS}
    des4_over_mt = _ratio(per_method["des4"]["median_ms"], per_method["mean-teacher"]["median_ms"])
    training = {
        "batch_size": settings.batch_size, "crop_size": settings.crop_size,
        "unlabeled_batch_size": settings.unlabeled_batch_size or settings.batch_size,
        "precision": str(runners["des4"].dtype or "fp32").replace("torch.", ""),
        "channels_last": settings.channels_last,
        "methods": per_method,
        "des4_over_mean_teacher": des4_over_mt,
        "des4_over_supervised": _ratio(per_method["des4"]["median_ms"], per_method["supervised"]["median_ms"]),
        "mean_teacher_over_supervised": _ratio(per_method["mean-teacher"]["median_ms"],
                                               per_method["supervised"]["median_ms"]),
        "goal": GOALS["des4_over_mean_teacher"], "goal_met": des4_over_mt <= GOALS["des4_over_mean_teacher"],
    }
    # MES share per DeS4 step, then the median over steps.
    shares, mes_ms, proto_ms, stats_ms = [], [], [], []
    for total, extra in zip(times["des4"], extras["des4"], strict=True):
        shares.append((extra["mes_s"] + extra["prototype_s"]) / total)
        mes_ms.append(extra["mes_s"] * 1e3)
        proto_ms.append(extra["prototype_s"] * 1e3)
        stats_ms.append(extra["statistics_s"] * 1e3)
    share = statistics.median(shares)
    mes = {
        "share_of_des4_step": share,
        "sample_class_features_ms": statistics.median(mes_ms),
        "apply_prototype_updates_ms": statistics.median(proto_ms),
        "sample_statistics_ms": statistics.median(stats_ms),
        "sample_statistics_share": statistics.median(
            [e["statistics_s"] / t for t, e in zip(times["des4"], extras["des4"], strict=True)]),
        "des4_step_ms": per_method["des4"]["median_ms"],
        "note": "share = (sample_class_features + apply_prototype_updates) / DeS4 step; TeacherStudent._sample also "
                "counts the L2 normalisation, entropy and label resize around the sampler",
        "goal": GOALS["mes_share"], "goal_met": share <= GOALS["mes_share"],
    }
    for method in ("supervised", "mean-teacher"):
        del runners[method]
    return training, mes, runners["des4"], mes_timer.first_call


def _load_reference_select() -> tuple[Callable[..., Any] | None, str]:
    path = Path(__file__).resolve().parents[1] / "tests" / "test_sampling.py"
    if not path.is_file():
        return None, f"{path} not found"
    try:
        spec = importlib.util.spec_from_file_location("_des4_test_sampling_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.reference_select, "tests/test_sampling.py::reference_select (plain Python lists, per class/zone)"
    except Exception as error:  # e.g. pytest missing in a user install
        return None, f"could not import {path}: {error}"


def bench_mes_reference(captured: Any, settings: BenchmarkSettings, device: torch.device) -> dict[str, Any]:
    """Vectorised MES vs straightforward per-class implementations, on the inputs of one real DeS4 step."""
    if captured is None:
        return {"skipped": "no sample_class_features call was captured"}
    args, kwargs = captured
    embeddings, labels, entropy = args[:3]
    ratio = kwargs["class_ratio"]
    num_zones, alpha, ignore = kwargs["num_zones"], kwargs["alpha"], kwargs["ignore_index"]
    repeats = max(3, settings.iterations)
    reference, reference_name = _load_reference_select()
    labels_cpu, entropy_cpu, ratio_cpu = labels.cpu(), entropy.cpu(), ratio.cpu()
    functions: dict[str, Callable[[], Any]] = {
        "select_pixels": lambda: sampling.select_pixels(labels, entropy, ratio, "mes", num_zones, alpha, ignore,
                                                        torch.Generator(device="cpu").manual_seed(0)),
        "sample_class_features": lambda: sampling.sample_class_features(
            embeddings, labels, entropy, ratio, "mes", num_zones, alpha, ignore,
            torch.Generator(device="cpu").manual_seed(0)),
    }
    if reference is not None:
        functions["reference_select"] = lambda: reference(labels_cpu, entropy_cpu, ratio_cpu, "mes", num_zones,
                                                          alpha, ignore)
    times, _ = interleaved_timings(functions, device, 1, repeats)
    result: dict[str, Any] = {name: _summary(values) for name, values in times.items()}
    vectorised = result["select_pixels"]["median_ms"]
    chosen = int(functions["select_pixels"]().numel())
    result.update({
        "pixels": int(labels.numel()), "chosen": chosen,
        "reference": reference_name,
    })
    if reference is not None:
        result["reference_over_vectorised"] = _ratio(result["reference_select"]["median_ms"], vectorised)
        result["chosen_reference"] = len(reference(labels_cpu, entropy_cpu, ratio_cpu, "mes", num_zones, alpha,
                                                   ignore)[0])
    return result


def _precision_variants(device: torch.device) -> dict[str, tuple[torch.dtype | None, bool]]:
    variants: dict[str, tuple[torch.dtype | None, bool]] = {
        "fp32-nchw": (None, False), "fp32-channels_last": (None, True), "bf16-nchw": (torch.bfloat16, False),
        "bf16-channels_last": (torch.bfloat16, True)}
    if device.type == "cuda":
        variants["fp16-channels_last"] = (torch.float16, True)
    return variants


def fresh_precision_probe(model: torch.nn.Module, sample: Tensor, device: torch.device, training: bool,
                          channels_last: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """``resolve_precision("auto")`` as the trainer / predict call it, timed now (an empty cache), with its timings;
    on CUDA the fixed rule (no probe)."""
    if device.type != "cpu":
        return resolve_precision("auto", device), {}
    with tempfile.TemporaryDirectory() as fresh:
        choice = probe_precision(model, sample, training=training, channels_last=channels_last, cache_dir=fresh)
        (record,) = json.loads((Path(fresh) / PROBE_CACHE).read_text()).values()
    return choice, record["seconds"]


def _inference_fn(model: torch.nn.Module, x: Tensor, device: torch.device, dtype: torch.dtype | None,
                  channels_last: bool, smp_style: bool) -> Callable[[], Any]:
    model = copy.deepcopy(model).to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            model(x) if smp_style else model(pixel_values=x).logits

    return run


def build_smp(settings: BenchmarkSettings, config: Des4Config, matched: bool) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(settings.seed)
    kwargs: dict[str, Any] = {"encoder_output_stride": config.output_stride}
    if matched:  # our decoder's width, rates and ASPP convolution type
        kwargs.update(decoder_channels=config.decoder_channels, decoder_atrous_rates=tuple(config.aspp_rates),
                      decoder_aspp_separable=config.separable_convs)
    return smp.DeepLabV3Plus(encoder_name=f"tu-{settings.backbone}", encoder_weights=None,
                             classes=settings.num_classes, **kwargs)


def bench_inference(settings: BenchmarkSettings, device: torch.device, teacher: Des4ForSemanticSegmentation
                    ) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(settings.seed + 1)
    batch, crop = settings.batch_size, settings.crop_size
    x = torch.randn(batch, 3, crop, crop, generator=generator).to(device)
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    bf16_iterations = settings.bf16_iterations or (settings.iterations if native_bf16 else min(2, settings.iterations))
    variants = _precision_variants(device)
    functions = {f"ours/{name}": _inference_fn(teacher, x, device, dtype, cl, False)
                 for name, (dtype, cl) in variants.items()}
    choice, probe_seconds = fresh_precision_probe(teacher, x[:1], device, training=False)
    auto_variant = f"{choice.name}-{'channels_last' if choice.channels_last else 'nchw'}"
    auto_dtype, auto_cl = variants[auto_variant]
    smp_status = "ok"
    smp_versions: dict[str, str] = {}
    try:
        import segmentation_models_pytorch as smp

        smp_versions["segmentation_models_pytorch"] = smp.__version__
        if crop % 16:
            smp_status = f"skipped: smp needs a crop divisible by 16 (got {crop})"
        else:
            config = teacher.config
            for label, matched in (("smp-matched", True), ("smp-default", False)):
                functions[f"{label}/{auto_variant}"] = _inference_fn(
                    build_smp(settings, config, matched), x, device, auto_dtype, auto_cl, True)
    except ImportError:
        smp_status = SMP_SKIPPED
    iterations = {name: (bf16_iterations if "bf16" in name and not native_bf16 else settings.iterations)
                  for name in functions}
    warmup = {name: (min(1, settings.warmup) if "bf16" in name and not native_bf16 else settings.warmup)
              for name in functions}
    times, _ = interleaved_timings(functions, device, warmup, iterations)
    rows = {}
    for name, values in times.items():
        summary = _summary(values)
        summary["images_per_s"] = batch / (summary["median_ms"] / 1e3)
        rows[name] = summary
    ours = {name.split("/", 1)[1]: rows[name]["images_per_s"] for name in rows if name.startswith("ours/")}
    fastest = max(ours, key=ours.__getitem__)
    result: dict[str, Any] = {
        "batch_size": batch, "crop_size": crop, "model": "TeacherStudent.export('teacher') "
        "(Des4ForSemanticSegmentation, logits at input size)",
        "timings": rows,
        "precision": {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_has_native_bf16": cpu_has_native_bf16(),
            "images_per_s": ours,
            "channels_last_over_nchw_fp32": _ratio(ours["fp32-channels_last"], ours["fp32-nchw"]),
            "bf16_over_fp32_channels_last": _ratio(ours["bf16-channels_last"], ours["fp32-channels_last"]),
            "auto_choice": auto_variant, "auto_probe_seconds": probe_seconds, "fastest": fastest,
            "auto_is_fastest": auto_variant == fastest,
            "auto_over_fastest": _ratio(ours[auto_variant], ours[fastest]),
            "bf16_iterations": bf16_iterations if not native_bf16 else settings.iterations,
        },
        "smp": {"status": smp_status, **smp_versions},
    }
    if smp_status == "ok":
        matched = rows[f"smp-matched/{auto_variant}"]["images_per_s"]
        default = rows[f"smp-default/{auto_variant}"]["images_per_s"]
        ratio = _ratio(matched, ours[auto_variant])
        result["smp"].update({
            "precision": auto_variant,
            "encoder": f"tu-{settings.backbone}",
            "matched": "decoder_channels, atrous rates and output stride as ours, decoder_aspp_separable="
                       f"{config.separable_convs} as our separable_convs (smp always uses a separable conv in "
                       "its fusion block)",
            "default": "smp defaults: separable ASPP, rates (12, 24, 36), 256 channels",
            "smp_matched_over_ours": ratio,
            "smp_default_over_ours": _ratio(default, ours[auto_variant]),
            "goal": GOALS["smp_over_ours_images_per_s"],
            "goal_met": ratio <= GOALS["smp_over_ours_images_per_s"],
            "definition": "images/s of smp ÷ images/s of ours at the same input and precision; goal ≤ 1.05",
        })
    return result


def bench_scaling(settings: BenchmarkSettings, device: torch.device, runner: StepRunner) -> dict[str, Any]:
    """DeS4 step time over crop sizes (at --batch-size) and batch sizes (at --crop-size), timed round-robin."""
    points = [(settings.batch_size, crop) for crop in settings.crop_sizes]
    points += [(batch, settings.crop_size) for batch in settings.batch_sizes if (batch, settings.crop_size) not in points]
    inputs = {point: runner.batches(*point) for point in points}
    functions = {f"b{b}_c{c}": (lambda p=(b, c): runner.step(*inputs[p])) for b, c in points}
    times, _ = interleaved_timings(functions, device, min(1, settings.warmup), settings.scaling_iterations)
    median = {point: statistics.median(times[f"b{point[0]}_c{point[1]}"]) * 1e3 for point in points}

    def series(keys: list[tuple[int, int]], size: Callable[[tuple[int, int]], float]) -> list[dict[str, Any]]:
        base = keys[0]
        return [{"batch_size": b, "crop_size": c, "median_ms": median[(b, c)],
                 "time_ratio": _ratio(median[(b, c)], median[base]),
                 "work_ratio": size((b, c)) / size(base),
                 "time_per_work_ratio": _ratio(median[(b, c)], median[base]) / (size((b, c)) / size(base))}
                for b, c in keys]

    crops = [(settings.batch_size, c) for c in settings.crop_sizes]
    batches = [(b, settings.crop_size) for b in settings.batch_sizes]
    return {"method": "des4", "iterations": settings.scaling_iterations,
            "crop": series(crops, lambda p: p[1] ** 2), "batch": series(batches, lambda p: p[0]),
            "note": "time_ratio = step time / the smallest size's; work_ratio = pixels (crop) or images (batch) "
                    "over the smallest; time_per_work_ratio < 1 means better than linear"}


# ----------------------------------------------------------------------------------------------- memory


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _peak_since_reset(reset: bool) -> tuple[float, str]:
    peak_kb = _proc_status_kb("VmHWM") if reset else None
    if peak_kb is None:  # no /proc: the peak since the process started
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss (since process start)"
    return peak_kb / 1024, "VmHWM after clear_refs"


PREDICT_MODES = {"whole": "the whole image at once",
                 "sliding-logits": "sliding window into a full-image logits buffer (before issue 17)",
                 "sliding-bands": "sliding window, rows decided band by band (des4-predict --sliding-window)"}


def predict_memory_child(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: predict one large synthetic image as des4-predict does, in one of
    :data:`PREDICT_MODES`, after a warm-up on a small image; the peak RSS of that prediction alone."""
    import numpy as np
    from PIL import Image

    from des4_hf.evaluation import default_stride
    from des4_hf.image_processing_des4 import Des4ImageProcessor
    from des4_hf.inference import predict_logits, segment_images

    settings = BenchmarkSettings(**payload["settings"])
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = Des4ForSemanticSegmentation(model_config(settings)).eval().to(memory_format=torch.channels_last)
    processor, cpu, mode = Des4ImageProcessor(), torch.device("cpu"), payload["mode"]
    window = (payload["crop"], default_stride(payload["crop"]))
    height, width = payload["size"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    small = image.resize((width // 8, height // 8))

    def predict(picture: Image.Image) -> None:
        if mode == "sliding-logits":
            pixel_values = processor(images=picture)["pixel_values"].contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                logits = predict_logits(model, pixel_values, sliding_window=window)
            processor.post_process_semantic_segmentation({"logits": logits})[0].to(torch.uint8).numpy()
        else:
            segment_images(model, processor, [picture], cpu, None, True, None if mode == "whole" else window)

    predict(small)
    reset = _reset_peak_rss()
    rss_before = (_proc_status_kb("VmRSS") or 0) / 1024
    started = time.perf_counter()
    predict(image)
    seconds = time.perf_counter() - started
    peak, source = _peak_since_reset(reset)
    return {"mode": mode, "peak_rss_mb": peak, "rss_before_mb": rss_before, "delta_mb": peak - rss_before,
            "seconds": seconds, "rss_source": source}


def bench_predict_memory(settings: BenchmarkSettings, size: tuple[int, int], crop: int = 512) -> dict[str, Any]:
    """Peak memory of predicting one ``size`` image, per :data:`PREDICT_MODES`, one fresh process each, in turn."""
    payloads = {mode: {"kind": "predict", "mode": mode, "size": list(size), "crop": crop, "settings": asdict(settings)}
                for mode in PREDICT_MODES}
    # In turn: a full-size child holds gigabytes. --quick's tiny images fit side by side (each child measures itself).
    modes = _run_memory_children(payloads, at_once=len(payloads) if settings.quick else 1)
    result: dict[str, Any] = {"size": list(size), "crop": crop, "modes": modes, "descriptions": PREDICT_MODES}
    if all("delta_mb" in modes[m] for m in ("whole", "sliding-bands")):
        result["sliding_bands_over_whole_delta"] = _ratio(modes["sliding-bands"]["delta_mb"], modes["whole"]["delta_mb"])
    return result


def render_predict_memory(result: dict[str, Any]) -> list[str]:
    height, width = result["size"]
    lines = ["## Peak memory of predicting one large image", "",
             f"One {width}×{height} image (synthetic), fp32 channels_last, crop {result['crop']} with des4-predict's "
             "default stride; one fresh process per row, after a warm-up on a small image. Delta = peak RSS during the "
             "prediction − RSS before it.", "",
             "| mode | peak RSS MB | delta MB | seconds |", "|---|---|---|---|"]
    for mode, row in result["modes"].items():
        lines.append(f"| {mode}: {result['descriptions'][mode]} | error: {row['error']} | | |" if "error" in row else
                     f"| {mode}: {result['descriptions'][mode]} | {row['peak_rss_mb']:.0f} | {row['delta_mb']:.0f} | "
                     f"{row['seconds']:.1f} |")
    if "sliding_bands_over_whole_delta" in result:
        lines += ["", f"sliding-bands / whole (delta): {result['sliding_bands_over_whole_delta']:.3f}"]
    return lines


def memory_child(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: build one method, one warm-up step, then the peak of one more step."""
    if payload.get("kind") == "predict":
        return predict_memory_child(payload)
    settings = BenchmarkSettings(**payload["settings"])
    device = torch.device(payload["device"])
    if settings.threads:
        torch.set_num_threads(settings.threads)
    runner = StepRunner(payload["method"], settings, device)
    inputs = runner.batches(settings.batch_size, settings.crop_size)
    runner.step(*inputs)  # allocates gradients' and SGD momentum buffers, caches
    result: dict[str, Any] = {"method": payload["method"]}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    reset = _reset_peak_rss()
    rss_before = _proc_status_kb("VmRSS")
    runner.step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result.update(cuda_peak_allocated_mb=peak / 2**20, cuda_step_delta_mb=(peak - base) / 2**20)
    peak, source = _peak_since_reset(reset)
    result.update(peak_rss_mb=peak, rss_before_step_mb=(rss_before or 0) / 1024,
                  rss_step_delta_mb=peak - (rss_before or 0) / 1024, rss_source=source)
    return result


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    # A fixed glibc mmap threshold: large tensors go back to the OS when freed, so the RSS before the step is
    # live memory, not heap that an earlier step left behind (only the memory children run with it).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    return env


def _run_memory_children(payloads: dict[str, dict[str, Any]], at_once: int) -> dict[str, Any]:
    """One fresh subprocess per payload, ``at_once`` at a time; each returns its own measurement (or an error)."""
    env, pending, results = _child_env(), list(payloads), {}
    while pending:
        batch, pending = pending[:at_once], pending[at_once:]
        processes = {name: subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(payloads[name])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for name in batch}
        for name, process in processes.items():
            stdout, stderr = process.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith(MEMORY_MARKER)]
            if process.returncode != 0 or not lines:
                results[name] = {"error": (stderr.strip().splitlines() or ["no output"])[-1]}
            else:
                results[name] = json.loads(lines[-1][len(MEMORY_MARKER):])
    return results


def bench_memory(settings: BenchmarkSettings, device: torch.device) -> dict[str, Any]:
    """One fresh subprocess per method. Children run side by side only when their threads fit the free cores
    (oversubscribed intra-op threads stall for seconds); each one measures only itself."""
    env = _child_env()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    at_once = max(1, cores // (settings.threads or torch.get_num_threads()))
    at_once = len(METHODS) if settings.quick else at_once  # --quick: seconds of imports each, nothing to time
    payloads = {method: {"method": method, "device": str(device), "settings": asdict(settings)} for method in METHODS}
    per_method = _run_memory_children(payloads, at_once)
    key = "cuda_peak_allocated_mb" if device.type == "cuda" else "peak_rss_mb"
    result: dict[str, Any] = {"methods": per_method, "compared": key, "batch_size": settings.batch_size,
                              "crop_size": settings.crop_size, "children_at_once": at_once,
                              "malloc_mmap_threshold": env["MALLOC_MMAP_THRESHOLD_"]}
    if all(key in per_method[m] for m in ("des4", "mean-teacher")):
        result["des4_over_mean_teacher"] = _ratio(per_method["des4"][key], per_method["mean-teacher"][key])
    if device.type != "cuda" and all("rss_step_delta_mb" in per_method[m] for m in ("des4", "mean-teacher")):
        result["des4_over_mean_teacher_step_delta"] = _ratio(per_method["des4"]["rss_step_delta_mb"],
                                                             per_method["mean-teacher"]["rss_step_delta_mb"])
    return result


# ----------------------------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    import timm
    import transformers

    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_has_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "timm": timm.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_info(device), "settings": asdict(settings), "section_wall_s": {}}
    clock = [time.perf_counter()]

    def section_done(name: str) -> None:
        now = time.perf_counter()
        report["section_wall_s"][name] = round(now - clock[0], 2)
        clock[0] = now

    if settings.train_precision == "auto" and device.type == "cpu":  # as the trainer does: fwd+bwd timed, now
        torch.manual_seed(settings.seed)
        sample = torch.randn(2, 3, settings.crop_size, settings.crop_size)  # what Trainer._probe_inputs times
        choice, seconds = fresh_precision_probe(Des4ForSemanticSegmentation(model_config(settings)), sample, device,
                                                training=True, channels_last=settings.channels_last)
        report["training_precision_probe"] = {"choice": choice.name, "seconds": seconds}
        settings.train_precision = choice.name  # the training steps and memory children run what auto chose
    log(f"training steps ({', '.join(METHODS)}) at batch {settings.batch_size}, crop {settings.crop_size} ...")
    report["training"], mes_share, des4_runner, captured = bench_training(settings, device)
    section_done("training")
    log("MES against per-class implementations ...")
    report["mes"] = {**mes_share, "vs_reference": bench_mes_reference(captured, settings, device)}
    section_done("mes")
    log(f"scaling (crops {settings.crop_sizes}, batches {settings.batch_sizes}) ...")
    report["scaling"] = bench_scaling(settings, device, des4_runner)
    section_done("scaling")
    log("inference ...")
    teacher = des4_runner.model.export("teacher")
    del des4_runner
    report["inference"] = bench_inference(settings, device, teacher)
    section_done("inference")
    log("peak memory (one subprocess per method) ...")
    report["memory"] = bench_memory(settings, device)
    section_done("memory")
    log(f"predict memory ({settings.predict_size[1]}×{settings.predict_size[0]}, one subprocess per mode) ...")
    report["predict_memory"] = bench_predict_memory(settings, tuple(settings.predict_size), settings.predict_crop)
    section_done("predict_memory")
    report["goals"] = {
        "des4_over_mean_teacher": {"value": report["training"]["des4_over_mean_teacher"],
                                   "goal": f"≤ {GOALS['des4_over_mean_teacher']}",
                                   "met": report["training"]["goal_met"]},
        "mes_share": {"value": report["mes"]["share_of_des4_step"], "goal": "≤ 3 %",
                      "met": report["mes"]["goal_met"]},
        "smp_over_ours_images_per_s": (
            {"value": report["inference"]["smp"]["smp_matched_over_ours"],
             "goal": f"≤ {GOALS['smp_over_ours_images_per_s']}", "met": report["inference"]["smp"]["goal_met"]}
            if "smp_matched_over_ours" in report["inference"]["smp"]
            else {"value": None, "goal": f"≤ {GOALS['smp_over_ours_images_per_s']}", "met": None,
                  "status": report["inference"]["smp"]["status"]}),
        "auto_precision_is_fastest": {"value": report["inference"]["precision"]["auto_over_fastest"],
                                      "goal": "auto choice = fastest variant",
                                      "met": report["inference"]["precision"]["auto_is_fastest"]},
    }
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = time.perf_counter() - started
    return report


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "**no**", None: "–"}[value]
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    m, s, t = report["machine"], report["settings"], report["training"]
    lines = [
        "# DeS4 benchmark",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_cores_usable']} usable cores ({m['torch_threads']} torch threads), "
        f"CPU capability {m['cpu_capability']}, native bf16: {_fmt(m['cpu_has_native_bf16'])}, device "
        f"`{m['device']}`{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; torch {m['torch']}, timm {m['timm']}, "
        f"transformers {m['transformers']}. Load average at start/end: {m.get('load_average_at_start')} / "
        f"{m.get('load_average_at_end')}. Wall time {report['wall_s']:.0f} s.",
        "",
        f"Backbone `{s['backbone']}` (random init), decoder width {s['decoder_channels']}"
        f"{' (depthwise-separable convs)' if s.get('separable_convs') else ' (full 3×3 convs)'}, {s['num_classes']} classes, "
        f"batch {s['batch_size']} labeled + {t['unlabeled_batch_size']} unlabeled, crop {s['crop_size']}, "
        f"training precision {t['precision']}{', channels_last' if t['channels_last'] else ''}; "
        f"{s['warmup']} warm-up + median of {s['iterations']} steps, methods timed round-robin.",
        "",
        "## Goals",
        "",
        "| figure | value | goal | met |",
        "|---|---|---|---|",
    ]
    for name, goal in report["goals"].items():
        value = goal["value"]
        shown = "–" if value is None else (f"{value:.1%}" if name == "mes_share" else f"{value:.3f}")
        lines.append(f"| {name} | {shown} | {goal['goal']} | {_fmt(goal['met'])}"
                     f"{' (' + goal['status'] + ')' if 'status' in goal else ''} |")
    if "training_precision_probe" in report:
        tp = report["training_precision_probe"]
        lines += ["", f"Training precision `auto` → **{tp['choice']}**, from the trainer's probe (fwd+bwd of a fresh "
                  "network on two crops): " + ", ".join(
                      f"{k} {v * 1e3:.0f} ms" if isinstance(v, (int, float)) else f"{k} {v}"
                      for k, v in tp["seconds"].items()) + "."]
    lines += ["", "## Training step", "", "| method | median ms | min ms | max ms | × supervised |", "|---|---|---|---|---|"]
    base = t["methods"]["supervised"]["median_ms"]
    for method, row in t["methods"].items():
        lines.append(f"| {method} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['max_ms']:.1f} | "
                     f"{row['median_ms'] / base:.2f} |")
    mes = report["mes"]
    ref = mes["vs_reference"]
    lines += ["", "## MES and prototype update", "",
              f"Per DeS4 step ({mes['des4_step_ms']:.1f} ms): `sample_class_features` {mes['sample_class_features_ms']:.2f} ms"
              f" + `apply_prototype_updates` {mes['apply_prototype_updates_ms']:.2f} ms = "
              f"**{mes['share_of_des4_step']:.2%}** of the step (goal ≤ 3 %). With the normalisation/entropy "
              f"around it (`sample_statistics`): {mes['sample_statistics_ms']:.2f} ms, "
              f"{mes['sample_statistics_share']:.2%}.", ""]
    if "skipped" in ref:
        lines.append(f"Reference comparison skipped: {ref['skipped']}")
    else:
        lines += [f"Selection on one step's labels ({ref['pixels']} pixels at stride 4, {ref['chosen']} chosen); "
                  f"reference: {ref['reference']}.", "",
                  "| implementation | median ms | × vectorised `select_pixels` |", "|---|---|---|"]
        vec = ref["select_pixels"]["median_ms"]
        for name in ("select_pixels", "sample_class_features", "reference_select"):
            if name in ref:
                lines.append(f"| {name} | {ref[name]['median_ms']:.2f} | {ref[name]['median_ms'] / vec:.1f} |")
    inf = report["inference"]
    p = inf["precision"]
    lines += ["", "## Inference", "",
              f"Batch {inf['batch_size']} × {inf['crop_size']}², {inf['model']}.", "",
              "| model / precision | images/s | median ms | n |", "|---|---|---|---|"]
    for name, row in inf["timings"].items():
        lines.append(f"| {name} | {row['images_per_s']:.2f} | {row['median_ms']:.1f} | {row['n']} |")
    probe = ", ".join(f"{k} {v * 1e3:.0f} ms" if isinstance(v, (int, float)) else f"{k} {v}"
                      for k, v in p.get("auto_probe_seconds", {}).items())
    lines += ["", f"`resolve_precision('auto')` → `{p['auto_choice']}`"
              + (f" (its probe, one image: {probe})" if probe else "") + f"; fastest measured: `{p['fastest']}` "
              f"(auto/fastest = {p['auto_over_fastest']:.3f}, auto is fastest: {_fmt(p['auto_is_fastest'])}). "
              f"channels_last/NCHW (fp32) = {p['channels_last_over_nchw_fp32']:.2f}×, bf16/fp32 = "
              f"{p['bf16_over_fp32_channels_last']:.3f}× (CPU capability {p['cpu_capability']}, native bf16 "
              f"{_fmt(p['cpu_has_native_bf16'])})."]
    smp = inf["smp"]
    if smp["status"] == "ok":
        lines += ["", f"smp DeepLabV3Plus (`{smp['encoder']}`, {smp['precision']}): matched = {smp['matched']}; "
                  f"default = {smp['default']}. smp-matched/ours images/s = **{smp['smp_matched_over_ours']:.3f}** "
                  f"(goal ≤ {smp['goal']}), smp-default/ours = {smp['smp_default_over_ours']:.3f}."]
    else:
        lines += ["", f"smp: {smp['status']}"]
    mem = report["memory"]
    lines += ["", "## Peak memory of a training step", "",
              "(one fresh process per method; peak over one step after a warm-up step, which allocates gradients "
              "and SGD momentum; CPU: the kernel's RSS high-water mark, reset before the step; the baseline "
              "includes the ~0.8 GB of the torch/timm/transformers libraries)", "",
              "| method | peak RSS MB | RSS before step MB | step delta MB | CUDA peak MB |", "|---|---|---|---|---|"]
    for method, row in mem["methods"].items():
        if "error" in row:
            lines.append(f"| {method} | error: {row['error']} | | | |")
            continue
        lines.append(f"| {method} | {row['peak_rss_mb']:.0f} | {row['rss_before_step_mb']:.0f} | "
                     f"{row['rss_step_delta_mb']:.0f} | {_fmt(row.get('cuda_peak_allocated_mb'), 0)} |")
    if "des4_over_mean_teacher" in mem:
        lines += ["", f"DeS4/MT peak ({mem['compared']}): {mem['des4_over_mean_teacher']:.3f}"
                  + (f"; step delta: {mem['des4_over_mean_teacher_step_delta']:.3f}"
                     if "des4_over_mean_teacher_step_delta" in mem else "")]
    sc = report["scaling"]
    lines += ["", "## DeS4 step time scaling", "", f"Median of {sc['iterations']} steps. {sc['note']}.", "",
              "| batch | crop | median ms | time ratio | work ratio | time / work |", "|---|---|---|---|---|---|"]
    for row in sc["crop"] + sc["batch"]:
        lines.append(f"| {row['batch_size']} | {row['crop_size']} | {row['median_ms']:.1f} | {row['time_ratio']:.2f} | "
                     f"{row['work_ratio']:.2f} | {row['time_per_work_ratio']:.2f} |")
    if "predict_memory" in report:
        lines += ["", *render_predict_memory(report["predict_memory"])]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_reports(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    json_path, md_path = out / "benchmark.json", out / "benchmark.md"
    _write_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(md_path, render_markdown(report))
    return json_path, md_path


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark.py",
        description="DeS4 speed and memory benchmark (issue 8 part 1): training step per method, MES share, "
        "inference vs smp DeepLabV3Plus and precisions, peak memory, scaling. Writes benchmark.{json,md}.")
    parser.add_argument("--backbone", default=None, help="timm encoder (default efficientnet_lite0; --quick: test_resnet)")
    parser.add_argument("--crop-size", type=int, default=None, help="square crop (default 224; --quick: 48)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="labeled batch (default 4; --quick: 2)")
    parser.add_argument("--unlabeled-batch-size", type=int, default=None,
                        help="unlabeled batch of the mean-teacher and DeS4 steps (default: --batch-size)")
    parser.add_argument("--decoder-channels", type=int, default=None, help="decoder width d (default 128; --quick: 16)")
    parser.add_argument("--separable-convs", action=argparse.BooleanOptionalAction, default=True,
                        help="depthwise-separable decoder convs, as the CamVid demo recipe")
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=None, help="timed steps per figure (default 7; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; --quick: 0)")
    parser.add_argument("--scaling-iterations", type=int, default=None,
                        help="timed steps per scaling point (default 3; --quick: 1)")
    parser.add_argument("--bf16-iterations", type=int, default=None,
                        help="inference iterations for bf16 (default: --iterations, or 2 without native bf16)")
    parser.add_argument("--crop-sizes", type=int, nargs=3, default=None,
                        help="3 crops for the scaling figure (default ½×, 1×, 1.5× --crop-size, multiples of 16)")
    parser.add_argument("--batch-sizes", type=int, nargs=3, default=None,
                        help="3 batch sizes for the scaling figure (default ½×, 1×, 2× --batch-size)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument("--train-precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast of the training steps; auto = the trainer's choice (fp32 on any CPU, "
                        "bf16 on a GPU)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="train in NCHW (the trainer's default is channels_last)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for tests (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice). On a CPU that other jobs keep "
                        "busy, intra-op threads stall badly: benchmark an idle machine, or pin this to the free cores")
    parser.add_argument("--predict-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="image size of the predict-memory figure (default 4000 6000; --quick: 240 320)")
    parser.add_argument("--predict-crop", type=int, default=None,
                        help="sliding-window crop of the predict-memory figure (default 512; --quick: 64)")
    parser.add_argument("--only", choices=("predict-memory", "training"), default=None,
                        help="run one section alone and write <out>/<section>.{json,md} (benchmark.* are kept); "
                        "training: the step-cost ratios alone, as <out>/step_ratios.json (the CamVid ceiling "
                        "study converts steps into supervised-step equivalents with them)")
    parser.add_argument("--out", default="reports", help="folder for benchmark.json and benchmark.md")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    quick = args.quick

    def pick(value: Any, normal: Any, tiny: Any) -> Any:
        return value if value is not None else (tiny if quick else normal)

    crop = pick(args.crop_size, 224, 48)
    batch = pick(args.batch_size, 4, 2)
    settings = BenchmarkSettings(
        backbone=pick(args.backbone, "efficientnet_lite0", "test_resnet"), crop_size=crop, batch_size=batch,
        decoder_channels=pick(args.decoder_channels, 128, 16), separable_convs=args.separable_convs,
        num_classes=args.num_classes,
        iterations=pick(args.iterations, 7, 1), warmup=pick(args.warmup, 2, 0),
        scaling_iterations=pick(args.scaling_iterations, 3, 1), bf16_iterations=args.bf16_iterations,
        crop_sizes=list(args.crop_sizes or [_round16(crop / 2), crop, _round16(crop * 1.5)]),
        batch_sizes=list(args.batch_sizes or [max(1, batch // 2), batch, batch * 2]),
        unlabeled_batch_size=args.unlabeled_batch_size, device=args.device, train_precision=args.train_precision, channels_last=args.channels_last,
        quick=quick, seed=args.seed, threads=args.threads,
        predict_size=list(args.predict_size or ([240, 320] if quick else [4000, 6000])),
        predict_crop=pick(args.predict_crop, 512, 64),
    )
    problems = [f"{name} must be >= 1" for name, value in (
        ("--crop-size", settings.crop_size), ("--batch-size", settings.batch_size),
        ("--iterations", settings.iterations), ("--scaling-iterations", settings.scaling_iterations))
        if value < 1]
    if settings.warmup < 0:
        problems.append("--warmup must be >= 0")
    if len(set(settings.crop_sizes)) != 3 or len(set(settings.batch_sizes)) != 3:
        problems.append("--crop-sizes and --batch-sizes need 3 different values each")
    if problems:
        raise SystemExit("benchmark: " + "; ".join(problems))
    return settings


def write_step_ratios(settings: BenchmarkSettings, out: Path) -> Path:
    """The training section alone (round-robin medians, one undisturbed run): ``<out>/step_ratios.json``."""
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.train_precision == "auto":  # the trainer's rule without the probe: fp32 on a CPU, bf16 on a GPU
        settings.train_precision = resolve_precision("auto", device).name
    machine = machine_info(device)
    training, *_ = bench_training(settings, device)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    section = {"machine": machine, "settings": asdict(settings), "training": training}
    path = out / "step_ratios.json"
    _write_atomic(path, json.dumps(section, indent=2, default=str) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_child:
        print(MEMORY_MARKER + json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return 0
    settings = settings_from_args(args)
    if args.only == "predict-memory":
        device = resolve_device(settings.device)
        section = {"machine": machine_info(device), "settings": asdict(settings),
                   "predict_memory": bench_predict_memory(settings, tuple(settings.predict_size), settings.predict_crop)}
        m = section["machine"]
        text = "\n".join([f"# DeS4 predict memory\n\nMachine: {m['cpu_model']}, {m['cpu_cores_usable']} usable cores "
                          f"({settings.threads or m['torch_threads']} torch threads); torch {m['torch']}. Backbone `{settings.backbone}` (random init), decoder width "
                          f"{settings.decoder_channels}, {settings.num_classes} classes. "
                          "`python benchmarks/benchmark.py --only predict-memory` repeats it.\n",
                          *render_predict_memory(section["predict_memory"])]) + "\n"
        out = Path(args.out)
        _write_atomic(out / "predict_memory.json", json.dumps(section, indent=2, default=str) + "\n")
        _write_atomic(out / "predict_memory.md", text)
        print(text)
        return 0
    if args.only == "training":
        path = write_step_ratios(settings, Path(args.out))
        print(path.read_text())
        return 0
    report = run_benchmark(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    json_path, md_path = write_reports(report, Path(args.out))
    print(render_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
