"""The console entry points (``des4-train``, ``des4-predict``, ``des4-evaluate``, ``des4-export-onnx``,
``des4-push-to-hub``): argument parsing and one-line errors around the library; ``scripts/*.py`` call them.

Exit status: 0 success, 2 bad arguments or data (one line naming the argument and the fix), 1 some work failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from .evaluation import (
    CITYSCAPES_SLIDING_WINDOW,
    check_dataset_labels,
    check_model_classes,
    default_stride,
    evaluate_segmentation,
    protocol_for,
)
from .hub import push_to_hub, stage_model_repo, validate_revision
from .inference import (
    PRECISIONS,
    color_palette,
    display_rgb,
    label_map_to_image,
    overlay,
    read_image,
    resolve_precision,
    segment_images,
)
from .onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx
from .training.config import (
    CLASS_WEIGHTINGS,
    METHODS,
    MIXED_PRECISION,
    PROTOTYPE_INITS,
    REPORT_TO,
    SAMPLERS,
    TrainConfig,
)
from .utils import atomic_path

logger = logging.getLogger("des4_hf.cli")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
PREPROCESSOR_CONFIG = "preprocessor_config.json"


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ train

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


_CHOICES = {"method": METHODS, "sampler": SAMPLERS, "class_weighting": CLASS_WEIGHTINGS,
            "mixed_precision": MIXED_PRECISION, "report_to": REPORT_TO, "prototype_init": PROTOTYPE_INITS}


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
            choices = _CHOICES.get(item.name)  # shown in --help; checked with the rest in TrainConfig.validate
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




def train(argv: Sequence[str] | None = None) -> int:
    """``des4-train``: parse a recipe (+ overrides) and run the trainer."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .training import NonFiniteLossError, Trainer

    try:
        config = parse_train_config(argv)  # bad values fail here, before any data is loaded
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 2
    try:
        Trainer(config).train()
    except NonFiniteLossError as error:
        print(f"des4-train: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------ predict

@dataclass
class LoadedImage:
    path: Path
    stem: str
    image: Image.Image  # as read (any mode), EXIF orientation applied

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-predict", description="Segment images with a DeS4 model: a palette "
                                     "PNG of class indices and a colour overlay per image, both at its own size.")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (folders: their images, sorted)")
    parser.add_argument("--model", required=True, help="a saved model directory or a Hugging Face Hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--sliding-window", action="store_true", help="predict from overlapping crops (large images)")
    parser.add_argument("--crop-size", type=int, default=None, help="sliding-window crop size (default 512)")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride (default 2/3 of the crop)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on a GPU, fp32 on a CPU (default: auto)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per forward pass; consecutive same-size images are batched")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overlay-alpha", type=float, default=0.5, help="weight of the class colours in the overlay")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def _error(message: str) -> None:
    tqdm.write(f"des4-predict: {message}", file=sys.stderr)


def _looks_like_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or os.path.isabs(name) \
        or name.count("/") > 1


