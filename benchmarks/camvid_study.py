#!/usr/bin/env python
"""Does unlabeled data pay? Supervised vs MT + CutMix vs DeS4 on CamVid 1/8, at several step budgets (issue 14).

Every run trains ``scripts/train.py`` with one shared recipe (``configs/camvid_study.yaml``) and the committed
split (``reports/camvid/split``); rows differ only by the switch their name gives. The plan, most telling first:

1. seed by seed, budget 300 then 1000: ``supervised``, ``mt-cutmix`` and ``des4``, each budget followed by
   ``supervised-same-wall-time``: as many supervised steps as fit in that seed's DeS4 training time, measured
   on this machine from the supervised run's own seconds per step;
2. budget 1000, first seed: the Table 3 / Table 4 rows (``dt``, ``dt-sh``, ``des4-quantity``,
   ``des4-confidence``);
3. the largest budget (2000), first seed, main rows and the wall-time row.

Runs go one at a time (comparable wall times), each in ``<runs-dir>/<row>-<steps>-seed<seed>`` with
``--resume latest``, so a stopped study continues mid-run and never trains a finished run twice. After every
run ``<report-dir>/study.json``, ``study.md`` and ``study_curves.png`` are rewritten from all finished runs.
Wall time is the sum of the trainer's logged step times (data loading included; evaluation and checkpoints
excluded), so it survives a resume.

    nohup nice python benchmarks/camvid_study.py > outputs/camvid_study.log 2>&1 &   # resumable
    python benchmarks/camvid_study.py --summary-only                                 # rewrite the report
    python benchmarks/camvid_study.py --budgets 2000 --seeds 0 --tag h200 -- --crop-size 360   # on a GPU
    python benchmarks/camvid_study.py --recipe configs/camvid_demo.yaml --budgets 240 --rows supervised des4 \
        supervised-same-wall-time --runs-dir outputs/camvid_demo_seeds --report-dir reports/camvid/demo  # the demo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from reproduce_camvid import TAIL_SHARE, add_run_arguments, tail_classes  # this file's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
MAIN_ROWS = ("supervised", "mt-cutmix", "des4")
WALL_ROW = "supervised-same-wall-time"
ROW_ARGS: dict[str, tuple[str, ...]] = {
    "supervised": ("--method", "supervised"),
    "mt-cutmix": ("--method", "mean-teacher"),
    "des4": ("--method", "des4"),
    "dt": ("--method", "des4", "--no-shared-head", "--no-reweight"),
    "dt-sh": ("--method", "des4", "--no-reweight"),
    "des4-quantity": ("--method", "des4", "--sampler", "quantity"),
    "des4-confidence": ("--method", "des4", "--sampler", "confidence"),
    WALL_ROW: ("--method", "supervised"),
}
METHODS = {"supervised": "supervised", "mt-cutmix": "mean-teacher", WALL_ROW: "supervised"}
ABLATION_ROWS = ("dt", "dt-sh", "des4-quantity", "des4-confidence")


@dataclass(frozen=True)
class Run:
    row: str
    steps: int  # the budget; for the wall-time row, the DeS4 budget it is matched to
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row}-{self.steps}-seed{self.seed}"

    @property
    def method(self) -> str:
        return METHODS.get(self.row, "des4")


def plan(budgets: Sequence[int], seeds: Sequence[int], ablation_budget: int | None = 1000) -> list[Run]:
    """Seed by seed, every budget but the largest (so the target budget's first seed comes early); then the
    ablation rows at ``ablation_budget``; then the largest budget with the first seed. With two budgets or
    fewer, every budget is seeded."""
    budgets = sorted(budgets)
    runs: list[Run] = []
    seeded, largest = (budgets[:-1], budgets[-1:]) if len(budgets) > 2 else (budgets, [])
    for seed in seeds:
        for steps in seeded:
            runs += [Run(row, steps, seed) for row in (*MAIN_ROWS, WALL_ROW)]
    if ablation_budget in seeded:
        runs += [Run(row, ablation_budget, seeds[0]) for row in ABLATION_ROWS]
    for steps in largest:
        runs += [Run(row, steps, seeds[0]) for row in (*MAIN_ROWS, WALL_ROW)]
    return runs


# -- measuring one run ----------------------------------------------------------------------------------------
def machine_name() -> str:
    """The device a figure was measured on: the GPU's name, else the CPU model, its vector extensions and cores."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
        flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        pass
    extensions = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else \
        "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({extensions}, {os.cpu_count()} cores)"


def run_dir(runs_dir: Path, run: Run) -> Path:
    return runs_dir / run.name


def training_seconds(folder: Path) -> tuple[int, float]:
    """(steps logged, their summed step seconds) from the trainer's ``log.jsonl``."""
    log = folder / "log.jsonl"
    if not log.is_file():
        return 0, 0.0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return len(entries), float(sum(entry["seconds"] for entry in entries))


def finished_record(folder: Path) -> dict[str, Any] | None:
    """The final evaluation of a finished run (``results.json`` is written last), or None."""
    results = folder / "results.json"
    if not results.is_file():
        return None
    return json.loads(results.read_text())["final"]


def study_entry(run: Run, folder: Path, cpu: str, tail_share: float = TAIL_SHARE) -> dict[str, Any] | None:
    """One ``study.json`` entry: mIoU in percent, tail = classes with < ``tail_share`` of the labeled pixels."""
    record = finished_record(folder)
    if record is None:
        return None
    steps, seconds = training_seconds(folder)
    shares = record["pseudo_labels"]
    classes = list(shares["classes"])
    tail = tail_classes(classes, shares["labeled_share"], tail_share)
    per_class = {name: 100 * float(value) for name, value in record["teacher"]["per_class_iou"].items()}
    entry = {
        "row": run.row, "method": run.method, "steps": run.steps, "trained_steps": int(record["step"]),
        "seed": run.seed, "val_miou": 100 * float(record["teacher"]["mean_iou"]),
        "val_tail_miou": float(np.mean([per_class[name] for name in tail])) if tail else float("nan"),
        "wall_s": round(seconds, 1), "cpu": cpu,
        "student_val_miou": 100 * float(record["student"]["mean_iou"]) if "student" in record else None,
        "tail_classes": tail, "per_class_iou": per_class,
    }
    if steps != entry["trained_steps"]:
        entry["note"] = f"log.jsonl holds {steps} steps"
    return entry


def wall_matched_steps(des4_seconds: float, supervised_steps: int, supervised_seconds: float) -> int:
    """Supervised steps that fit in DeS4's training time, at the supervised run's measured seconds per step."""
    if supervised_steps <= 0 or supervised_seconds <= 0:
        raise ValueError("the supervised run of the same budget and seed has no logged steps to time")
    return max(1, math.floor(des4_seconds / (supervised_seconds / supervised_steps)))


# -- the loop -----------------------------------------------------------------------------------------------
@dataclass
class StudySettings:
    recipe: Path
    split_dir: Path
    runs_dir: Path
    report_dir: Path
    budgets: tuple[int, ...] = (300, 1000, 2000)
    seeds: tuple[int, ...] = (0, 1, 2)
    tag: str = ""  # suffix of the run folders and rows' "cpu" field for another machine (e.g. a GPU)
    extra_args: tuple[str, ...] = ()
    data_root: str | None = None
    threads: int | None = None
    rows: tuple[str, ...] = ()  # train only these rows of the plan (all when empty); the report keeps every row

    def runs(self) -> list[Run]:
        return [run for run in plan(self.budgets, self.seeds) if not self.rows or run.row in self.rows]

    def planned(self) -> list[Run]:
        return plan(self.budgets, self.seeds)

    @property
    def json_path(self) -> Path:
        return self.report_dir / ("study.json" if not self.tag else f"study-{self.tag}.json")


def train_command(settings: StudySettings, run: Run, max_steps: int) -> list[str]:
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(settings.recipe),
               "--split", str(settings.split_dir), "--seed", str(run.seed), "--max-steps", str(max_steps),
               "--output-dir", str(run_dir(settings.runs_dir, run)), "--resume", "latest", "--report-to", "none",
               "--overlays", "0", *ROW_ARGS[run.row]]
    if settings.data_root:
        command += ["--data-root", settings.data_root]
    return command + list(settings.extra_args)


