#!/usr/bin/env python
"""``des4-suggest``: which unlabeled images to label next, ranked by what a trained DeS4 model does not yet know.

    des4-suggest --model out/best --images frames/ --budget 20 --out suggest/ [--labeled labeled.txt]

One teacher pass per image (des4_hf.method.acquisition): pixel entropy weighted toward the rare classes (by the class
ratio R of the pool's predictions), then a pick spread over pooled embeddings so that near-duplicate frames are not all
chosen (``--no-diversity``: the top scores). Writes ``ranking.csv`` (rank, image, score, the classes it is unsure
about, suggested), ``labeled-next.txt`` and ``split/`` (the labeled ids plus the suggestions; ``des4-train --split
suggest/split``), and ``suggested.png``, a contact sheet of the suggestions beside their uncertainty maps.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from des4_hf.data import SemiSupervisedSplit
from des4_hf.data.datasets import read_id_list
from des4_hf.hub_names import set_hub_timeout
from des4_hf.image_io import read_image
from des4_hf.inference import PRECISIONS, autocast
from des4_hf.loading import (
    IMAGE_EXTENSIONS,
    UsageError,
    add_hub_and_debug_arguments,
    display_rgb,
    load_model_and_processor,
    prepare_for_inference,
    uncertainty_image,
)
from des4_hf.method.acquisition import (
    ImageStatistics,
    class_weights,
    image_statistics,
    select,
    uncertainty_scores,
    unsure_classes,
)
from des4_hf.method.losses import entropy
from des4_hf.utils import atomic_path, atomic_write

THUMB = 240  # width of a contact-sheet tile


def suggest_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-suggest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained DeS4 model folder or Hub id")
    parser.add_argument("--images", required=True, type=Path, help="folder of the unlabeled pool (searched recursively)")
    parser.add_argument("--budget", required=True, type=int, help="how many images to suggest")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; its files are replaced)")
    parser.add_argument("--labeled", type=Path, help="ids already labeled (one per line): left out of the pool, "
                        "kept in labeled-next.txt")
    parser.add_argument("--no-diversity", dest="diversity", action="store_false",
                        help="take the highest scores, without spreading the picks over the embeddings")
    parser.add_argument("--no-class-balance", dest="balanced", action="store_false",
                        help="plain pixel entropy, not weighted toward the rare classes")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_hub_and_debug_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def pool_images(folder: Path, labeled: set[str]) -> dict[str, Path]:
    """``id → file`` of the images under ``folder`` (id: relative path without extension, as the folder datasets
    name them), less the ``labeled`` ids."""
    if not folder.is_dir():
        raise UsageError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    pool = {path.relative_to(folder).with_suffix("").as_posix(): path for path in files}
    return {id_: path for id_, path in pool.items() if id_ not in labeled}


def forward(model: torch.nn.Module, processor: object, image: Image.Image, device: torch.device,
            dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits (1, C, H, W) and pixel embeddings (1, d, h, w) of one image."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
    with torch.no_grad(), autocast(device, dtype):
        output = model(pixel_values, output_hidden_states=True)
    return output.logits.float(), output.hidden_states[0].float()


def contact_sheet(tiles: list[tuple[str, float, Image.Image, Image.Image]], path: Path) -> None:
    """Each suggestion beside its uncertainty map (brighter = less sure), two pairs a row, captioned."""
    pairs = []
    for rank, (id_, score, image, heat) in enumerate(tiles, start=1):
        height = round(image.height * THUMB / image.width)
        photo, heat = display_rgb(image).resize((THUMB, height)), heat.resize((THUMB, height))
        pair = Image.new("RGB", (2 * THUMB, height + 16), "white")
        pair.paste(photo, (0, 16))
        pair.paste(heat, (THUMB, 16))
        ImageDraw.Draw(pair).text((4, 2), f"{rank}. {id_}  score {score:.3f}", fill="black")
        pairs.append(pair)
    width, height = 2 * pairs[0].width, max(p.height for p in pairs)
    sheet = Image.new("RGB", (width, height * ((len(pairs) + 1) // 2)), "white")
    for index, pair in enumerate(pairs):
        sheet.paste(pair, ((index % 2) * pairs[0].width, (index // 2) * height))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def run(args: argparse.Namespace) -> Path:
    set_hub_timeout(args.timeout)
    labeled = read_id_list(args.labeled) if args.labeled else []
    pool = pool_images(args.images, set(labeled))
    if not pool:
        raise UsageError(f"--images {args.images}: no images to rank (none found{', or all labeled' if labeled else ''})")
    if not 0 < args.budget <= len(pool):
        raise UsageError(f"--budget {args.budget}: between 1 and the {len(pool)} images of the pool")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_model_and_processor(args.model, device)  # refuses untrained prototypes in one line
    model, choice = prepare_for_inference(model, args.precision, device, None)
    ids, parts = list(pool), []
    for id_ in tqdm(ids, desc="des4-suggest", unit="img", disable=args.no_progress, file=sys.stderr):
        try:
            image = read_image(pool[id_])
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise UsageError(f"{pool[id_]}: not a readable image ({type(error).__name__}); remove it from --images") \
                from error
        parts.append(image_statistics(*forward(model, processor, image, device, choice.autocast_dtype)))
    statistics = ImageStatistics(*(torch.cat([getattr(p, name) for p in parts]) for name in
                                   ("entropy_by_class", "pixels_by_class", "embedding")))
    weights = class_weights(statistics.pixels_by_class, args.balanced)
    scores = uncertainty_scores(statistics, weights)
    picks = select(scores, statistics.embedding if args.diversity else None, args.budget)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    unsure, order = unsure_classes(statistics, weights), scores.argsort(descending=True).tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "ranking.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "image", "score", "unsure_classes", "suggested"])
        for rank, index in enumerate(order, start=1):
            writer.writerow([rank, ids[index], f"{float(scores[index]):.6f}", ";".join(names[c] for c in unsure[index]),
                             "yes" if index in picks else "no"])
    chosen = [ids[index] for index in picks]
    atomic_write(args.out / "labeled-next.txt", "".join(f"{id_}\n" for id_ in [*labeled, *chosen]))
    SemiSupervisedSplit([*labeled, *chosen], [i for i in ids if i not in set(chosen)],
                        name=f"suggested-{len(labeled) + len(chosen)}").save(args.out / "split")
    tiles = []
    for index in picks:  # a second pass for the picks alone: their uncertainty maps
        image = read_image(pool[ids[index]])
        logits, _ = forward(model, processor, image, device, choice.autocast_dtype)
        tiles.append((ids[index], float(scores[index]), image,
                      uncertainty_image(entropy(logits.softmax(1))[0].cpu().numpy(), logits.shape[1])))
    contact_sheet(tiles, args.out / "suggested.png")
    return args.out


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 2: bad arguments (no images, a budget larger than the pool, an untrained or unloadable model)."""
    args = suggest_parser().parse_args(argv)
    try:
        out = run(args)
    except (UsageError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"des4-suggest: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'ranking.csv'}, {out / 'labeled-next.txt'}, {out / 'split'}/ and {out / 'suggested.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
