#!/usr/bin/env python
"""Small-scale reproduction of the paper's ablations (Table 3 and Table 4) on CamVid.

Every row trains with the same recipe (steps, batch, crop, encoder, labeled split) and differs only
by the switches of SPEC §4. Each run is one ``scripts/train.py`` process in its own output folder,
started with ``--resume latest``: a stopped reproduction continues where it was, and a finished run
is never trained twice. After every run the summary (JSON, Markdown, per-class bar chart) is
rewritten, so partial results are readable while the rest is still training.

The tail classes are the classes holding less than ``tail_share`` (3 %) of the labeled pixels of the
split, read from the trainer's own record of the labeled-set class shares.

    python benchmarks/reproduce_camvid.py                  # all rows, seeds 0 and 1 (main rows), resumable
    python benchmarks/reproduce_camvid.py --summary-only   # rewrite reports/camvid/ from finished runs
    python benchmarks/reproduce_camvid.py --rows des4 --seeds 0 --max-steps 20   # extra options go to train.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TAIL_SHARE = 0.03


@dataclass(frozen=True)
class AblationRow:
    """One line of the ablation table: a name (folder), a label (table) and the trainer switches."""

    name: str
    label: str
    train_args: tuple[str, ...]
    main: bool = False  # main rows run with every seed; the others with the first seed only


ROWS: tuple[AblationRow, ...] = (
    AblationRow("supervised", "Supervised (labeled only)", ("--method", "supervised"), main=True),
    AblationRow("mt-cutmix", "MT + CutMix, prototype head (Table 3 row 1)", ("--method", "mean-teacher"), main=True),
    AblationRow("dt", "+ D.T.", ("--method", "des4", "--no-shared-head", "--no-reweight")),
    AblationRow("dt-sh", "+ D.T. + S.H.", ("--method", "des4", "--no-reweight")),
    AblationRow("des4", "+ D.T. + S.H. + P.R. = DeS4 (MES)", ("--method", "des4"), main=True),
    AblationRow("des4-quantity", "DeS4, quantity sampler (Table 4)", ("--method", "des4", "--sampler", "quantity")),
    AblationRow("des4-confidence", "DeS4, confidence sampler (Table 4)",
                ("--method", "des4", "--sampler", "confidence")),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}


@dataclass(frozen=True)
class RunSpec:
    row: AblationRow
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row.name}-seed{self.seed}"


def plan_runs(rows: Sequence[AblationRow], seeds: Sequence[int]) -> list[RunSpec]:
    """The main rows with every seed first (the paper's central claim, with its seed spread, as early as
    possible), then the other rows with the first seed."""
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. --seeds 0 1")
    runs = [RunSpec(row, seed) for seed in seeds for row in rows if row.main]
    runs += [RunSpec(row, seeds[0]) for row in rows if not row.main]
    return runs


@dataclass
class ReproductionSettings:
    recipe: Path  # the shared training recipe (YAML), e.g. configs/camvid_ablation.yaml
    split_dir: Path  # labeled.txt / unlabeled.txt, committed under reports/camvid/split
    runs_dir: Path  # one training output folder per run (large: checkpoints)
    report_dir: Path  # results.{json,md}, per_class_iou.png, <row>/ (config, metrics; no weights)
    seeds: tuple[int, ...] = (0, 1)
    rows: tuple[AblationRow, ...] = ROWS
    extra_train_args: tuple[str, ...] = ()
    data_root: str | None = None
    tail_share: float = TAIL_SHARE
    train_script: Path = field(default_factory=lambda: Path(__file__).resolve().parents[1] / "scripts" / "train.py")


def ensure_split(settings: ReproductionSettings, labeled_fraction: float = 0.125, seed: int = 0) -> Path:
    """Write the seeded CamVid split once; later calls (and every run) reuse the committed file."""
    if (settings.split_dir / "labeled.txt").is_file():
        return settings.split_dir
    from des4_hf.data import SemiSupervisedSplit, load_segmentation_dataset

    kwargs = {"root": settings.data_root} if settings.data_root else {}
    train = load_segmentation_dataset("camvid", **kwargs)["train"]
    split = SemiSupervisedSplit.random(train, labeled=labeled_fraction, seed=seed, name=f"camvid-1_8-seed{seed}")
    split.save(settings.split_dir)
    return settings.split_dir


def final_record(run_dir: Path) -> dict[str, Any] | None:
    """The last evaluation a finished run wrote (teacher, student, labeled class shares), or None."""
    if not (run_dir / "last" / "eval.json").is_file():
        return None
    records = sorted((run_dir / "eval").glob("step_*.json"))
    return json.loads(records[-1].read_text()) if records else None


def train_command(settings: ReproductionSettings, run: RunSpec) -> list[str]:
    command = [sys.executable, str(settings.train_script), "--config", str(settings.recipe),
               "--split", str(settings.split_dir), "--seed", str(run.seed),
               "--output-dir", str(settings.runs_dir / run.name), "--resume", "latest",
               "--report-to", "none", "--overlays", "0"]
    if settings.data_root:
        command += ["--data-root", settings.data_root]
    return command + list(run.row.train_args) + list(settings.extra_train_args)


def run_all(settings: ReproductionSettings, dry_run: bool = False) -> dict[str, Any]:
    """Train every planned run that has no final evaluation yet, refreshing the summary after each."""
    ensure_split(settings)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    for run in plan_runs(settings.rows, settings.seeds):
        run_dir = settings.runs_dir / run.name
        if final_record(run_dir) is not None:
            print(f"[reproduce] {run.name}: done, skipping")
            continue
        command = train_command(settings, run)
        print(f"[reproduce] {run.name}: {' '.join(command)}", flush=True)
        if dry_run:
            continue
        started = time.perf_counter()
        environment = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        completed = subprocess.run(command, env=environment, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"run {run.name} failed with exit code {completed.returncode}; its output folder "
                               f"{run_dir} keeps the last checkpoint: rerun the same command to resume it")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        write_summary(settings)
    return write_summary(settings)


# -- summary ------------------------------------------------------------------------------------------
def tail_classes(classes: Sequence[str], labeled_share: Sequence[float], threshold: float = TAIL_SHARE) -> list[str]:
    """Classes holding less than ``threshold`` of the labeled pixels (and at least one is labeled)."""
    return [name for name, share in zip(classes, labeled_share, strict=True) if share < threshold]


def summarise_runs(records: dict[str, list[dict[str, Any]]], rows: Sequence[AblationRow],
                   tail_share: float = TAIL_SHARE) -> dict[str, Any]:
    """Per-row means over seeds: teacher mIoU, per-class IoU, tail/head mIoU; spread = max − min."""
    classes: list[str] | None = None
    labeled_share: list[float] | None = None
    for row_records in records.values():
        for record in row_records:
            shares = record["pseudo_labels"]
            if classes is None:
                classes, labeled_share = list(shares["classes"]), list(shares["labeled_share"])
            elif list(shares["classes"]) != classes or not np.allclose(shares["labeled_share"], labeled_share):
                raise ValueError("the runs do not share one labeled split (their labeled class shares differ); "
                                 "rerun them all with the same --split")
    if classes is None or labeled_share is None:
        return {"classes": [], "tail_classes": [], "rows": []}
    tail = tail_classes(classes, labeled_share, tail_share)
    tail_index = [classes.index(name) for name in tail]
    head_index = [index for index in range(len(classes)) if index not in tail_index]
    summary_rows = []
    for row in rows:
        row_records = records.get(row.name, [])
        if not row_records:
            continue
        per_class = np.array([[record["teacher"]["per_class_iou"][name] for name in classes]
                              for record in row_records])
        miou = np.array([record["teacher"]["mean_iou"] for record in row_records])
        tail_miou = per_class[:, tail_index].mean(axis=1) if tail_index else np.full(len(row_records), np.nan)
        head_miou = per_class[:, head_index].mean(axis=1)
        student = [record["student"]["mean_iou"] for record in row_records if "student" in record]
        summary_rows.append({
            "name": row.name, "label": row.label, "seeds": [record["seed"] for record in row_records],
            "teacher_miou": miou.tolist(), "teacher_miou_mean": float(miou.mean()),
            "teacher_miou_spread": float(miou.max() - miou.min()) if len(miou) > 1 else None,
            "student_miou_mean": float(np.mean(student)) if student else None,
            "tail_miou": tail_miou.tolist(), "tail_miou_mean": float(tail_miou.mean()),
            "head_miou_mean": float(head_miou.mean()),
            "per_class_iou_mean": dict(zip(classes, per_class.mean(axis=0).tolist(), strict=True)),
        })
    return {"classes": classes, "labeled_share": labeled_share, "tail_share": tail_share, "tail_classes": tail,
            "rows": summary_rows, "claims": check_claims(summary_rows)}


def check_claims(summary_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The paper's claims, tested on the means: DeS4 > MT + CutMix > supervised; gains largest on tail classes."""
    by_name = {row["name"]: row for row in summary_rows}
    if not all(name in by_name for name in ("supervised", "mt-cutmix", "des4")):
        return {"complete": False}
    sup, mt, des4 = by_name["supervised"], by_name["mt-cutmix"], by_name["des4"]
    claims: dict[str, Any] = {"complete": True}
    claims["des4_over_mt"] = des4["teacher_miou_mean"] - mt["teacher_miou_mean"]
    claims["mt_over_supervised"] = mt["teacher_miou_mean"] - sup["teacher_miou_mean"]
    claims["ordering_holds"] = claims["des4_over_mt"] > 0 and claims["mt_over_supervised"] > 0
    claims["des4_over_supervised_tail"] = des4["tail_miou_mean"] - sup["tail_miou_mean"]
    claims["des4_over_supervised_head"] = des4["head_miou_mean"] - sup["head_miou_mean"]
    claims["des4_over_mt_tail"] = des4["tail_miou_mean"] - mt["tail_miou_mean"]
    claims["des4_over_mt_head"] = des4["head_miou_mean"] - mt["head_miou_mean"]
    claims["tail_gain_largest"] = (claims["des4_over_supervised_tail"] > claims["des4_over_supervised_head"]
                                   and claims["des4_over_mt_tail"] > claims["des4_over_mt_head"])
    # Differences smaller than the seed spread of the rows involved are not evidence either way.
    spreads = [row["teacher_miou_spread"] for row in (sup, mt, des4) if row["teacher_miou_spread"] is not None]
    claims["largest_seed_spread"] = max(spreads) if spreads else None
    return claims