def load_model_and_processor(name: str, device: torch.device) -> tuple[Any, Any]:
    """The model (eval mode, on ``device``) and its image processor from a directory or a Hub id."""
    from transformers import AutoImageProcessor

    from .image_processing_des4 import Des4ImageProcessor
    from .modeling_des4 import Des4ForSemanticSegmentation

    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--model {name}: is a file; give the directory written by save_pretrained")
    if not path.exists() and _looks_like_local_path(name):
        raise UsageError(f"--model {name}: no such directory")
    from .hub_names import resolve_pretrained_name

    source = str(path) if path.is_dir() else resolve_pretrained_name(name)
    try:
        model = Des4ForSemanticSegmentation.from_pretrained(source)
    except (OSError, ValueError) as error:  # not found (OSError), bad id or bad checkpoint (ValueError)
        where = "directory" if path.is_dir() else "directory or Hub model"
        raise UsageError(f"--model {name}: cannot load a DeS4 {where}: {error}") from error
    processor = None
    if not path.is_dir() or (path / PREPROCESSOR_CONFIG).is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            if path.is_dir():  # the file is there but unreadable: do not guess a normalisation
                raise UsageError(f"--model {name}: cannot read {PREPROCESSOR_CONFIG}: {error}") from error
    if processor is None:
        logger.warning("%s has no %s; using Des4ImageProcessor() defaults (ImageNet mean/std, no resize). Save the "
                       "processor next to the model (processor.save_pretrained(dir)) if it was trained otherwise.",
                       name, PREPROCESSOR_CONFIG)
        processor = Des4ImageProcessor()
    return model.to(device).eval(), processor


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded to their images (sorted); also the inputs that do not exist."""
    files: list[Path] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            candidates = [path]
        else:
            missing.append(item)
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files, missing


def output_stems(files: list[Path]) -> list[str]:
    """``<stem>`` per file; a stem already taken (a.jpg + a.png, a name in two folders) gets ``_2``..."""
    stems: list[str] = []
    taken: set[str] = set()
    for path in files:
        stem, number = path.stem, 1
        while stem in taken:
            number += 1
            stem = f"{path.stem}_{number}"
        if stem != path.stem:
            logger.warning("%s: another input is also named %r; writing it as %s.png", path, path.stem, stem)
        taken.add(stem)
        stems.append(stem)
    return stems


def batches(files: list[Path], stems: list[str], batch_size: int, failed: list[str],
            progress: tqdm) -> Iterator[list[LoadedImage]]:
    """Read images in order; yield runs of up to ``batch_size`` consecutive same-size images.

    Unreadable files are reported, recorded in ``failed`` and skipped.
    """
    pending: list[LoadedImage] = []
    for path, stem in zip(files, stems):
        try:
            image = read_image(path)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
            _error(f"{path}: not a readable image, skipped ({type(error).__name__}: {error})")
            failed.append(str(path))
            progress.update(1)
            continue
        if pending and (image.size != pending[0].size or len(pending) >= batch_size):
            yield pending
            pending = []
        pending.append(LoadedImage(path, stem, image))
    if pending:
        yield pending


def _predict_settings(args: argparse.Namespace) -> tuple[torch.device, tuple[int, int] | None]:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if not 0.0 <= args.overlay_alpha <= 1.0:
        raise UsageError(f"--overlay-alpha {args.overlay_alpha}: must be in [0, 1]")
    sliding_window = None
    if args.sliding_window:
        crop = 512 if args.crop_size is None else args.crop_size
        if crop < 1:
            raise UsageError(f"--crop-size {crop}: must be >= 1")
        stride = max(1, round(2 * crop / 3)) if args.stride is None else args.stride
        if not 1 <= stride <= crop:
            raise UsageError(f"--stride {stride}: must be between 1 and the crop size {crop}")
        sliding_window = (crop, stride)
    elif args.crop_size is not None or args.stride is not None:
        logger.warning("--crop-size/--stride only apply with --sliding-window; predicting whole images")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise UsageError(f"--device {args.device}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    return device, sliding_window


def predict(argv: Sequence[str] | None = None) -> int:
    """``des4-predict``: a palette PNG of class indices and a colour overlay per image, at its own size.

    Exit status: 0 all segmented, 1 some input could not be read or written (named on stderr), 2 bad arguments.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="des4-predict: %(message)s")
    parser = predict_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 for bad arguments, 0 for --help
        return int(exit_.code or 0)
    try:
        device, sliding_window = _predict_settings(args)
        choice = resolve_precision(args.precision, device, channels_last=not args.no_channels_last)
    except (UsageError, ValueError) as error:
        _error(str(error))
        return 2

    files, missing = collect_inputs(args.inputs)
    for item in missing:
        _error(f"{item}: no such file or folder")
    if not files:
        _error("no input images found in " + " ".join(args.inputs))
        return 2

    try:
        model, processor = load_model_and_processor(args.model, device)
    except UsageError as error:
        _error(str(error))
        return 2
    if model.config.num_labels > 256:
        _error(f"the model has {model.config.num_labels} classes; palette PNGs hold at most 256")
        return 2
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    logger.info("%d image(s) on %s, precision %s%s%s", len(files), device, choice.name,
                ", channels_last" if choice.channels_last else "",
                f", sliding window {sliding_window[0]}/{sliding_window[1]}" if sliding_window else "")

    args.out.mkdir(parents=True, exist_ok=True)
    palette = color_palette(model.config.num_labels)
    failed: list[str] = list(missing)
    stems = output_stems(files)
    with tqdm(total=len(files), unit="img", desc="des4-predict", disable=args.no_progress, file=sys.stderr) as bar:
        for batch in batches(files, stems, args.batch_size, failed, bar):
            try:
                label_maps = segment_images(model, processor, [item.image for item in batch], device,
                                            choice.autocast_dtype, choice.channels_last, sliding_window)
            except (RuntimeError, ValueError) as error:  # e.g. out of memory on a huge image
                for item in batch:
                    _error(f"{item.path}: prediction failed ({type(error).__name__}: {error})")
                    failed.append(str(item.path))
                bar.update(len(batch))
                continue
            for item, label_map in zip(batch, label_maps):
                try:
                    with atomic_path(args.out / f"{item.stem}.png") as temporary:
                        label_map_to_image(label_map, palette).save(temporary, format="PNG")
                    blended = overlay(display_rgb(item.image), label_map, alpha=args.overlay_alpha, palette=palette)
                    with atomic_path(args.out / f"{item.stem}_overlay.jpg") as temporary:
                        blended.save(temporary, format="JPEG", quality=90)
                except OSError as error:
                    _error(f"{item.path}: cannot write the outputs ({error})")
                    failed.append(str(item.path))
                bar.update(1)
    if failed:
        _error(f"{len(failed)} of {len(files) + len(missing)} input(s) failed: " + ", ".join(failed))
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ evaluate

