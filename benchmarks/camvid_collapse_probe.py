"""Why did a ceiling-study run score low on dev or val? Probes of one finished run's exported model (issue 30).

    python benchmarks/camvid_collapse_probe.py outputs/camvid_ceiling/dev/1_32/mt-cutmix-4000-seed0 [--json out.json]

It rebuilds the run's data from its train_config.yaml (the run's own split and frame scale) and reports the mIoU of
the exported model (``best/``) on: the run's evaluation split as saved (dev or val, named from the driver's layout
``<runs-dir>/<dev|val>/<fraction>/<run>``); that split with its BatchNorm statistics re-estimated on the labeled
frames; the labeled frames; the unlabeled train frames (their masks exist: CamVid labels every train frame); and, on
the evaluation split, where each class's pixels go and how concentrated the pixel embeddings are (the mean resultant
length of the unit embeddings: 1 when every pixel points one way) and their mean cosine to each prototype.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from des4_hf.data import load_segmentation_dataset
from des4_hf.data.torch_datasets import EvalDataset
from des4_hf.metrics import confusion_matrix, scores_from_confusion
from des4_hf.modeling_des4 import Des4ForSemanticSegmentation
from des4_hf.training.config import TrainConfig
from des4_hf.training.trainer import Trainer


def scores(model: nn.Module, dataset: EvalDataset, num_classes: int) -> tuple[float, torch.Tensor]:
    """(mIoU in %, the confusion matrix, rows = true class) over whole frames."""
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            logits = model(pixel_values=item["pixel_values"][None]).logits
            total += confusion_matrix(logits.argmax(1)[0], item["labels"], num_classes)
    return round(100 * scores_from_confusion(total)["mean_iou"], 2), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (train_config.yaml, best/)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig.from_yaml(str(args.run / "train_config.yaml"),
                                   {"output_dir": str(args.run / "probe"), "resume": None})
    trainer = Trainer(config)
    trainer.prepare_data()
    trainer.build()
    names, classes = trainer.class_names, trainer.num_classes
    model = Des4ForSemanticSegmentation.from_pretrained(str(args.run / "best")).eval()
    mean, std = trainer.image_processor.image_mean, trainer.image_processor.image_std
    frames = {"frame_scale": config.frame_scale, "cache_frames": True}
    train = load_segmentation_dataset(config.dataset, root=config.data_root)["train"]
    labeled_ids = set(trainer.labeled_hf["id"])
    unlabeled = train.select([i for i, id_ in enumerate(train["id"]) if id_ not in labeled_ids])
    dev, labeled = (EvalDataset(split, mean, std, num_classes=classes, **frames)
                    for split in (trainer.val_hf, trainer.labeled_hf))

    split = args.run.resolve().parent.parent.name  # the driver's layout: <runs-dir>/<dev|val>/<fraction>/<run>
    split = split if split in ("dev", "val") else "evaluation split"
    figures: dict[str, object] = {}
    figures[split], confusion = scores(model, dev, classes)
    recalibrated = copy.deepcopy(model)
    for module in recalibrated.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the frames below
    recalibrated.train()
    with torch.no_grad():
        for index in range(len(labeled)):
            recalibrated(pixel_values=labeled[index]["pixel_values"][None])
    figures[f"{split}, BatchNorm re-estimated on the labeled frames"] = scores(recalibrated.eval(), dev, classes)[0]
    figures["labeled frames"] = scores(model, labeled, classes)[0]
    figures["unlabeled train frames"] = scores(model, EvalDataset(unlabeled, mean, std, num_classes=classes,
                                                                  **frames), classes)[0]
    shares = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    figures[f"{split}: where each class's pixels go (%)"] = {
        names[row]: {names[col]: round(100 * float(shares[row, col]), 1) for col in range(classes)
                     if shares[row, col] >= 0.05} for row in range(classes)}
    prototypes = F.normalize(model.prototype_head.prototypes.float(), dim=1)
    with torch.no_grad():
        units = torch.cat([F.normalize(model.embed(dev[i]["pixel_values"][None]), dim=1).flatten(2)[0].t()
                           for i in range(len(dev))])
    figures[f"{split}: mean resultant length of the pixel embeddings"] = round(float(units.mean(0).norm()), 3)
    figures[f"{split}: mean cosine to each prototype"] = dict(zip(names, (units @ prototypes.t()).mean(0).round(
        decimals=2).tolist()))
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
