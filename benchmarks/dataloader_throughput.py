#!/usr/bin/env python
"""Images/s of the labeled + unlabeled CamVid training loaders iterated side by side (data loading alone).

    python benchmarks/dataloader_throughput.py --root ../shared/data/camvid --num-workers 2
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from des4_hf.data import LabeledTrainDataset, UnlabeledTrainDataset, load_camvid


def measure_throughput(
    root: str | None = None,
    crop_size: int = 513,
    batch_size: int = 8,
    num_workers: int = 2,
    num_steps: int = 20,
    warmup_steps: int = 3,
) -> dict[str, float]:
    """Images/s of a labeled + an unlabeled CamVid DataLoader iterated side by side (one "step"
    = one labeled batch + one unlabeled batch), after ``warmup_steps`` steps."""
    ds = load_camvid(root)["train"]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    labeled = LabeledTrainDataset(ds, crop_size, mean, std, seed=0)
    unlabeled = UnlabeledTrainDataset(ds, crop_size, mean, std, seed=0)
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "shuffle": True,
        "num_workers": num_workers,
        "drop_last": True,
        "persistent_workers": num_workers > 0,
    }
    if num_workers > 0:
        kwargs["prefetch_factor"] = 2
    loaders = [torch.utils.data.DataLoader(d, **kwargs) for d in (labeled, unlabeled)]
    iterators = [iter(loader) for loader in loaders]
    images = 0
    start = time.perf_counter()
    for step in range(warmup_steps + num_steps):
        if step == warmup_steps:
            images, start = 0, time.perf_counter()
        for i, it in enumerate(iterators):
            try:
                next(it)
            except StopIteration:
                iterators[i] = iter(loaders[i])
                next(iterators[i])
            images += batch_size
    seconds = time.perf_counter() - start
    return {
        "images_per_s": images / seconds,
        "steps_per_s": num_steps / seconds,
        "seconds": seconds,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "crop_size": crop_size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure labeled+unlabeled DataLoader throughput on CamVid.")
    parser.add_argument("--root", default=None)
    parser.add_argument("--crop-size", type=int, default=513)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure_throughput(args.root, args.crop_size, args.batch_size, args.num_workers, args.steps)
    print(", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
