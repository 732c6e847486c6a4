"""``reports/benchmark.{json,md}``: the machine, and every section as a table with its goal."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from bench_common import cpu_has_native_bf16
from bench_memory import render_predict_memory

from des4_hf.inference import cpu_model


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
