"""The benchmarks' classes: VOC, Cityscapes and CamVid names, Cityscapes' evaluated label ids, the VOC palette."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # the ignore index of every mask

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian",
    "bicyclist",
)
#: Cityscapes ``labelIds`` of the 19 evaluated classes, in train-id order (cityscapesScripts labels.py).
CITYSCAPES_EVAL_LABEL_IDS: tuple[int, ...] = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)


def cityscapes_label_id_to_train_id() -> np.ndarray:
    """256-entry uint8 lookup table: Cityscapes ``labelIds`` → 19 train ids, 255 elsewhere."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_EVAL_LABEL_IDS):
        lut[label_id] = train_id
    return lut


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ``(num_colors, 3)`` uint8 (index 255 = (224, 224, 192), void)."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette
