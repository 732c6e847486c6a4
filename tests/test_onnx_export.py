"""ONNX export with dynamic batch/height/width, checked with onnxruntime at another size than exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'des4-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'des4-hf[onnx]')")
pytestmark = pytest.mark.slow  # every test here exports a graph (half a minute)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from des4_hf_scripts.export_onnx import main  # noqa: E402

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor  # noqa: E402
from des4_hf.onnx_export import compare_with_pytorch, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Des4ForSemanticSegmentation, Path]:
    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(
        Des4Config(backbone="test_resnet", num_labels=3, decoder_channels=16)
    ).eval()
    model.prototype_head.initialized.fill_(True)  # as if trained: a never-trained model refuses inference
    model_dir = tmp_path_factory.mktemp("onnx") / "model"
    model.save_pretrained(model_dir)
    Des4ImageProcessor().save_pretrained(model_dir)
    path = model_dir.parent / "model.onnx"
    # through the CLI, from a model directory, exported at 64×64 and verified inside at another size
    assert main(["--model", str(model_dir), "--out", str(path), "--height", "64", "--width", "64"]) == 0
    return model, path


def test_onnx_matches_pytorch_at_another_size(exported: tuple[Des4ForSemanticSegmentation, Path]) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # 75×101 is neither the export size nor a multiple of the output stride; batch 2 ≠ export batch
    for shape in [(2, 3, 75, 101), (1, 3, 64, 64)]:
        pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits.numpy()
        (actual,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        assert actual.shape == expected.shape == (shape[0], 3, shape[2], shape[3])
        assert np.abs(actual - expected).max() <= 1e-3
        assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.999
    check = compare_with_pytorch(path, model, (1, 3, 48, 33))
    assert check.ok(1e-3, 0.999), check


def test_onnx_graph_has_dynamic_axes_and_metadata(exported: tuple[Des4ForSemanticSegmentation, Path]) -> None:
    _, path = exported
    graph_model = onnx.load(str(path), load_external_data=False)
    (graph_input,) = graph_model.graph.input
    (graph_output,) = graph_model.graph.output
    dims_in = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    dims_out = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert (graph_input.name, graph_output.name) == ("pixel_values", "logits")
    assert dims_in == ["batch", 3, "height", "width"] and dims_out == ["batch", 3, "height", "width"]
    metadata = {prop.key: prop.value for prop in graph_model.metadata_props}
    assert json.loads(metadata["des4.id2label"]) == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert "image_mean" in json.loads(metadata["des4.preprocessor_config"])


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tmp_path, tmp_path / "m.onnx", opset=11)
    with pytest.raises(ValueError, match="height"):
        export_onnx(tmp_path, tmp_path / "m.onnx", height=8)
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx")]) != 0
    with pytest.raises((ValueError, OSError)):  # --debug: the traceback instead of the line
        main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx"), "--debug"])
