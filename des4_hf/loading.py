"""A saved model ready to predict, for des4-predict, des4-evaluate and the web demo: a folder or Hub id loaded with
one clear refusal for what is not a usable model (a training checkpoint, no config, pickled weights, untrained
prototypes, a Hub that cannot be reached), its precision chosen and applied, and masks as palette PNGs."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.datasets import IMAGE_EXTENSIONS as DATASET_IMAGE_EXTENSIONS
from .image_io import rgb_uint8
from .inference import PROBE_SIZE, PrecisionChoice, color_palette, inference_probe_sample, resolve_precision

logger = logging.getLogger(__name__)

# The dataset loaders' image types, plus the ones PIL reads that are rare in datasets.
IMAGE_EXTENSIONS = (*DATASET_IMAGE_EXTENSIONS, ".gif", ".ppm", ".pgm", ".pnm")
PREPROCESSOR_CONFIG = "preprocessor_config.json"

def add_hub_and_debug_arguments(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` (the Hub's connect and read timeout, set by :func:`~des4_hf.hub_names.set_hub_timeout`) and
    ``--debug`` (a traceback instead of the one-line error): the options every application takes."""
    from .hub_names import DEFAULT_HUB_TIMEOUT

    parser.add_argument("--timeout", type=float, default=DEFAULT_HUB_TIMEOUT,
                        help=f"seconds to connect to the Hub and for each read (default {DEFAULT_HUB_TIMEOUT:g})")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


class UsageError(Exception):
    """A bad argument or input of an application (a model, a file): reported as one line, exit status 2."""


def label_map_to_image(label_map: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """A palette ("P" mode) PNG image whose pixel values are the class indices."""
    if label_map.max(initial=0) > 255 or label_map.min(initial=0) < 0:
        raise ValueError("label maps for palette PNGs must hold values in [0, 255]")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette((palette if palette is not None else color_palette()).reshape(-1).tolist())
    return image


def uncertainty_image(entropy: np.ndarray, num_classes: int) -> Image.Image:
    """An RGB picture of a pixel-entropy map (Eq. 9): dark where the model is sure, bright where it is not, on one
    scale for every image (0 to log C, the most a C-class softmax can have)."""
    import matplotlib

    scaled = np.clip(entropy / max(np.log(num_classes), 1e-6), 0.0, 1.0)
    return Image.fromarray((matplotlib.colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8))


def display_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for the overlay, converted the way the model sees the image (16-bit scaled, not clipped)."""
    return image if image.mode == "RGB" else Image.fromarray(rgb_uint8(image))


# -- model folders ---------------------------------------------------------------------------------------------
CHECKPOINT_STATE = "trainer_state.json"  # what the trainer writes last into each checkpoint folder


def model_folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` is not a saved model that ``from_pretrained`` can load (a training checkpoint, no
    ``config.json``, no weights), with the fix; None when it looks like one."""
    folder = Path(folder)
    if (folder / CHECKPOINT_STATE).is_file():
        return (f"{folder} is a training checkpoint (optimizer and trainer state), not a saved model: give the run's "
                "best/ or last/ folder, which hold the exported teacher")
    if not (folder / "config.json").is_file():
        return (f"{folder} holds no config.json, so it is not a folder written by save_pretrained (or by training: "
                "its best/ and last/): give such a folder, or a Hub id")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin", "pytorch_model.bin.index.json")):
        return f"{folder} holds no weights (model.safetensors): re-export the model with save_pretrained"
    return None


def load_error_line(error: BaseException) -> str:
    """The first line of a loading error, without torch's advice to load with ``weights_only=False`` (which runs any
    code a pickle holds): a weights file that is not plain tensors is refused as such."""
    text = str(error)
    if "weights_only" in text:
        return ("its weights file is not plain tensors (torch refused to unpickle it safely); re-export the model "
                "with save_pretrained, which writes model.safetensors")
    return (text.strip().splitlines() or [type(error).__name__])[0]


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
    from .hub_names import hub_error_line, hub_model_problem, resolve_pretrained_name

    source = str(path) if path.is_dir() else resolve_pretrained_name(name)
    problem = model_folder_problem(path) if path.is_dir() else hub_model_problem(source)
    if problem is not None:  # asked once, within --timeout: the loaders would retry every file
        raise UsageError(f"--model {name}: {problem}")
    try:
        model, info = Des4ForSemanticSegmentation.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError, pickle.UnpicklingError) as error:  # not found, bad id, bad or pickled weights
        hub = None if path.is_dir() else hub_error_line(name, error)
        if hub is not None:  # "not found", "could not be reached": not transformers' advice about the connection
            raise UsageError(f"--model {name}: {hub}") from error
        where = "directory" if path.is_dir() else "directory or Hub model"
        raise UsageError(f"--model {name}: cannot load a DeS4 {where}: {load_error_line(error)}") from error
    missing = sorted(info["missing_keys"])
    if missing:  # initialised afresh by the loader: its predictions would be arbitrary
        raise UsageError(f"--model {name}: the checkpoint lacks {len(missing)} tensors (e.g. {missing[:3]}); "
                         "re-export it with save_pretrained from the trained model")
    try:  # a model loaded to fine-tune to new classes, not trained yet: its new classes would be arbitrary
        model.eval()._check_prototypes()
    except ValueError as error:
        raise UsageError(f"--model {name}: {error}") from error
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


def prepare_for_inference(model: Any, precision: str, device: torch.device, channels_last: bool | None,
                          probe_size: int = PROBE_SIZE) -> tuple[Any, PrecisionChoice]:
    """The loaded ``model`` in the memory format of its precision choice, and that choice: ``auto`` is timed on
    this network and machine (cached) on one ``probe_size``² image (the sliding window's crop, or 512²)."""
    if precision == "auto":
        sample = inference_probe_sample(probe_size).to(device)
        choice = resolve_precision("auto", device, channels_last=channels_last, model=model, sample=sample)
    else:
        choice = resolve_precision(precision, device, channels_last=channels_last)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, choice
