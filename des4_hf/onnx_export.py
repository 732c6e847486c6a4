"""Export a DeS4 segmenter to ONNX with dynamic batch, height and width, then check it with onnxruntime.

The graph maps ``pixel_values`` (batch, 3, height, width), normalised as the image processor does, to
``logits`` (batch, num_labels, height, width), like ``Des4ForSemanticSegmentation.forward``. It is exported
with ``torch.onnx.export(..., dynamo=True)`` and ``Dim.DYNAMIC`` sizes, traced at an odd size and a batch of
2: traced at a multiple of the output stride, the encoder's padding branch would be specialised away and other
sizes would silently skip it (and a batch of 1 becomes a constant). ``verify=True`` runs the graph with
onnxruntime at another size and compares it with PyTorch. The legacy TorchScript exporter is not used: it
bakes the padding computed at the export size into the graph.

    from des4_hf.onnx_export import export_onnx
    export_onnx("out/best", "model.onnx", height=512, width=512)   # or: des4-export-onnx --model out/best --out ...
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's operator library targets opset 18
MIN_SIZE = 32
_TWO_GIB = 2 * 1024**3
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxCheck:
    """How the ONNX graph compares with PyTorch on one random input."""

    shape: tuple[int, int, int, int]
    max_abs_diff: float
    argmax_agreement: float

    def ok(self, atol: float, min_agreement: float) -> bool:
        return self.max_abs_diff <= atol and self.argmax_agreement >= min_agreement


class _LogitsOnly(nn.Module):
    """``pixel_values → logits``: the exported signature (no labels, no ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values, return_dict=False)[0]


def _load_model(model_dir_or_model: Any) -> tuple[nn.Module, Path | None]:
    from .modeling_des4 import Des4ForSemanticSegmentation

    if isinstance(model_dir_or_model, nn.Module):
        config = getattr(model_dir_or_model, "config", None)
        if getattr(config, "model_type", None) != "des4":
            raise TypeError(
                "expected a Des4ForSemanticSegmentation (or its directory), "
                f"got {type(model_dir_or_model).__name__}"
            )
        return model_dir_or_model, None
    if not isinstance(model_dir_or_model, (str, os.PathLike)):
        raise TypeError(
            "model_dir_or_model must be a Des4ForSemanticSegmentation, a model directory or a Hub id"
        )
    from .hub_names import explain_hub_errors, resolve_pretrained_name

    name = resolve_pretrained_name(model_dir_or_model)
    with explain_hub_errors(name):
        model = Des4ForSemanticSegmentation.from_pretrained(name)
    return model, Path(name) if Path(name).is_dir() else None


def _tracing_size(size: int) -> int:
    """An odd size (never a multiple of the output stride nor of 4) so the padding stays in the graph."""
    return size + 1 if size % 2 == 0 else size


def _check_arguments(opset: int, height: int, width: int) -> None:
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset={opset!r}: the exporter needs opset >= {MIN_OPSET} (default {DEFAULT_OPSET})."
        )
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < MIN_SIZE:
            raise ValueError(
                f"{name}={value!r}: give the typical input size in pixels, at least {MIN_SIZE} (e.g. 512)."
            )