def collect_records(settings: ReproductionSettings) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for run in plan_runs(settings.rows, settings.seeds):
        record = final_record(settings.runs_dir / run.name)
        if record is None:
            continue
        wall = settings.runs_dir / run.name / "wall_seconds.txt"
        record = {**record, "seed": run.seed, "run": run.name,
                  "wall_seconds": float(wall.read_text()) if wall.is_file() else None}
        records.setdefault(run.row.name, []).append(record)
    return records


def export_row_artifacts(settings: ReproductionSettings, records: dict[str, list[dict[str, Any]]]) -> None:
    """``<report_dir>/<row>/``: the first seed's teacher config, metrics and resolved training config.

    Never the weights: they stay in the run folder under ``runs_dir`` (``outputs/``, ignored by git), so a
    checkout stays small enough to copy to an accelerator machine."""
    for row_name, row_records in records.items():
        first = row_records[0]
        source = settings.runs_dir / first["run"] / "last"
        target = settings.report_dir / row_name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "preprocessor_config.json", "eval.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        if (source.parent / "train_config.yaml").is_file():  # the full resolved recipe of the run
            shutil.copy2(source.parent / "train_config.yaml", target / "train_config.yaml")
        (target / "runs.json").write_text(json.dumps(
            [{key: record[key] for key in ("run", "seed", "step", "teacher", "student", "wall_seconds")
              if key in record} for record in row_records], indent=2))