def recorded_entries(settings: StudySettings) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The committed ``study.json`` by (row, steps, seed): finished runs stay finished on a fresh checkout, whose
    ``outputs/`` (the run folders) is gone."""
    if not settings.json_path.is_file():
        return {}
    return {(e["row"], e["steps"], e["seed"]): e for e in json.loads(settings.json_path.read_text())}


def steps_for(settings: StudySettings, run: Run) -> int | None:
    """The steps to train; for the wall-time row, from the finished DeS4 and supervised runs (None: not yet)."""
    if run.row != WALL_ROW:
        return run.steps
    recorded = recorded_entries(settings)
    timings = []
    for row in ("des4", "supervised"):
        folder = run_dir(settings.runs_dir, Run(row, run.steps, run.seed))
        entry = recorded.get((row, run.steps, run.seed))
        if finished_record(folder) is not None:
            timings.append(training_seconds(folder))
        elif entry is not None:
            timings.append((entry["trained_steps"], entry["wall_s"]))
        else:
            return None
    (_, des4_seconds), (supervised_steps, supervised_seconds) = timings
    return wall_matched_steps(des4_seconds, supervised_steps, supervised_seconds)


def run_study(settings: StudySettings, dry_run: bool = False) -> list[dict[str, Any]]:
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if settings.threads:
        environment["OMP_NUM_THREADS"] = str(settings.threads)
    for run in settings.runs():
        folder = run_dir(settings.runs_dir, run)
        if finished_record(folder) is not None or (run.row, run.steps, run.seed) in recorded_entries(settings):
            continue
        max_steps = steps_for(settings, run)
        if max_steps is None:
            print(f"[study] {run.name}: waits for des4 and supervised of budget {run.steps}, seed {run.seed}")
            continue
        command = train_command(settings, run, max_steps)
        print(f"[study] {run.name}: {' '.join(command)}", flush=True)
        if dry_run:
            continue
        with (settings.runs_dir / f"{run.name}.log").open("a") as log:
            completed = subprocess.run(command, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"[study] {run.name} failed (exit {completed.returncode}); see "
                             f"{settings.runs_dir / (run.name + '.log')}. Rerun the same command to resume it.")
        write_report(settings)
    return write_report(settings)


# -- the report ---------------------------------------------------------------------------------------------
def collect(settings: StudySettings) -> list[dict[str, Any]]:
    """Entries of the finished runs: from their folders, else as ``study.json`` recorded them (a fresh checkout)."""
    cpu = machine_name()
    recorded = recorded_entries(settings)
    entries = []
    for run in settings.planned():
        key = (run.row, run.steps, run.seed)
        previous_cpu = recorded[key]["cpu"] if key in recorded else cpu  # the machine it was measured on
        entry = study_entry(run, run_dir(settings.runs_dir, run), previous_cpu) or recorded.get(key)
        if entry is not None:
            entries.append(entry)
    return entries


def summarise(entries: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (row, budget): seeds, mean and spread (max − min) of val / tail mIoU, mean wall and trained steps."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((entry["row"], entry["steps"]), []).append(entry)
    summary = {}
    for key, group in groups.items():
        miou = np.array([e["val_miou"] for e in group])
        summary[key] = {
            "seeds": [e["seed"] for e in group], "val_miou": float(miou.mean()),
            "by_seed": {e["seed"]: {"val_miou": e["val_miou"], "val_tail_miou": e["val_tail_miou"]} for e in group},
            "spread": float(miou.max() - miou.min()) if len(group) > 1 else None,
            "val_tail_miou": float(np.mean([e["val_tail_miou"] for e in group])),
            "wall_s": float(np.mean([e["wall_s"] for e in group])),
            "trained_steps": float(np.mean([e["trained_steps"] for e in group])),
            "per_class_iou": {name: float(np.mean([e["per_class_iou"][name] for e in group]))
                              for name in group[0]["per_class_iou"]},
        }
    return summary


TARGETS = (  # (label, left row, right row, field, threshold) at the target budget, on means over shared seeds
    ("DeS4 − supervised, equal steps", "des4", "supervised", "val_miou", 3.0),
    ("DeS4 − supervised, equal wall time", "des4", WALL_ROW, "val_miou", 1.5),
    ("MT + CutMix − supervised", "mt-cutmix", "supervised", "val_miou", 0.0),
    ("DeS4 − MT + CutMix", "des4", "mt-cutmix", "val_miou", 0.0),
    ("DeS4 − supervised, tail classes", "des4", "supervised", "val_tail_miou", 3.0),
)


def check_targets(summary: dict[tuple[str, int], dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Each target's difference of means over the seeds both rows have run (paired, so a row that has more seeds
    so far does not compare its mean against another set of seeds)."""
    results = []
    for label, left, right, field, threshold in TARGETS:
        a, b = summary.get((left, budget)), summary.get((right, budget))
        seeds = sorted(set(a["by_seed"]) & set(b["by_seed"])) if a is not None and b is not None else []
        if not seeds:
            results.append({"target": label, "needed": threshold, "value": None, "met": None})
            continue
        value = float(np.mean([a["by_seed"][seed][field] - b["by_seed"][seed][field] for seed in seeds]))
        results.append({"target": label, "needed": threshold, "value": value, "met": value >= threshold,
                        "seeds": len(seeds)})
    return results


