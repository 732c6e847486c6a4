"""Reading an image file the one way training, evaluation, prediction and the web demo all read it.

:func:`read_image` decodes fully with PIL and applies the EXIF orientation, so a phone photo is used upright, as
viewers show it and as its mask is drawn; :func:`to_rgb_array` turns any decoded image (8/16-bit, gray, RGBA) into
RGB in [0, 1]; :func:`rgb_uint8` gives the 8-bit RGB pixels the training datasets crop. The same file therefore
gives the same pixels everywhere.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor

EXIF_ORIENTATION = 0x0112


def read_image(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) fully, so that an unreadable file fails here, with its EXIF
    orientation applied."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as handle:
        handle.load()
        image = ImageOps.exif_transpose(handle)
        if image is handle:
            image = handle.copy()
    return image


def exif_orientation(source: str | os.PathLike[str] | bytes) -> int:
    """The EXIF orientation tag of a file (1 = as stored), read from its header."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as handle:
        return int(handle.getexif().get(EXIF_ORIENTATION, 1))


def rgb_uint8(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image: 8-bit RGB as it is, other modes through :func:`to_rgb_array`
    (16-bit scaled, not clipped)."""
    if image.mode == "RGB":
        return np.asarray(image)
    return np.round(to_rgb_array(image).clip(0.0, 1.0) * 255.0).astype(np.uint8)


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_rgb_array(image: Any, channels_first: bool | None = None, convert_rgb: bool = True) -> np.ndarray:
    """Any common image input → float32 (H, W, 3) RGB in [0, 1]: 8-bit / 255, 16-bit / 65535, floats as they are;
    gray repeated to three channels, alpha dropped (``convert_rgb=False``: anything but 3 channels is an error).
    Arrays and tensors are (C, H, W) or (H, W, C) as ``channels_first`` says, guessed from the shape when None."""
    if not convert_rgb:
        channels = len(image.getbands()) if isinstance(image, Image.Image) else (
            1 if np.ndim(image) == 2 else np.shape(image)[0 if channels_first or (
                channels_first is None and np.shape(image)[0] in (1, 3, 4) and np.shape(image)[-1] not in (1, 3, 4))
                else -1])
        if channels != 3:
            raise ValueError(f"do_convert_rgb=False but the image has {channels} channel(s): pass 3-channel RGB "
                             "images, or do_convert_rgb=True to repeat gray and drop alpha.")
    if isinstance(image, Image.Image):
        if image.mode in _SIXTEEN_BIT_MODES:
            array: np.ndarray = np.asarray(image).astype(np.float32) / 65535.0
        elif image.mode == "F":
            array = np.asarray(image, dtype=np.float32)
        else:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    elif isinstance(image, (Tensor, np.ndarray)):
        array = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
        if channels_first is None:
            channels_first = array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4)
        if array.ndim == 3 and channels_first:
            array = array.transpose(1, 2, 0)  # CHW → HWC
        array = _scale_to_unit(array)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}: pass a PIL image, a NumPy array (H, W[, C]) "
                        "or a torch tensor ([C,] H, W).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"cannot read an image of shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4).")
    array = np.repeat(array[..., :1], 3, axis=-1) if array.shape[-1] < 3 else array[..., :3]  # gray(+alpha), RGBA
    return np.ascontiguousarray(array, dtype=np.float32)


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return array.astype(np.float32) / 65535.0  # also 16-bit content in wider integers (PIL mode "I")
    return array.astype(np.float32) / (255.0 if np.issubdtype(array.dtype, np.integer) else 1.0)
