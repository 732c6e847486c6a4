#!/usr/bin/env python
"""Which frames to label next, measured (issue 33): from the ceiling study's 1/32 split (11 frames) and a DeS4
teacher trained on it, add 35 frames (reaching 46, the 1/8 count) three ways, then retrain DeS4 on each.

Arms: ``suggested`` (des4-suggest's default: class-balanced uncertainty spread over the embeddings),
``uncertainty`` (``--no-diversity``: the highest scores alone) and ``random-0/1/2`` (three seeded uniform draws).
Each arm's split is written under ``reports/camvid/suggest/splits/<arm>/<dev|val>/`` (committed, with des4-suggest's
``ranking.csv`` for the ranked arms), so that a fresh machine resumes with the same picks; each run is the ceiling study's DeS4 run
(``configs/camvid_ceiling.yaml``, from the ImageNet encoder, ``--steps``, seeds 0–2), trained, resumed and accounted
by the ceiling driver's own code (``camvid_ceiling.Study``), so that its records carry the same fields.

    nice python benchmarks/camvid_suggest_study.py --eval-split dev --steps N   # 1. on dev, to choose
    nice python benchmarks/camvid_suggest_study.py --eval-split val --steps N   # 2. on val, to report

The model that ranks is the 1/32 DeS4 run (seed 0) at the ceiling study's chosen budget N: the ceiling study's own
(``<ceiling-runs>/<split>/1_32/des4-N-seed0/best``) once it has trained it, else the same run trained here first as the
arm ``start`` (same split, recipe and seed), or ``--model``.

Writes ``reports/camvid/suggest.{json,md}`` (per split: one record per run, and per arm the mean and spread over seeds
and draws, val or dev mIoU and tail mIoU) and the contact sheet of the suggested frames
(``reports/camvid/suggested-<split>.jpg``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from camvid_ceiling import REPO, Study, read_ids, write_split  # this file's folder is on sys.path
from camvid_ceiling_report import paired_differences, paired_gap
from PIL import Image

ADDED = 35  # 11 + 35 = 46 frames, the 1/8 count
ARMS = ("suggested", "uncertainty", "random-0", "random-1", "random-2")
START = "start"  # the 11 frames alone: the model the ranked arms rank with, when trained here (no --model)
SEEDS = (0, 1, 2)
NEAR = 60  # frame numbers: CamVid's labeled frames are 30 apart (1 s of video), so two picks this close are 2 s apart


def pool_folder(images: Path, ids: list[str], out: Path) -> Path:
    """A folder of links to the pool's frames: what des4-suggest ranks."""
    out.mkdir(parents=True, exist_ok=True)
    for id_ in ids:
        link = out / f"{id_}.jpg"
        if not link.exists():
            link.symlink_to((images / f"{id_}.jpg").resolve())
    return out


def arm_split(arm: str, labeled: list[str], pool: list[str], args: argparse.Namespace, folder: Path) -> None:
    """``folder/{labeled,unlabeled}.txt`` of one arm: the 11 labeled frames plus its 35 picks."""
    if (folder / "labeled.txt").is_file():
        return
    if arm.startswith("random-"):
        rng = np.random.default_rng(int(arm.split("-")[1]))
        picks = sorted(rng.choice(sorted(pool), size=ADDED, replace=False).tolist())
    else:
        if not (args.model / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: not a trained model folder, and the {arm} split is not in "
                             f"{folder} yet (leave --model out to train the model here)")
        out = args.runs_dir / "suggest" / args.eval_split / arm
        known = out.parent / "labeled.txt"
        known.parent.mkdir(parents=True, exist_ok=True)
        known.write_text("".join(f"{i}\n" for i in labeled))
        command = [sys.executable, str(REPO / "scripts" / "suggest.py"), "--model", str(args.model), "--images",
                   str(pool_folder(args.data_root / "JPEGImages", pool, out.parent / "pool")), "--labeled", str(known),
                   "--budget", str(ADDED), "--out", str(out), "--no-progress",
                   *(["--no-diversity"] if arm == "uncertainty" else [])]
        subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
        picks = read_ids(out / "labeled-next.txt")[len(labeled):]
    chosen = set(labeled) | set(picks)
    write_split(folder, f"camvid-suggest-{arm}", sorted(chosen), [i for i in pool if i not in chosen])
    if not arm.startswith("random-"):
        shutil.copy(out / "ranking.csv", folder / "ranking.csv")  # beside the split: what the picks came from
    if arm == "suggested":  # the contact sheet, as a JPEG (the PNG of photographs is 5 MB)
        with Image.open(out / "suggested.png") as sheet:
            sheet.convert("RGB").save(args.report_dir / f"suggested-{args.eval_split}.jpg", quality=85)