_LOCAL_KINDS_NEEDING_ROOT = ("voc", "cityscapes")


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="des4-evaluate",
        description="Evaluate a DeS4 model (mIoU from a dataset-level confusion matrix; runs under accelerate "
        "launch for several processes/GPUs).",
    )
    parser.add_argument("--model", required=True, help="saved model directory or Hub repo id")
    parser.add_argument(
        "--dataset", required=True,
        help="voc | cityscapes | camvid | folder | hub | a Hub preset (jxie/pascal-voc-2012, shijli/voc2012, "
        "cityscapes-hub) | any Hub dataset id or local save_to_disk/parquet folder",
    )
    parser.add_argument("--root", help="dataset root (voc: VOCdevkit/VOC2012; cityscapes: folder with leftImg8bit/ "
                        "and gtFine/; camvid: optional)")
    parser.add_argument("--name", help="for --dataset hub or a preset: the Hub id / local copy to read")
    parser.add_argument("--images", help="for --dataset folder: image folder")
    parser.add_argument("--masks", help="for --dataset folder: mask folder (class-index PNGs, 255 = ignore)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument(
        "--sliding-window", action=argparse.BooleanOptionalAction, default=None,
        help="sliding-window inference (default: the dataset's protocol: on for cityscapes, off for voc/camvid); "
        f"crop/stride default to {CITYSCAPES_SLIDING_WINDOW[0]}/{CITYSCAPES_SLIDING_WINDOW[1]}",
    )
    parser.add_argument("--crop-size", type=int, help="sliding-window crop (implies --sliding-window)")
    parser.add_argument("--stride", type=int, help="sliding-window stride (default: 2/3 of the crop)")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="multi-scale test, e.g. --scales 0.75 1.0 1.25 (default: 1.0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA only)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (same-size images only)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--out", help="folder for eval.json, eval.md, per_class_iou.png "
                        "(default: eval/<dataset>-<split>)")
    parser.add_argument("--no-check-labels", dest="check_labels", action="store_false",
                        help="skip the up-front scan of every mask's values")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def _protocol_settings(args: argparse.Namespace) -> tuple[tuple[int, int] | None, bool, tuple[float, ...]]:
    protocol = protocol_for(args.dataset)
    use_window = args.sliding_window
    if use_window is None:
        use_window = protocol.sliding_window is not None or args.crop_size is not None or args.stride is not None
    window = None
    if use_window:
        default_crop = protocol.sliding_window[0] if protocol.sliding_window else CITYSCAPES_SLIDING_WINDOW[0]
        crop = args.crop_size if args.crop_size is not None else default_crop
        stride = args.stride if args.stride is not None else default_stride(crop)
        if crop < 1 or not 1 <= stride <= crop:
            raise UsageError(f"--crop-size {crop} / --stride {stride}: need crop >= 1 and 1 <= stride <= crop.")
        window = (crop, stride)
    elif args.crop_size is not None or args.stride is not None:
        raise UsageError("--crop-size/--stride need sliding-window inference: drop --no-sliding-window.")
    scales = tuple(args.scales) if args.scales else protocol.scales
    if any(not s > 0 for s in scales):
        raise UsageError(f"--scales {list(scales)}: every scale must be > 0.")
    return window, bool(args.flip or protocol.flip), scales


