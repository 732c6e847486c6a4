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
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from des4_hf.data import SemiSupervisedSplit
from des4_hf.data.datasets import read_id_list
from des4_hf.hub_names import set_hub_timeout
from des4_hf.image_io import read_image
from des4_hf.inference import PRECISIONS
from des4_hf.label_next import rank_images, suggestion_tile
from des4_hf.loading import (
    IMAGE_EXTENSIONS,
    UsageError,
    add_hub_and_debug_arguments,
    load_model_and_processor,
    prepare_for_inference,
)
from des4_hf.utils import atomic_path, atomic_write


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


def contact_sheet(tiles: list[Image.Image], path: Path) -> None:
    """The suggestions' tiles (each beside its uncertainty map), two a row."""
    width, height = 2 * tiles[0].width, max(tile.height for tile in tiles)
    sheet = Image.new("RGB", (width, height * ((len(tiles) + 1) // 2)), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % 2) * tiles[0].width, (index // 2) * height))
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
    ids = list(pool)

    def images() -> Iterator[Image.Image]:
        for id_ in tqdm(ids, desc="des4-suggest", unit="img", disable=args.no_progress, file=sys.stderr):
            try:
                yield read_image(pool[id_])
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise UsageError(f"{pool[id_]}: not a readable image ({type(error).__name__}); remove it from "
                                 "--images") from error

    ranking = rank_images(model, processor, images(), args.budget, device, choice.autocast_dtype,
                          balanced=args.balanced, diversity=args.diversity)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "ranking.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "image", "score", "unsure_classes", "suggested"])
        for rank, index in enumerate(ranking.order, start=1):
            writer.writerow([rank, ids[index], f"{float(ranking.scores[index]):.6f}", ";".join(ranking.unsure[index]),
                             "yes" if index in ranking.picks else "no"])
    chosen = [ids[index] for index in ranking.picks]
    atomic_write(args.out / "labeled-next.txt", "".join(f"{id_}\n" for id_ in [*labeled, *chosen]))
    SemiSupervisedSplit([*labeled, *chosen], [i for i in ids if i not in set(chosen)],
                        name=f"suggested-{len(labeled) + len(chosen)}").save(args.out / "split")
    tiles = [suggestion_tile(model, processor, read_image(pool[ids[index]]),  # a second pass for the picks alone
                             f"{rank}. {ids[index]}  score {float(ranking.scores[index]):.3f}", device,
                             choice.autocast_dtype) for rank, index in enumerate(ranking.picks, start=1)]
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
