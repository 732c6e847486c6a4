"""Data: segmentation datasets as ``datasets.DatasetDict`` (``load_segmentation_dataset``), semi-supervised splits
(``SemiSupervisedSplit``) and augmentation; ``des4_hf/data/README.md`` describes the layouts and protocols."""

from .augment import AugmentConfig
from .class_counts import check_mask_values, class_pixel_counts
from .datasets import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    VOC_CLASSES,
    DataError,
    cityscapes_label_id_to_train_id,
    get_class_names,
    get_dataset_metadata,
    labels_to_indices,
    load_camvid,
    load_cityscapes,
    load_folder,
    load_voc,
    set_dataset_metadata,
    voc_palette,
)
from .sources import DATASET_KINDS, HUB_PRESETS, HubPreset, load_hub, load_segmentation_dataset
from .splits import STANDARD_SPLITS, SemiSupervisedSplit, list_standard_splits, split_lists_root
from .torch_datasets import EvalDataset, LabeledTrainDataset, UnlabeledTrainDataset

__all__ = ["AugmentConfig", "check_mask_values", "class_pixel_counts", "CAMVID_CLASSES", "CITYSCAPES_CLASSES",
           "HUB_PRESETS", "IGNORE_INDEX", "VOC_CLASSES", "DataError", "HubPreset", "DATASET_KINDS",
           "cityscapes_label_id_to_train_id", "get_class_names", "get_dataset_metadata",
           "labels_to_indices", "load_camvid", "load_cityscapes", "load_folder", "load_hub",
           "load_segmentation_dataset", "load_voc", "set_dataset_metadata", "voc_palette", "STANDARD_SPLITS",
           "SemiSupervisedSplit", "list_standard_splits", "split_lists_root", "EvalDataset", "LabeledTrainDataset",
           "UnlabeledTrainDataset"]
