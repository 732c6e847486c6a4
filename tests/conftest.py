"""Shared test fixtures: offline, CPU, small."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test-suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# scripts/test.sh runs the suite with oneDNN's "native bf16" answer forced to no, then the tests marked onednn_bf16
# with it forced to yes (DES4_MKLDNN_BF16=0|1): the suite must pass on AVX2-only and AVX512-BF16 CPUs alike (issue 17).
# Only inductor reads that answer (the package never does: its precision is timed, not read from flags).
if os.environ.get("DES4_MKLDNN_BF16") in ("0", "1"):
    import torch

    class _ForcedAnswer:
        """Answers calls with the forced value; every other attribute (``.default``, which torch.export and inductor
        look up on every op) is the real op's."""

        def __init__(self, op: object, answer: bool) -> None:
            self._op, self._answer = op, answer

        def __call__(self, *args: object, **kwargs: object) -> bool:
            return self._answer

        def __getattr__(self, name: str) -> object:
            return getattr(self._op, name)

    torch.ops.mkldnn._is_mkldnn_bf16_supported = _ForcedAnswer(torch.ops.mkldnn._is_mkldnn_bf16_supported,
                                                               os.environ["DES4_MKLDNN_BF16"] == "1")

# Tests pin their precision: `auto` is fp32 + channels_last here, never the timed probe, whose answer depends on the
# CPU (tests/test_inference.py exercises the probe with its timings replaced).
os.environ["DES4_PRECISION_PROBE"] = "0"

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = Path(os.environ.get("DES4_CAMVID_ROOT", REPO_ROOT.parent / "shared" / "data" / "camvid"))
os.environ["DES4_CAMVID_ROOT"] = str(CAMVID_ROOT)  # the package reads no default folder: tell it where the copy is


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The shared CamVid copy (VOC layout). Tests that need real images skip without it."""
    if not (CAMVID_ROOT / "JPEGImages").is_dir():
        pytest.skip(
            f"CamVid not found at {CAMVID_ROOT}: put the shared data beside the clone "
            "(../shared/data/camvid) or set DES4_CAMVID_ROOT"
        )
    return CAMVID_ROOT


@pytest.fixture(scope="session")
def camvid_image_paths(camvid_root: Path) -> list[Path]:
    ids = (camvid_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return [camvid_root / "JPEGImages" / f"{i}.jpg" for i in ids[:3]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the real CamVid copy is an integration test: it belongs to the slow tier."""
    for item in items:
        if {"camvid_root", "camvid_image_paths"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Accelerate's state is process-wide: each test starts (and leaves) without one, whatever it launched."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def probing(monkeypatch, tmp_path):
    """auto with the timed probe switched on (conftest pins it off), a private cache and scripted timings."""
    monkeypatch.setenv("DES4_PRECISION_PROBE", "1")
    monkeypatch.setenv("DES4_CACHE", str(tmp_path))
    timed: list[str] = []

    def script(seconds: dict[str, float]) -> list[str]:
        def fake(model, sample, choice, training, give_up_after):
            label = f"{choice.name}-{'channels_last' if choice.channels_last else 'nchw'}"
            timed.append(label)
            return seconds[label]

        monkeypatch.setattr("des4_hf.inference._time_candidate", fake)
        return timed

    return script
