"""Sections ``training`` (one optimizer step per method), ``mes`` (MES's share of a DeS4 step, and against a
per-class reference implementation) and ``scaling`` (DeS4 step time over crops and batches)."""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    GOALS,
    METHODS,
    BenchmarkSettings,
    StepRunner,
    _CallTimer,
    _ratio,
    _summary,
    interleaved_timings,
)

from des4_hf.method import sampling
from des4_hf.method import step as step_module
from des4_hf.method.step import TeacherStudent


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
