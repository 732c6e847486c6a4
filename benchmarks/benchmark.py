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
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    GOALS,
    MEMORY_MARKER,
    METHODS,
    BenchmarkSettings,
    _round16,
    model_config,
    resolve_device,
)
from bench_inference import bench_inference, fresh_precision_probe
from bench_memory import bench_memory, bench_predict_memory, memory_child, render_predict_memory
from bench_report import _write_atomic, machine_info, render_markdown, write_reports
from bench_training import bench_mes_reference, bench_scaling, bench_training

from des4_hf.inference import PRECISIONS, resolve_precision
from des4_hf.modeling_des4 import Des4ForSemanticSegmentation


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
    parser.add_argument("--train-precision", default="auto", choices=PRECISIONS,
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
