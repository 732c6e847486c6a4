#!/usr/bin/env python
"""Train DeS4 / mean-teacher / supervised: ``accelerate launch scripts/train.py --config configs/camvid_demo.yaml``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from des4_hf.pretrained import IMAGENET_OFFLINE
from des4_hf.training.config import CHOICES, TrainConfig

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


def parse_train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """YAML recipe (``--config``) + command-line overrides → a validated :class:`TrainConfig`."""
    args = train_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if key != "config" and value is not None}
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-train``: parse a recipe (+ overrides) and run the trainer."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from des4_hf.data import DataError
    from des4_hf.training import NonFiniteLossError, Trainer

    try:
        config = parse_train_config(argv)  # bad values fail here, before any data is loaded
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    if config.encoder_weights == IMAGENET_OFFLINE:  # the library reads the converted file: make it once here
        try:
            from des4_hf_scripts.convert_lite0 import ensure_offline_weights
        except ImportError:  # a checkout that is not pip-installed: this script's folder is on sys.path
            from convert_lite0 import ensure_offline_weights
        try:
            ensure_offline_weights()
        except (ImportError, FileNotFoundError, ValueError) as error:  # no lite0 extra: says what to install
            print(f"des4-train: {error}", file=sys.stderr)
            return 2
    try:
        Trainer(config).train()
    except NonFiniteLossError as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 3
    except DataError as error:  # missing or bad data: the message names the file and the fix
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
