"""Section ``inference``: images/s of the exported teacher per precision and memory format, whether ``auto`` picked
the fastest, and smp's DeepLabV3Plus with the same encoder."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    GOALS,
    SMP_SKIPPED,
    BenchmarkSettings,
    _ratio,
    _summary,
    cpu_has_native_bf16,
    interleaved_timings,
)
from torch import Tensor

from des4_hf.configuration_des4 import Des4Config
from des4_hf.inference import PROBE_CACHE, autocast, probe_precision, resolve_precision
from des4_hf.modeling_des4 import Des4ForSemanticSegmentation


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
