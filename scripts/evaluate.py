#!/usr/bin/env python
"""Evaluate a saved DeS4 model (same as the ``des4-evaluate`` command).

    accelerate launch scripts/evaluate.py --model out/best --dataset cityscapes --root /data/cityscapes
    python scripts/evaluate.py --model out/best --dataset camvid --flip --out eval/camvid
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from des4_hf.evaluation import (
    CITYSCAPES_SLIDING_WINDOW,
    check_model_classes,
    default_stride,
    evaluate_segmentation,
    protocol_window,
)
from des4_hf.hub_names import set_hub_timeout
from des4_hf.inference import (
    PRECISIONS,
)
from des4_hf.loading import UsageError, add_hub_and_debug_arguments

_LOCAL_KINDS_NEEDING_ROOT = ("voc", "cityscapes")


# -- the command ------------------------------------------------------------------------------------------------
def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="des4-evaluate",
        description="Evaluate a DeS4 model (mIoU from a dataset-level confusion matrix; runs under accelerate "
        "launch for several processes/GPUs).",
    )
    parser.add_argument("--model", required=True, help="saved model directory or Hub repo id")
    parser.add_argument(
        "--dataset", required=True,
        help="voc | cityscapes | camvid | folder | hub | a Hub preset by its Hub id (jxie/pascal-voc-2012, "
        "shijli/voc2012, nateraw/pascal-voc-2012, Chris1/cityscapes) | any Hub dataset id or local save_to_disk/parquet folder",
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
                        help="auto (fp32 on the CPU, bf16 or fp16 on CUDA) | fp32 | bf16 | fp16 (CUDA only)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (same-size images only)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--out", help="folder for eval.json, eval.md, per_class_iou.png "
                        "(default: eval/<dataset>-<split>)")
    parser.add_argument("--no-check-labels", dest="check_labels", action="store_false",
                        help="skip the up-front scan of every mask's values")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_hub_and_debug_arguments(parser)
    return parser


def _protocol_settings(args: argparse.Namespace) -> tuple[tuple[int, int] | None, bool, tuple[float, ...]]:
    protocol = protocol_window(args.dataset)
    use_window = args.sliding_window
    if use_window is None:
        use_window = protocol is not None or args.crop_size is not None or args.stride is not None
    window = None
    if use_window:
        default_crop = (protocol or CITYSCAPES_SLIDING_WINDOW)[0]
        crop = args.crop_size if args.crop_size is not None else default_crop
        stride = args.stride if args.stride is not None else default_stride(crop)
        if crop < 1 or not 1 <= stride <= crop:
            raise UsageError(f"--crop-size {crop} / --stride {stride}: need crop >= 1 and 1 <= stride <= crop.")
        window = (crop, stride)
    elif args.crop_size is not None or args.stride is not None:
        raise UsageError("--crop-size/--stride need sliding-window inference: drop --no-sliding-window.")
    scales = tuple(args.scales) if args.scales else (1.0,)
    if any(not s > 0 for s in scales):
        raise UsageError(f"--scales {list(scales)}: every scale must be > 0.")
    return window, bool(args.flip), scales


def check_dataset_labels(hf_dataset: Any, num_classes: int, ignore_index: int, indices: Sequence[int],
                         num_threads: int = 4) -> None:
    """Raise ``LabelRangeError`` naming the first image (of ``indices``) whose mask holds values outside
    ``[0, num_classes)`` ∪ ``{ignore_index}``: masks only, so a wrong dataset fails in seconds, not after an hour."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from des4_hf.data.datasets import decode_mask, iter_label_records
    from des4_hf.metrics import check_label_range

    def check(row: tuple[str, Any]) -> None:
        id_, record = row
        mask = torch.from_numpy(decode_mask(record, f"mask of image {id_!r}"))
        check_label_range(mask, num_classes, ignore_index, where=f"image {id_!r}")

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        list(pool.map(check, iter_label_records(hf_dataset.select(indices))))


def load_eval_split(args: argparse.Namespace) -> Any:
    """The ``datasets.Dataset`` of ``--split``; raises :class:`UsageError` with the fix for a bad root/split."""
    from des4_hf.data import DATASET_KINDS, HUB_PRESETS, load_segmentation_dataset

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
    elif kind not in DATASET_KINDS:
        if "/" in kind or Path(kind).exists():
            kwargs = {"name": kind}
            kind = "hub"
        else:
            raise UsageError(f"--dataset {kind!r} is unknown. Allowed: {list(DATASET_KINDS)}, a Hub dataset id "
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
    from des4_hf.configuration_des4 import Des4Config
    from des4_hf.data import DataError, get_class_names

    window, flip, scales = _protocol_settings(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1.")

    # 1. data (paths only), 2. the model's config: both cheap. Short names → <namespace>/<name>.
    from des4_hf.hub_names import hub_model_problem, resolve_pretrained_name
    from des4_hf.loading import load_model_and_processor, model_folder_problem

    args.model = resolve_pretrained_name(args.model)
    split = load_eval_split(args)
    local = Path(args.model).expanduser()
    problem = model_folder_problem(local) if local.is_dir() else hub_model_problem(args.model)
    if problem is not None:  # asked once, within --timeout: the loaders would retry every file
        raise UsageError(f"--model {args.model}: {problem}")
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
    model_names = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    differ = [(ours, theirs) for ours, theirs in zip(model_names, class_names) if ours != theirs]
    if differ:  # same count, other names: probably another dataset's model; scores are per index all the same
        accelerator.print(f"warning: the model's classes differ from the dataset's at {len(differ)} of {num_classes} "
                          f"indices (model → dataset: {', '.join(f'{a} → {b}' for a, b in differ[:4])}"
                          f"{', ...' if len(differ) > 4 else ''}); the report uses the dataset's names.")
    if args.check_labels:
        shard = list(range(accelerator.process_index, len(split), accelerator.num_processes))
        check_dataset_labels(split, num_classes, ignore_index, indices=shard)

    # 4. heavy work: the model as des4-predict and the web demo load it (refused when not trained or incomplete).
    model, processor = load_model_and_processor(args.model, accelerator.device)
    from des4_hf.data import EvalDataset

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
        print(result.format_table())
        out = Path(args.out) if args.out else Path("eval") / f"{_slug(args.dataset)}-{_slug(args.split)}"
        paths = result.write_report(out)
        print("wrote " + ", ".join(str(path) for path in paths.values()))
    accelerator.wait_for_everyone()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-evaluate``: mIoU of a saved model on a dataset's split, on the papers' protocols."""
    args = evaluate_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from accelerate import Accelerator

    from des4_hf.data import DataError
    from des4_hf.metrics import LabelRangeError

    accelerator = Accelerator()
    try:
        set_hub_timeout(args.timeout)
        return _run_evaluation(args, accelerator)
    except (UsageError, DataError, LabelRangeError, ValueError, OSError) as error:  # OSError: e.g. an unwritable --out
        if args.debug:
            raise
        print(f"des4-evaluate: error: {error} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