def render_markdown(entries: Sequence[dict[str, Any]], target_budget: int = 1000,
                    recipe: str = "configs/camvid_study.yaml") -> str:
    summary = summarise(entries)
    machines = sorted({e["cpu"] for e in entries})
    lines = ["# CamVid study: does unlabeled data pay? (issue 14)", "",
             f"Recipe `{recipe}` for every row, split `reports/camvid/split` (1/8 of CamVid train "
             "labeled), teacher mIoU (%) on CamVid val (101 images, 480×360). Tail = classes holding < 3 % of the "
             "labeled pixels. Wall = training seconds (data loading included, evaluation excluded). Spread = "
             "max − min over seeds. Written by `python benchmarks/camvid_study.py` from `study.json`.", "",
             f"Measured on: {'; '.join(machines) or '–'}.", ""]
    for budget in sorted({e["steps"] for e in entries}):
        lines += [f"## {budget} steps", "",
                  "| row | seeds | val mIoU | spread | tail mIoU | wall (s) | trained steps |", "|---|---|---|---|---|---|---|"]
        for (row, steps), item in sorted(summary.items(), key=lambda kv: _row_order(kv[0][0])):
            if steps != budget:
                continue
            per_seed = ", ".join(f"{e['val_miou']:.2f}" for e in entries if e["row"] == row and e["steps"] == steps)
            spread = "–" if item["spread"] is None else f"{item['spread']:.2f}"
            lines.append(f"| {row} | {len(item['seeds'])} ({per_seed}) | {item['val_miou']:.2f} | {spread} | "
                         f"{item['val_tail_miou']:.2f} | {item['wall_s']:.0f} | {item['trained_steps']:.0f} |")
        lines.append("")
    lines += [f"## Targets at {target_budget} steps (means over the seeds both rows ran)", "", "| target | needed | measured | met |",
              "|---|---|---|---|"]
    for result in check_targets(summary, target_budget):
        if result["value"] is None:
            lines.append(f"| {result['target']} | ≥ {result['needed']:+.1f} | not run yet | – |")
        else:
            lines.append(f"| {result['target']} | ≥ {result['needed']:+.1f} | {result['value']:+.2f} "
                         f"({result['seeds']} seed{'s' if result['seeds'] > 1 else ''}) | {'yes' if result['met'] else 'no'} |")
    if summary:
        classes = list(next(iter(summary.values()))["per_class_iou"])
        tail = entries[0]["tail_classes"]
        lines += ["", "## Per-class IoU (%), mean over seeds", "",
                  "| row | steps | " + " | ".join(f"{c}{'*' if c in tail else ''}" for c in classes) + " |",
                  "|---|---|" + "---|" * len(classes)]
        for (row, steps), item in sorted(summary.items(), key=lambda kv: (kv[0][1], _row_order(kv[0][0]))):
            lines.append(f"| {row} | {steps} | " + " | ".join(f"{item['per_class_iou'][c]:.1f}" for c in classes) + " |")
        lines += ["", "\\* tail class."]
    return "\n".join(lines) + "\n"