def load_eval_split(args: argparse.Namespace) -> Any:
    """The ``datasets.Dataset`` of ``--split``; raises :class:`UsageError` with the fix for a bad root/split."""
    from .data import HUB_PRESETS, available_kinds, load_segmentation_dataset

    kind = args.dataset
    kwargs: dict[str, Any] = {}
    if args.root is not None:
        root = Path(args.root).expanduser()
        if not root.is_dir():
            raise UsageError(f"--root {args.root}: no such folder. Pass the dataset's root folder "
                           "(voc: VOCdevkit/VOC2012, cityscapes: the folder holding leftImg8bit/ and gtFine/).")
        kwargs["root"] = str(root)
    if kind in _LOCAL_KINDS_NEEDING_ROOT and args.root is None:
        raise UsageError(f"--dataset {kind} needs --root <dataset folder>.")
    if kind == "folder":
        if not args.images or not args.masks:
            raise UsageError("--dataset folder needs --images DIR and --masks DIR.")
        for flag, value in (("--images", args.images), ("--masks", args.masks)):
            if not Path(value).is_dir():
                raise UsageError(f"{flag} {value}: no such folder.")
        kwargs = {"images": args.images, "masks": args.masks}
    elif kind == "hub" or kind in HUB_PRESETS:
        kwargs = {"name": args.name} if args.name else {}
        if kind == "hub" and not args.name:
            raise UsageError("--dataset hub needs --name <Hub dataset id or local folder>.")
    elif kind not in available_kinds():
        if "/" in kind or Path(kind).exists():
            kwargs = {"name": kind}
            kind = "hub"
        else:
            raise UsageError(f"--dataset {kind!r} is unknown. Allowed: {available_kinds()}, a Hub dataset id "
                           "(owner/name) or a local save_to_disk / parquet folder.")
    dataset_dict = load_segmentation_dataset(kind, **kwargs)
    if kind == "folder":  # a folder of pairs is the evaluation set whatever --split says
        return dataset_dict["train"]
    if args.split not in dataset_dict:
        raise UsageError(f"--split {args.split!r} is not in the dataset (splits: {list(dataset_dict)}).")
    return dataset_dict[args.split]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def _run_evaluation(args: argparse.Namespace, accelerator: Any) -> int:
    from .configuration_des4 import Des4Config
    from .data import DataError, get_class_names
    from .image_processing_des4 import Des4ImageProcessor
    from .modeling_des4 import Des4ForSemanticSegmentation

    window, flip, scales = _protocol_settings(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1.")

    # 1. data (paths only), 2. the model's config: both cheap. Short names → <namespace>/<name>.
    from .hub_names import resolve_pretrained_name

    args.model = resolve_pretrained_name(args.model)
    split = load_eval_split(args)
    try:
        config = Des4Config.from_pretrained(args.model)
    except OSError as error:
        raise UsageError(f"--model {args.model}: cannot read its config.json ({error}). Pass a directory written by "
                       "save_pretrained / the trainer, or a Hub repo id (online or cached).") from error
    try:
        class_names = get_class_names(split)
    except DataError:
        class_names = [config.id2label.get(i, str(i)) for i in range(config.num_labels)]
        accelerator.print(f"the dataset carries no class names: using the model's {class_names}")
    num_classes = len(class_names)
    ignore_index = config.semantic_loss_ignore_index

    # 3. model classes against dataset classes, then every mask of this process's shard.
    check_model_classes(config, num_classes, class_names)
    if args.check_labels:
        shard = list(range(accelerator.process_index, len(split), accelerator.num_processes))
        check_dataset_labels(split, num_classes, ignore_index, indices=shard)

    # 4. heavy work.
    model = Des4ForSemanticSegmentation.from_pretrained(args.model)
    try:
        processor = Des4ImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = Des4ImageProcessor()
        accelerator.print("no preprocessor_config.json beside the model: using ImageNet mean/std")
    from .data import EvalDataset

    dataset = EvalDataset(split, processor.image_mean, processor.image_std, num_classes=num_classes)
    accelerator.print(
        f"evaluating {args.model} on {args.dataset} {args.split}: {len(dataset)} images, {num_classes} classes, "
        f"{'sliding window ' + str(window) if window else 'whole image'}, flip={flip}, scales={list(scales)}, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}"
    )
    result = evaluate_segmentation(
        model, dataset, num_classes=num_classes, class_names=class_names, accelerator=accelerator,
        sliding_window=window, flip=flip, scales=scales, precision=args.precision, batch_size=args.batch_size,
        ignore_index=ignore_index, progress=args.progress, num_workers=args.num_workers,
        settings={"model": str(args.model), "dataset": args.dataset, "split": args.split,
                  **({"root": str(args.root)} if args.root else {})},
    )
    if accelerator.is_main_process:
        print(result.to_text())
        out = Path(args.out) if args.out else Path("eval") / f"{_slug(args.dataset)}-{_slug(args.split)}"
        paths = result.save(out)
        print("wrote " + ", ".join(str(path) for path in paths.values()))
    accelerator.wait_for_everyone()
    return 0


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``des4-evaluate``: mIoU of a saved model on a dataset's split, on the papers' protocols."""
    args = evaluate_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from accelerate import Accelerator

    from .data import DataError
    from .metrics import LabelRangeError

    accelerator = Accelerator()
    try:
        return _run_evaluation(args, accelerator)
    except (UsageError, DataError, LabelRangeError, ValueError) as error:
        print(f"des4-evaluate: error: {error}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------ export-onnx

def export_onnx_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-export-onnx",
                                     description="Export a DeS4 model to ONNX with dynamic batch/height/width.")
    parser.add_argument("--model", required=True, help="model directory, Hub repo id or short name (des4-voc-aug)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--height", type=int, default=512, help="typical input height used to trace the graph")
    parser.add_argument("--width", type=int, default=512, help="typical input width used to trace the graph")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch check")
    return parser


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    """``des4-export-onnx``: the model to ONNX with dynamic batch/height/width, checked with onnxruntime."""
    args = export_onnx_parser().parse_args(argv)
    try:
        path = export_onnx(args.model, args.out, opset=args.opset, height=args.height, width=args.width,
                           verify=not args.no_verify)
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as error:
        print(f"des4-export-onnx: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (ValueError, TypeError)) else 1
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    print(f"wrote {path} ({size / 1e6:.1f} MB): pixel_values (batch, 3, height, width) → logits, dynamic sizes")
    if not args.no_verify and importlib.util.find_spec("onnxruntime") is not None:
        print("verified with onnxruntime against PyTorch at a size other than the export size")
    return 0


# ------------------------------------------------------------------------------------------------ push-to-hub

def push_to_hub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-push-to-hub", description="Upload a trained DeS4 model with a model "
                                     "card (results, per-class IoU chart, example) to the Hub. The token comes from "
                                     "HF_TOKEN or `hf auth login`.")
    parser.add_argument("--model", required=True, help="model directory written by training (e.g. out/best)")
    parser.add_argument("--repo-id", required=True, help="<user-or-org>/<name>, e.g. my-user/des4-voc-aug")
    parser.add_argument("--results", action="append", default=None, metavar="EVAL_JSON",
                        help="evaluation JSON written by scripts/evaluate.py (repeat for several datasets/splits)")
    parser.add_argument("--example-image", default=None, help="an image to show the model's prediction on")
    parser.add_argument("--private", action="store_true", help="create the repo as private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing; default main)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", default=None, metavar="DIR",
                        help="write the folder that would be uploaded (model files, README.md, images) to DIR and stop")
    return parser


def push_to_hub_main(argv: Sequence[str] | None = None) -> int:
    """``des4-push-to-hub``: upload a trained model with its model card."""
    args = push_to_hub_parser().parse_args(argv)
    try:
        if args.dry_run is not None:
            validate_revision(args.revision)
            staged = stage_model_repo(args.model, args.dry_run, args.repo_id, args.results, args.example_image)
            names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
            print(f"staged {names} in {staged}")
            return 0
        url = push_to_hub(args.model, args.repo_id, results=args.results, private=args.private, revision=args.revision,
                          commit_message=args.commit_message, example_image=args.example_image)
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-push-to-hub: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # huggingface_hub HTTP errors are OSErrors; their text never holds the token
        print(f"des4-push-to-hub: the Hub refused or could not be reached: {error}", file=sys.stderr)
        return 1
    print(f"uploaded to {url}")
    return 0
