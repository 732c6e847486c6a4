#!/usr/bin/env python
"""Segment images with a saved DeS4 model (same as the ``des4-predict`` command).

python scripts/predict.py --model out/ images/*.jpg some_folder/ --out preds/
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from des4_hf.evaluation import default_stride
from des4_hf.hub_names import set_hub_timeout
from des4_hf.image_io import read_image
from des4_hf.inference import (
    PRECISIONS,
    PROBE_SIZE,
    SLIDING_WINDOW_ABOVE,
    SLIDING_WINDOW_CROP,
    color_palette,
    overlay,
    resolve_precision,
    segment_images,
)
from des4_hf.loading import (
    IMAGE_EXTENSIONS,
    UsageError,
    add_hub_and_debug_arguments,
    display_rgb,
    label_map_to_image,
    load_model_and_processor,
    prepare_for_inference,
)
from des4_hf.utils import atomic_path

logger = logging.getLogger("des4_hf.predict")

MIN_CROP = 64  # sliding-window bounds: at most 16 windows per crop area


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
    parser.add_argument("--sliding-window", action="store_true", help="predict every image from overlapping crops")
    parser.add_argument("--sliding-window-above", type=int, default=SLIDING_WINDOW_ABOVE, metavar="PIXELS",
                        help="images whose longest side exceeds this go through the sliding window even without "
                             f"--sliding-window, so memory stays bounded (default {SLIDING_WINDOW_ABOVE})")
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
    add_hub_and_debug_arguments(parser)
    return parser


def _error(message: str) -> None:
    tqdm.write(f"des4-predict: {message}", file=sys.stderr)


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
        crop = SLIDING_WINDOW_CROP if args.crop_size is None else args.crop_size
        if crop < MIN_CROP:
            raise UsageError(f"--crop-size {crop}: use at least {MIN_CROP} pixels (smaller crops see too little "
                             "context, and their number grows with the square of the image size)")
        stride = default_stride(crop) if args.stride is None else args.stride
        if not crop // 4 <= stride <= crop:
            raise UsageError(f"--stride {stride}: must be between a quarter of the crop size ({crop // 4}) and the "
                             f"crop size {crop}")
        sliding_window = (crop, stride)
    elif args.crop_size is not None or args.stride is not None:
        logger.warning("--crop-size/--stride only apply with --sliding-window; predicting whole images (and those "
                       "above --sliding-window-above through %d crops)", SLIDING_WINDOW_CROP)
    if args.sliding_window_above < MIN_CROP:
        raise UsageError(f"--sliding-window-above {args.sliding_window_above}: use at least {MIN_CROP} pixels")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise UsageError(f"--device {args.device}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    return device, sliding_window


def main(argv: Sequence[str] | None = None) -> int:
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
        set_hub_timeout(args.timeout)
        device, sliding_window = _predict_settings(args)
        channels_last = False if args.no_channels_last else None  # None: auto may time both formats
        choice = resolve_precision(args.precision, device, channels_last=channels_last)  # checks fp16 on a CPU
    except (UsageError, ValueError) as error:
        _error(str(error))
        return 2

    files, missing = collect_inputs(args.inputs)
    for item in missing:
        _error(f"{item}: no such file or folder")
    if not files:
        _error("no input images found in " + " ".join(args.inputs))
        return 2
    out = args.out.expanduser().resolve()
    inside = next((path for path in files if path.resolve().parent == out), None)
    if inside is not None:  # <stem>.png would replace an input PNG of the same name
        _error(f"--out {args.out}: holds the input {inside}; predictions written there could overwrite inputs. "
               "Choose another output folder.")
        return 2

    try:
        model, processor = load_model_and_processor(args.model, device)
    except UsageError as error:
        if args.debug:
            raise
        _error(str(error))
        return 2
    if model.config.num_labels > 256:
        _error(f"the model has {model.config.num_labels} classes; palette PNGs hold at most 256")
        return 2
    model, choice = prepare_for_inference(model, args.precision, device, channels_last,
                                          sliding_window[0] if sliding_window else PROBE_SIZE)
    logger.info("%d image(s) on %s, precision %s%s%s", len(files), device, choice.name,
                ", channels_last" if choice.channels_last else "",
                f", sliding window {sliding_window[0]}/{sliding_window[1]}" if sliding_window else "")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _error(f"--out {args.out}: cannot create the folder ({error})")
        return 2
    palette = color_palette(model.config.num_labels)
    failed: list[str] = list(missing)
    stems = output_stems(files)
    with tqdm(total=len(files), unit="img", desc="des4-predict", disable=args.no_progress, file=sys.stderr) as bar:
        for batch in batches(files, stems, args.batch_size, failed, bar):
            window = sliding_window  # a large image goes through the window anyway: its memory stays bounded
            if window is None and max(batch[0].image.size) > args.sliding_window_above:
                window = (SLIDING_WINDOW_CROP, default_stride(SLIDING_WINDOW_CROP))
            try:
                label_maps = segment_images(model, processor, [item.image for item in batch], device,
                                            choice.autocast_dtype, choice.channels_last, window)
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


if __name__ == "__main__":
    sys.exit(main())