def _row_order(row: str) -> int:
    order = (*MAIN_ROWS, WALL_ROW, *ABLATION_ROWS)
    return order.index(row) if row in order else len(order)


def plot_curves(entries: Sequence[dict[str, Any]], path: Path) -> list[Path]:
    """Val mIoU against trained steps, one line per main row, the seed range as a band: one figure per machine
    (``path``, then ``<stem>-<n>.png``). No wall-time panel: runs that shared their CPU give no timing figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for index, machine in enumerate(sorted({e["cpu"] for e in entries}, key=lambda m: -sum(e["cpu"] == m for e in entries))):
        mine = [e for e in entries if e["cpu"] == machine]
        figure, axis = plt.subplots(figsize=(6, 4))
        for row in (*MAIN_ROWS, WALL_ROW):
            points = sorted({e["steps"] for e in mine if e["row"] == row})
            groups = [[e for e in mine if e["row"] == row and e["steps"] == steps] for steps in points]
            if not groups:
                continue
            miou = [np.array([e["val_miou"] for e in group]) for group in groups]
            x = np.array([np.mean([e["trained_steps"] for e in group]) for group in groups])
            (line,) = axis.plot(x, [v.mean() for v in miou], marker="o", label=row)
            axis.fill_between(x, [v.min() for v in miou], [v.max() for v in miou], alpha=0.2, color=line.get_color())
        axis.set(xlabel="trained steps", ylabel="CamVid val mIoU (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.suptitle(f"CamVid 1/8: teacher mIoU on {machine}\n(mean over seeds, band: min–max)", fontsize=9)
        figure.tight_layout()
        target = path if index == 0 else path.with_name(f"{path.stem}-{index}.png")
        temporary = target.with_name(f".tmp-{target.name}")
        figure.savefig(temporary, dpi=100, format="png")
        plt.close(figure)
        os.replace(temporary, target)
        paths.append(target)
    return paths


def report_labels(settings: StudySettings) -> tuple[int, str]:
    """The budget the targets are read at (1000 where planned, else the largest) and the recipe's name."""
    recipe = settings.recipe.resolve()
    name = str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(settings.recipe)
    return (1000 if 1000 in settings.budgets else max(settings.budgets)), name