def write_summary(settings: ReproductionSettings) -> dict[str, Any]:
    records = collect_records(settings)
    summary = summarise_runs(records, settings.rows, settings.tail_share)
    summary["recipe"] = str(settings.recipe)
    summary["split"] = str(settings.split_dir)
    summary["runs"] = {name: [record["run"] for record in row_records] for name, row_records in records.items()}
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    export_row_artifacts(settings, records)
    temporary = settings.report_dir / ".results.json.tmp"
    temporary.write_text(json.dumps(summary, indent=2))
    os.replace(temporary, settings.report_dir / "results.json")
    (settings.report_dir / "results.md").write_text(render_markdown(summary))
    if summary["rows"]:
        plot_per_class(summary, settings.report_dir / "per_class_iou.png")
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def render_markdown(summary: dict[str, Any]) -> str:
    classes, tail = summary["classes"], summary["tail_classes"]
    lines = ["# CamVid ablation (DeS4 Table 3 / Table 4 at small scale)", "",
             f"Recipe `{summary.get('recipe')}`, labeled split `{summary.get('split')}`; teacher mIoU (%) on "
             "CamVid val (101 images, 480×360). Tail classes (< "
             f"{100 * summary.get('tail_share', TAIL_SHARE):.0f} % of labeled pixels): {', '.join(tail) or 'none'}.",
             "Spread = max − min over seeds.", "",
             "| row | seeds | teacher mIoU | spread | student mIoU | tail mIoU | head mIoU |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        per_seed = ", ".join(_pct(value) for value in row["teacher_miou"])
        lines.append(f"| {row['label']} | {len(row['seeds'])} ({per_seed}) | {_pct(row['teacher_miou_mean'])} | "
                     f"{_pct(row['teacher_miou_spread'])} | {_pct(row['student_miou_mean'])} | "
                     f"{_pct(row['tail_miou_mean'])} | {_pct(row['head_miou_mean'])} |")
    if summary["rows"]:
        lines += ["", "Per-class IoU (%), mean over seeds:", "",
                  "| row | " + " | ".join(f"{name}{'*' if name in tail else ''}" for name in classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for row in summary["rows"]:
            lines.append(f"| {row['name']} | " + " | ".join(_pct(row["per_class_iou_mean"][name]) for name in classes)
                         + " |")
        lines += ["", "\\* tail class. Labeled pixel shares: "
                  + ", ".join(f"{name} {100 * share:.1f} %" for name, share in zip(classes, summary["labeled_share"],
                                                                                   strict=True)) + "."]
    claims = summary.get("claims", {})
    if claims.get("complete"):
        lines += ["", "## The paper's claims, checked on these means", "",
                  f"- DeS4 − MT+CutMix: {100 * claims['des4_over_mt']:+.2f} mIoU; MT+CutMix − supervised: "
                  f"{100 * claims['mt_over_supervised']:+.2f}. Ordering DeS4 > MT+CutMix > supervised "
                  f"{'holds' if claims['ordering_holds'] else 'does not hold'}.",
                  f"- DeS4 − supervised: tail {100 * claims['des4_over_supervised_tail']:+.2f}, head "
                  f"{100 * claims['des4_over_supervised_head']:+.2f}; DeS4 − MT+CutMix: tail "
                  f"{100 * claims['des4_over_mt_tail']:+.2f}, head {100 * claims['des4_over_mt_head']:+.2f}. "
                  f"Largest gain on the tail classes: {'yes' if claims['tail_gain_largest'] else 'no'}.",
                  "- Largest seed spread among these rows: "
                  + (f"{100 * claims['largest_seed_spread']:.2f} mIoU; differences below it are within seed noise."
                     if claims["largest_seed_spread"] is not None else "– (one seed each: no spread measured).")]
    return "\n".join(lines) + "\n"


def plot_per_class(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, rows = summary["classes"], summary["rows"]
    width = 0.8 / len(rows)
    positions = np.arange(len(classes))
    figure, axis = plt.subplots(figsize=(max(8.0, 1.1 * len(classes)), 4.5))
    for offset, row in enumerate(rows):
        values = [100 * row["per_class_iou_mean"][name] for name in classes]
        axis.bar(positions + (offset - (len(rows) - 1) / 2) * width, values, width, label=row["name"])
    axis.set_xticks(positions, [f"{name}{'*' if name in summary['tail_classes'] else ''}" for name in classes],
                    rotation=30, ha="right")
    axis.set_ylabel("IoU (%)")
    axis.set_title("CamVid val, teacher IoU per class (* = tail class, < 3 % of labeled pixels)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


REPO = Path(__file__).resolve().parents[1]


def add_run_arguments(parser: Any, *, recipe: Path, runs_dir: Path, seeds: list[int]) -> None:
    """The options the CamVid runners share (this script and ``camvid_study.py``)."""
    parser.add_argument("--recipe", default=str(recipe), help="training recipe shared by every row")
    parser.add_argument("--split-dir", default=str(REPO / "reports" / "camvid" / "split"),
                        help="labeled/unlabeled lists; created (1/8 labeled, seed 0) if missing")
    parser.add_argument("--runs-dir", default=str(runs_dir), help="training output folders (large)")
    parser.add_argument("--report-dir", default=str(REPO / "reports" / "camvid"), help="summary and per-row files")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds, help="the main rows run with every seed")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "camvid"), help="CamVid root")
    parser.add_argument("--summary-only", action="store_true", help="rewrite the summary from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the training commands only")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="CamVid reproduction of DeS4's ablations (Table 3 / Table 4): one training run per row and seed, "
                    "resumable; results in <report-dir>/results.{json,md} and per_class_iou.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run_arguments(parser, recipe=REPO / "configs" / "camvid_ablation.yaml", runs_dir=REPO / "outputs" / "camvid_ablation",
                      seeds=[0, 1])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS_BY_NAME), default=[row.name for row in ROWS])
    args, extra = parser.parse_known_args(argv)
    if not Path(args.recipe).is_file():
        parser.error(f"--recipe {args.recipe} does not exist (recipes live in configs/)")
    settings = ReproductionSettings(
        recipe=Path(args.recipe), split_dir=Path(args.split_dir), runs_dir=Path(args.runs_dir),
        report_dir=Path(args.report_dir), seeds=tuple(args.seeds),
        rows=tuple(ROWS_BY_NAME[name] for name in args.rows), extra_train_args=tuple(extra),
        data_root=args.data_root,
    )
    summary = write_summary(settings) if args.summary_only else run_all(settings, dry_run=args.dry_run)
    if not args.dry_run:
        print(render_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
