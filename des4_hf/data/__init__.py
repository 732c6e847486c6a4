"""Data: segmentation datasets as ``datasets.DatasetDict``, semi-supervised splits, augmentation.

```python
from des4_hf.data import load_segmentation_dataset, SemiSupervisedSplit
ds = load_segmentation_dataset("camvid")                      # root= or $DES4_CAMVID_ROOT
split = SemiSupervisedSplit.random(ds["train"], labeled=1 / 8, seed=0)
labeled, unlabeled = split.apply(ds)
```
See ``des4_hf/data/README.md`` for the layouts, the protocols and the measured throughput.
"""

from .augment import AugmentConfig
from .class_counts import check_mask_values, class_pixel_counts
from .datasets import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    HUB_PRESETS,
    IGNORE_INDEX,
    VOC_CLASSES,
    DataError,
    HubPreset,
    available_kinds,
    cityscapes_label_id_to_train_id,
    default_camvid_root,
    get_class_names,
    get_dataset_metadata,
    labels_to_indices,
    load_camvid,
    load_cityscapes,
    load_folder,
    load_hub,
    load_segmentation_dataset,
    load_voc,
    set_dataset_metadata,
    voc_palette,
)
from .splits import STANDARD_SPLITS, SemiSupervisedSplit, list_standard_splits, split_lists_root
from .torch_datasets import EvalDataset, LabeledTrainDataset, UnlabeledTrainDataset, eval_collate

__all__ = ["AugmentConfig", "check_mask_values", "class_pixel_counts", "CAMVID_CLASSES", "CITYSCAPES_CLASSES",
           "HUB_PRESETS", "IGNORE_INDEX", "VOC_CLASSES", "DataError", "HubPreset", "available_kinds",
           "cityscapes_label_id_to_train_id", "default_camvid_root", "get_class_names", "get_dataset_metadata",
           "labels_to_indices", "load_camvid", "load_cityscapes", "load_folder", "load_hub",
           "load_segmentation_dataset", "load_voc", "set_dataset_metadata", "voc_palette", "STANDARD_SPLITS",
           "SemiSupervisedSplit", "list_standard_splits", "split_lists_root", "EvalDataset", "LabeledTrainDataset",
           "UnlabeledTrainDataset", "eval_collate"]