def write_report(settings: StudySettings) -> list[dict[str, Any]]:
    entries = collect(settings)
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    temporary = settings.json_path.with_name(f".tmp-{settings.json_path.name}")
    temporary.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(temporary, settings.json_path)
    stem = settings.json_path.stem
    (settings.report_dir / f"{stem}.md").write_text(render_markdown(entries, *report_labels(settings)))
    if entries:
        plot_curves(entries, settings.report_dir / f"{stem}_curves.png")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arguments(parser, recipe=REPO / "configs" / "camvid_study.yaml", runs_dir=REPO / "outputs" / "camvid_study",
                      seeds=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 1000, 2000])
    parser.add_argument("--tag", default="", help="another machine's study (e.g. h100): study-<tag>.json and runs")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--rows", nargs="+", choices=list(ROW_ARGS), default=[], help="train only these rows (default: all); the report keeps the other rows' finished runs")
    args, extra = parser.parse_known_args(argv)
    extra = [value for value in extra if value != "--"]
    for flag, value in (("--recipe", args.recipe), ("--split-dir", args.split_dir)):
        if not Path(value).exists():
            parser.exit(2, f"{parser.prog}: {flag} {value} does not exist\n")
    if any(budget < 1 for budget in args.budgets) or not args.seeds:
        parser.exit(2, f"{parser.prog}: --budgets must be positive step counts and --seeds non-empty\n")
    runs_dir = Path(args.runs_dir) if not args.tag else Path(args.runs_dir) / args.tag
    settings = StudySettings(recipe=Path(args.recipe), split_dir=Path(args.split_dir), runs_dir=runs_dir,
                             report_dir=Path(args.report_dir), budgets=tuple(args.budgets), seeds=tuple(args.seeds),
                             tag=args.tag, extra_args=tuple(extra), data_root=args.data_root, threads=args.threads,
                             rows=tuple(args.rows))
    entries = write_report(settings) if args.summary_only else run_study(settings, dry_run=args.dry_run)
    if not args.dry_run:
        print(render_markdown(entries, *report_labels(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