def summarise(records: list[dict[str, Any]], split: str) -> dict[str, dict[str, float]]:
    """Per arm (the random draws pooled): mean and spread (max − min) of mIoU and tail mIoU over its runs."""
    summary = {}
    for arm in (START, "suggested", "uncertainty", "random"):
        runs = [r for r in records if r["fraction"].partition("-")[0] == arm]
        if runs:
            miou = [r[f"{split}_miou"] for r in runs]
            tail = [r[f"{split}_tail_miou"] for r in runs]
            summary[arm] = {"runs": len(runs), "miou": float(np.mean(miou)), "miou_spread": float(np.ptp(miou)),
                            "tail_miou": float(np.mean(tail)), "tail_miou_spread": float(np.ptp(tail))}
    return summary


def gaps_to_random(records: list[dict[str, Any]], split: str
                   ) -> dict[str, tuple[float | None, float | None, int, dict[int, float]]]:
    """Per ranked arm: (mIoU gain, tail gain, seeds, each seed's mIoU gain) over random picks, paired by seed (random:
    its draws' mean at that seed), so that a measurement still running compares like with like."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_arm.setdefault(record["fraction"].partition("-")[0], []).append(record)
    fields = (f"{split}_miou", f"{split}_tail_miou")
    random_runs = by_arm.pop("random", [])
    draws = {seed: [r for r in random_runs if r["seed"] == seed] for seed in SEEDS}
    groups = {("", arm): runs for arm, runs in by_arm.items()}
    groups["", "random"] = [{"seed": seed, **{f: float(np.mean([r[f] for r in runs])) for f in fields}}
                            for seed, runs in draws.items() if runs]
    gaps = {}
    for arm in ("suggested", "uncertainty"):
        (gain, seeds), (tail, _) = (paired_gap(groups, "", arm, "random", field) for field in fields)
        gaps[arm] = (gain, tail, seeds, paired_differences(groups, "", arm, "random", fields[0]))
    return gaps


def pick_spread(out: Path, split: str) -> list[str]:
    """Markdown rows: per arm, its added frames per video sequence and how many lie within ``NEAR`` frame numbers of
    another of its picks (near-duplicates, which the diversity pick is there to avoid)."""
    start_file = out / "ceiling" / "splits" / "1_32" / split / "labeled.txt"
    start = set(read_ids(start_file)) if start_file.is_file() else set()
    counts = {}
    for arm in ARMS:
        path = out / "suggest" / "splits" / arm / split / "labeled.txt"
        if path.is_file():
            frames: dict[str, list[int]] = {}
            for sequence, number in (re.fullmatch(r"(.*?)_?f?(\d+)", i).groups() for i in read_ids(path) if i not in start):
                frames.setdefault(sequence, []).append(int(number))
            near = sum(any(0 < abs(a - b) <= NEAR for b in numbers) for numbers in frames.values() for a in numbers)
            counts[arm] = (frames, near)
    if not counts:
        return []
    sequences = sorted({sequence for frames, _ in counts.values() for sequence in frames})
    return ["", f"How the added frames spread over the video sequences, and how many lie within {NEAR} frame numbers "
            "(2 s of video) of another frame the same arm added:", "",
            f"| arm | {' | '.join(sequences)} | within 2 s of another |", "|---|" + "---|" * (len(sequences) + 1),
            *(f"| {arm} | {' | '.join(str(len(frames.get(s, []))) for s in sequences)} | {near} |"
              for arm, (frames, near) in counts.items())]


def write_report(records: list[dict[str, Any]], split: str, out: Path, machine: str) -> None:
    """``out/suggest.{json,md}``: this split's runs and summary, beside those already written for the other split. The
    machines are the runs' own (``machine`` where a run names none): mIoU pools over them, as the ceiling study's."""
    path = out / "suggest.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    machines = "; ".join(sorted({r.get("cpu") or machine for r in records}))
    report[split] = {"machine": machines, "summary": summarise(records, split), "runs": records}
    path.write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# Which frames to label next: des4-suggest against random picks (issue 33)", "",
             f"From the ceiling study's 1/32 split (11 frames), {ADDED} frames added three ways, then DeS4 retrained at "
             "the ceiling recipe; mIoU of the teacher, 3 seeds (random: 3 draws × 3 seeds). Dev chooses the default, "
             "val reports; start = the 11 frames alone, the model that ranks (when trained by this script). Written by "
             "`python benchmarks/camvid_suggest_study.py`."]
    for name in ("dev", "val"):
        if name not in report:
            continue
        summary = report[name]["summary"]
        machines = report[name]["machine"]
        pooled = " (mIoU pooled over machines: `README.md`, \"mIoU across machines\")" if ";" in machines else ""
        lines += ["", f"## {name} (machine{'s' * bool(pooled)}: {machines}){pooled}", "",
                  "| arm | runs | mIoU | spread | tail mIoU | spread |", "|---|---|---|---|---|---|"]
        lines += [f"| {arm} | {s['runs']} | {s['miou']:.2f} | {s['miou_spread']:.2f} | {s['tail_miou']:.2f} | "
                  f"{s['tail_miou_spread']:.2f} |" for arm, s in summary.items()]
        for arm, (gain, tail, seeds, per_seed) in gaps_to_random(report[name]["runs"], name).items():
            targets = (" (target ≥ +2.0)", " (target ≥ +4.0)") if arm == "suggested" else ("", "")  # issue 33's
            if seeds:
                lines += ["", f"{arm.capitalize()} − random, paired over the {seeds} seed(s) both have (random: the "
                          f"mean of its draws): {gain:+.2f} mIoU{targets[0]} (seed by seed: "
                          f"{' / '.join(f'{v:+.2f}' for v in per_seed.values())}), {tail:+.2f} tail mIoU{targets[1]}."]
        lines += pick_spread(out, name)
        if (out / f"suggested-{name}.jpg").is_file():
            lines += ["", f"![the suggested frames ({name})](suggested-{name}.jpg)"]
    (out / "suggest.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="the DeS4 teacher trained on the 1/32 split (default: the ceiling "
                        f"study's run once trained, else that run trained here first as the arm {START!r})")
    parser.add_argument("--steps", type=int, help="the ceiling study's DeS4 budget at 1/32 (required to train)")
    parser.add_argument("--eval-split", choices=("dev", "val"), help="required to train")
    parser.add_argument("--recipe", default=str(REPO / "configs" / "camvid_ceiling.yaml"))
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get(
        "DES4_CAMVID_ROOT", str(REPO.parent / "shared" / "data" / "camvid"))))
    parser.add_argument("--ceiling-runs", type=Path, default=REPO / "outputs" / "camvid_ceiling",
                        help="the ceiling study's run folder (its dev_data/ is reused)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "outputs" / "camvid_suggest")
    parser.add_argument("--report-dir", type=Path, default=REPO / "reports" / "camvid")
    parser.add_argument("--summary-only", action="store_true", help="rewrite suggest.{json,md} from the runs recorded "
                        "in suggest.json (its summaries and tables as this code draws them), train nothing")
    args = parser.parse_args(argv)
    report = args.report_dir / "suggest.json"
    if args.summary_only:
        for split, part in (json.loads(report.read_text()) if report.is_file() else {}).items():
            write_report(part["runs"], split, args.report_dir, part["machine"])
        return 0
    if args.steps is None or args.eval_split is None:
        parser.error("--steps and --eval-split are required (or --summary-only)")
    for flag, path in (("--data-root", args.data_root), ("--ceiling-runs", args.ceiling_runs / "dev_data")):
        if not path.exists():
            parser.exit(2, f"{parser.prog}: {flag}: {path} does not exist\n")

    ceiling_splits = REPO / "reports" / "camvid" / "ceiling" / "splits"
    study = Study(argparse.Namespace(recipe=args.recipe, data_root=args.data_root, runs_dir=args.runs_dir,
                                     report_dir=ceiling_splits.parent, min_gain=0.5, extra=[]))  # its step ratios
    # The arms' splits are committed beside the report: the picks outlive the model and the machine that made them
    study.dev_root, study.splits_dir = args.ceiling_runs / "dev_data", args.report_dir / "suggest" / "splits"
    study.splits_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ceiling_splits / "selection.json", study.splits_dir / "selection.json")  # the tail classes
    start = ceiling_splits / "1_32" / args.eval_split
    labeled, pool = read_ids(start / "labeled.txt"), read_ids(start / "unlabeled.txt")
    done = {(r["fraction"], r["seed"]): r for r in (json.loads(report.read_text()).get(args.eval_split, {}).get("runs", [])
                                                    if report.is_file() else []) if r["steps"] == args.steps}
    records = dict(done)  # (arm, seed) → record: every run recorded before stays in the report while others train
    ceiling_model = args.ceiling_runs / args.eval_split / "1_32" / f"des4-{args.steps}-seed0" / "best"
    if args.model is None and (ceiling_model / "config.json").is_file():
        args.model = ceiling_model
    if args.model is None:  # the ceiling study's run of the same split, recipe and seed, trained here
        folder = study.folder(args.eval_split, START, "des4", args.steps, 0)
        ranked_to_pick = [arm for arm in ARMS if not arm.startswith("random-")
                          and not (study.splits_dir / arm / args.eval_split / "labeled.txt").is_file()]
        if not (folder / "results.json").is_file() and ranked_to_pick:  # committed picks need no model
            if not (study.splits_dir / START / args.eval_split).is_dir():
                shutil.copytree(start, study.splits_dir / START / args.eval_split)
            study._train(folder, args.eval_split, START, "des4", args.steps, 0)
        if (folder / "results.json").is_file():  # else recorded on an earlier machine, and its picks committed
            records[START, 0] = study.record(folder, args.eval_split, START, "des4", args.steps, 0)
            write_report(list(records.values()), args.eval_split, args.report_dir, study.machine)
        args.model = folder / "best"
    for arm in ARMS:
        arm_split(arm, labeled, pool, args, study.splits_dir / arm / args.eval_split)
    for seed in SEEDS:  # seed-major: every arm's seed 0 first, so a stopped measurement still compares the arms
        for arm in ARMS:
            folder = study.folder(args.eval_split, arm, "des4", args.steps, seed)
            if (arm, seed) in done and not (folder / "results.json").is_file():  # recorded on an earlier machine
                continue
            if not (folder / "results.json").is_file():
                study._train(folder, args.eval_split, arm, "des4", args.steps, seed)
            records[arm, seed] = study.record(folder, args.eval_split, arm, "des4", args.steps, seed)
            write_report(list(records.values()), args.eval_split, args.report_dir, study.machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