def export_onnx(
    model_dir_or_model: str | os.PathLike[str] | nn.Module,
    output_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    height: int = 512,
    width: int = 512,
    *,
    verify: bool = True,
    atol: float = 1e-3,
    min_agreement: float = 0.999,
    overwrite: bool = False,
) -> Path:
    """Export to ``output_path`` (dynamic batch/height/width); returns the path.

    ``height``/``width`` set the example size used to trace the graph (the graph accepts any size >= 2).
    With ``verify`` (and onnxruntime installed) the file is run at another size and compared with PyTorch;
    a RuntimeError is raised when the max abs logit difference exceeds ``atol`` or fewer than
    ``min_agreement`` of the pixels get the same class. An existing file is replaced only with ``overwrite``; the
    file appears whole or not at all (written beside, then renamed).
    """
    _check_arguments(opset, height, width)
    output_path = Path(output_path)
    if output_path.suffix != ".onnx":
        raise ValueError(f"output_path {output_path} should end in .onnx")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists: pass --force (overwrite=True) to replace it, or pick another "
                              "--out")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'des4-hf[onnx]'") from error

    model, model_dir = _load_model(model_dir_or_model)
    was_training = model.training
    model.eval()
    try:
        example = torch.randn(2, 3, _tracing_size(height), _tracing_size(width))
        with torch.no_grad():
            program = torch.onnx.export(
                _LogitsOnly(model).eval(),
                (example,),
                dynamo=True,
                dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
                input_names=["pixel_values"],
                output_names=["logits"],
                opset_version=opset,
                verbose=False,
            )
        _finish_graph(program, model, model_dir)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        with tempfile.TemporaryDirectory(prefix=".des4-onnx-", dir=output_path.parent) as staging:
            staged = Path(staging) / output_path.name  # beside the target: the renames stay on one file system
            program.save(str(staged), external_data=weight_bytes > _TWO_GIB * 0.9)  # + <name>.data when large
            for written in sorted(Path(staging).iterdir(), key=lambda item: item == staged):  # the .onnx last
                with open(written, "rb") as stream:
                    os.fsync(stream.fileno())
                os.replace(written, output_path.parent / written.name)
        if verify:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                logger.warning("onnxruntime is not installed: the exported graph was not verified")
            else:
                shape = (1, 3, max(MIN_SIZE, height - 11), width + 13)
                check = compare_with_pytorch(output_path, model, shape)
                if not check.ok(atol, min_agreement):
                    raise RuntimeError(
                        f"the exported graph disagrees with PyTorch at {check.shape}: max |Δlogit| = "
                        f"{check.max_abs_diff:.2e} (allowed {atol}), same class on "
                        f"{check.argmax_agreement:.4%} of pixels (needed {min_agreement:.2%}). "
                        "Please report this with the model's config.json."
                    )
    finally:
        model.train(was_training)
    return output_path


def _finish_graph(program: Any, model: nn.Module, model_dir: Path | None) -> None:
    """Name the output axes like the input's and store what a runtime user needs in the metadata."""
    import onnx_ir as ir

    graph = program.model.graph
    input_shape = graph.inputs[0].shape
    config = model.config
    graph.outputs[0].shape = ir.Shape([input_shape[0], config.num_labels, input_shape[2], input_shape[3]])
    metadata = {
        "des4.model_type": "des4",
        "des4.backbone": str(config.backbone),
        "des4.id2label": json.dumps({str(k): v for k, v in config.id2label.items()}),
        "des4.ignore_index": str(config.semantic_loss_ignore_index),
        "des4.inputs": "pixel_values float32 (batch, 3, height, width), normalised per preprocessor_config",
        "des4.outputs": "logits float32 (batch, num_labels, height, width); argmax over dim 1 = classes",
    }
    if model_dir is not None and (model_dir / "preprocessor_config.json").is_file():
        metadata["des4.preprocessor_config"] = (model_dir / "preprocessor_config.json").read_text(
            encoding="utf-8"
        )
    program.model.metadata_props.update(metadata)


def compare_with_pytorch(
    onnx_path: str | os.PathLike[str], model: nn.Module, shape: Sequence[int], seed: int = 0
) -> OnnxCheck:
    """Run the ONNX file (onnxruntime, CPU) and ``model`` on one random input; compare logits and argmax."""
    import numpy as np
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(*shape, generator=generator)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits.float().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    if actual.shape != expected.shape:
        raise RuntimeError(f"ONNX logits have shape {actual.shape}, PyTorch {expected.shape}")
    return OnnxCheck(
        shape=tuple(int(v) for v in shape),  # type: ignore[arg-type]
        max_abs_diff=float(np.abs(actual - expected).max()),
        argmax_agreement=float((actual.argmax(1) == expected.argmax(1)).mean()),
    )
