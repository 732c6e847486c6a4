"""Sections ``memory`` (peak memory of a training step per method) and ``predict_memory`` (des4-predict on a large
image, whole or through the sliding window), each in a fresh subprocess."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench_common import MEMORY_MARKER, METHODS, BenchmarkSettings, StepRunner, _ratio, model_config

from des4_hf.modeling_des4 import Des4ForSemanticSegmentation

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
            [sys.executable, str(Path(__file__).resolve().with_name("benchmark.py")), "--memory-child", json.dumps(payloads[name])],
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
