#!/usr/bin/env python
"""Train DeS4 / mean-teacher / supervised: ``accelerate launch scripts/train.py --config configs/camvid_demo.yaml``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from des4_hf.pretrained import IMAGENET_OFFLINE, ensure_offline_weights
from des4_hf.training.config import CHOICES, TrainConfig
from des4_hf.training.run_folder import OutputDirError, claim_output_dir

_FLAG_ALIASES = {
    "decoupled": "--no-decoupled",
    "shared_head": "--no-shared-head",
    "reweight": "--no-reweight",
}


def _field_type(item: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    annotation = hints[item.name]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="des4-train",
        description="Train DeS4 (or the mean-teacher / supervised baselines) with Accelerate. Every option "
        "overrides the --config recipe, which overrides TrainConfig's default (shown).",
    )
    parser.add_argument("--config", help="a YAML recipe from configs/ (options below override it)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --output-dir and start over (without it, a folder that holds "
                        "files is refused unless --resume is given)")
    for item in dataclasses.fields(TrainConfig):
        if item.name == "extra":
            continue
        kind = _field_type(item)
        dest = item.name
        default = item.default_factory() if item.default is dataclasses.MISSING else item.default  # type: ignore[misc]
        if item.name in _FLAG_ALIASES:
            parser.add_argument(_FLAG_ALIASES[item.name], dest=dest, action="store_false", default=None,
                                help=f"switch off {item.name.replace('_', ' ')} (SPEC §4)")
            continue
        option = "--" + item.name.replace("_", "-")
        help_text = f"default: {default}"
        if kind is bool:
            parser.add_argument(option, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == tuple[float, float]:
            parser.add_argument(option, dest=dest, type=float, nargs=2, default=None, help=help_text)
        else:
            converter = kind if kind in (int, float, str) else str
            choices = CHOICES.get(item.name)  # shown in --help; checked with the rest in TrainConfig.validate
            parser.add_argument(option, dest=dest, type=converter, default=None, help=help_text,
                                metavar="{" + ",".join(choices) + "}" if choices else None)
    return parser


def parse_train_config(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> TrainConfig:
    """YAML recipe (``--config``) + command-line overrides → a validated :class:`TrainConfig` (from ``args`` when
    the command line is already parsed)."""
    args = args if args is not None else train_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items()
                 if key not in ("config", "debug", "overwrite") and value is not None}
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def plot_pseudo_labels(report: Mapping[str, Any], step: int, path: Path) -> None:
    """Bar chart of the labeled pixels' class shares against the teacher's pseudo labels' (the paper's Fig. 3)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure to close

    from des4_hf.utils import atomic_path

    positions = np.arange(len(report["classes"]))
    figure = Figure(figsize=(max(6, 0.6 * len(positions)), 3.5), dpi=100, layout="tight")
    axis = figure.add_subplot()
    axis.bar(positions - 0.2, report["labeled_share"], 0.4, label="labeled ground truth")
    axis.bar(positions + 0.2, report["pseudo_label_share"], 0.4, label="teacher pseudo labels")
    axis.set(xticks=positions, ylabel="share of pixels", title=f"Class distribution, step {step}")
    axis.set_xticklabels(report["classes"], rotation=45, ha="right")
    axis.legend()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def write_run_figures(config: TrainConfig) -> None:
    """After training: ``eval/pseudo_labels_step_*.png`` for every evaluation that saw pseudo labels, and
    ``overlays/`` of the first ``config.overlays`` val images as the exported ``last/`` teacher predicts them."""
    from des4_hf import Des4ForSemanticSegmentation, Des4ImageProcessor
    from des4_hf.data import load_segmentation_dataset
    from des4_hf.inference import overlay, segment_images
    from des4_hf.utils import atomic_path

    output_dir = Path(config.output_dir)
    for record_path in sorted((output_dir / "eval").glob("step_*.json")):
        record = json.loads(record_path.read_text())
        if sum(record["pseudo_labels"]["pseudo_label_share"]) > 0:
            plot_pseudo_labels(record["pseudo_labels"], record["step"],
                               record_path.with_name(f"pseudo_labels_{record_path.stem}.png"))
    if config.overlays <= 0:
        return
    val = load_segmentation_dataset(config.dataset, **({"root": config.data_root} if config.data_root else {}))["val"]
    model = Des4ForSemanticSegmentation.from_pretrained(output_dir / "last")
    processor = Des4ImageProcessor.from_pretrained(output_dir / "last")
    for index in range(min(config.overlays, len(val))):
        record = val[index]
        image = record["image"].convert("RGB")
        (label_map,) = segment_images(model, processor, [image], model.device, None, False, None)
        name = str(record["id"]).replace("/", "_")  # Cityscapes ids are paths
        with atomic_path(output_dir / "overlays" / f"{name}_overlay.jpg") as temporary:
            overlay(image, label_map).save(temporary, format="JPEG", quality=90)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _one_line(error: BaseException) -> str:
    """The message of ``error`` as one line: an error raised in a DataLoader worker arrives with the worker's
    traceback in its text, of which the last line is the original message."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    last = lines[-1]
    return last.split(": ", 1)[1] if len(lines) > 1 and last.startswith(type(error).__module__) else last


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-train``: parse a recipe (+ overrides) and run the trainer."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from des4_hf.data import DataError
    from des4_hf.training import InitFromError, NonFiniteLossError, ResumeError, Trainer

    try:
        cli = train_parser().parse_args(argv)
        config = parse_train_config(args=cli)  # bad values fail here, before any data is loaded
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    if config.encoder_weights == IMAGENET_OFFLINE:  # the library reads the converted file: make it once here
        try:
            ensure_offline_weights()
        except (ImportError, FileNotFoundError, ValueError) as error:  # no lite0 extra: says what to install
            print(f"des4-train: {error}", file=sys.stderr)
            return 2
    debug = cli.debug
    previous = signal.signal(signal.SIGTERM, _interrupt)  # preemption on a cluster: save a checkpoint as Ctrl-C does
    claim = None
    try:
        claim = claim_output_dir(Path(config.output_dir), config.resume is not None, cli.overwrite)
        trainer = Trainer(config)
        trainer.train()
        if trainer.is_main:
            write_run_figures(config)
    except NonFiniteLossError as error:
        if debug:
            raise
        print(f"des4-train: {error}", file=sys.stderr)
        return 3
    except (OutputDirError, ResumeError, InitFromError) as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    except (DataError, OSError, ValueError, RuntimeError) as error:  # bad data or options (the message names the file
        # or option and the fix), a file system error (disk full, a name too long), a failed allocation
        if debug:
            raise
        print(f"des4-train: {_one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if claim is not None:  # released now (main may run again); a run that never started leaves nothing behind
            claim.release()
        signal.signal(signal.SIGTERM, previous)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
