"""``benchmarks/benchmark.py --quick`` (issue 8, part 1): every section is there and every ratio is a positive number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bench_common
import benchmark
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SECTIONS = ("machine", "settings", "training", "mes", "scaling", "inference", "memory", "predict_memory", "goals",
            "section_wall_s", "training_precision_probe")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    try:  # one thread: on a CPU other jobs keep busy, two spinning intra-op threads make this test 10× slower
        assert benchmark.main(["--quick", "--backbone", "test_resnet", "--crop-size", "48", "--iterations", "1",
                     "--threads", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(SECTIONS) <= set(report)
    assert "| des4 |" in (tmp_path / "benchmark.md").read_text()
    assert "DeS4 benchmark" in capsys.readouterr().out

    training = report["training"]
    assert set(training["methods"]) == {"supervised", "mean-teacher", "des4"}
    for name in ("des4_over_mean_teacher", "des4_over_supervised", "mean_teacher_over_supervised"):
        assert _positive(training[name]), name
    mes = report["mes"]
    assert 0 < mes["share_of_des4_step"] < 1
    assert _positive(mes["sample_class_features_ms"]) and _positive(mes["apply_prototype_updates_ms"])
    reference = mes["vs_reference"]
    assert reference["chosen"] > 0
    if "reference_over_vectorised" in reference:
        assert _positive(reference["reference_over_vectorised"])
        assert reference["chosen_reference"] == reference["chosen"]

    precision = report["inference"]["precision"]
    assert precision["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(precision["auto_is_fastest"], bool)
    for name in ("channels_last_over_nchw_fp32", "bf16_over_fp32_channels_last", "auto_over_fastest"):
        assert _positive(precision[name]), name
    assert all(_positive(v) for v in precision["images_per_s"].values())
    # auto is the probe's answer, and every variant it timed is also measured by the benchmark itself
    assert set(precision["auto_probe_seconds"]) == set(precision["images_per_s"]) >= {precision["auto_choice"]}
    assert report["training_precision_probe"]["choice"] in ("fp32", "bf16")
    assert set(report["training_precision_probe"]["seconds"]) == {"fp32-channels_last", "bf16-channels_last"}
    smp = report["inference"]["smp"]
    if smp["status"] == "ok":
        assert _positive(smp["smp_matched_over_ours"]) and _positive(smp["smp_default_over_ours"])
    else:
        assert smp["status"] == bench_common.SMP_SKIPPED

    memory = report["memory"]
    for method in ("supervised", "mean-teacher", "des4"):
        row = memory["methods"][method]
        assert "error" not in row, row
        assert _positive(row["peak_rss_mb"])
    assert _positive(memory["des4_over_mean_teacher"])

    predict = report["predict_memory"]
    assert set(predict["modes"]) == {"whole", "sliding-logits", "sliding-bands"}
    assert all("error" not in row and _positive(row["peak_rss_mb"]) for row in predict["modes"].values()), predict

    scaling = report["scaling"]
    assert [row["crop_size"] for row in scaling["crop"]] == [32, 48, 64]
    assert [row["batch_size"] for row in scaling["batch"]] == [1, 2, 4]
    assert all(_positive(row["time_ratio"]) for row in scaling["crop"] + scaling["batch"])
    assert set(report["goals"]) == {"des4_over_mean_teacher", "mes_share", "smp_over_ours_images_per_s",
                                    "auto_precision_is_fastest"}
