"""``reports/camvid/ceiling.{json,md}`` and ``ceiling_curves.png`` from the ceiling study's records (issue 30).

mIoU over every machine's runs (a session gets whichever machine is free, so a row's seeds and budgets come from
several); seconds one machine at a time, in a section per ``cpu``, and only for runs that had the CPU to themselves
(``shared_cpu`` false).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ORDER = ("supervised", "mt-cutmix", "des4")
MARKERS = "o^Dv<>ph"  # machine A, B, …
FRACTION_ORDER = ("1/32", "1/8", "full")
TARGETS = (  # (label, fraction, left row, right row, threshold or None: no target), on val, paired by seed
    ("DeS4 − supervised at 1/32", "1/32", "des4", "supervised", 5.0),
    ("DeS4 − supervised at 1/8", "1/8", "des4", "supervised", 3.0),
    ("DeS4 − MT + CutMix at 1/32", "1/32", "des4", "mt-cutmix", 0.0),
    ("DeS4 − MT + CutMix at 1/8", "1/8", "des4", "mt-cutmix", 0.0),
    ("DeS4 − supervised at 1/8, equal compute", "1/8", "des4", "supervised+equal-compute", 1.5),
    ("DeS4 − supervised at 1/32, equal compute", "1/32", "des4", "supervised+equal-compute", None),
)
TARGET_SEEDS = 3  # a target is judged over 3 paired seeds (issue 30); fewer say how far it has got, not "met"


def _atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _met(reached: bool, seeds: int) -> str:
    """A target's verdict: judged only once it has its 3 seeds."""
    return ("yes" if reached else "no") if seeds >= TARGET_SEEDS else f"pending ({seeds} of {TARGET_SEEDS} seeds)"


def val_groups(records: Sequence[dict[str, Any]], split: str = "val") -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The ``split``'s records by (fraction, row)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["eval_split"] == split:
            groups.setdefault((r["fraction"], r["row"]), []).append(r)
    return groups


def paired_differences(groups: dict[tuple[str, str], list[dict[str, Any]]], fraction: str, left: str, right: str,
                       field: str = "val_miou") -> dict[int, float]:
    """Seed → ``left − right`` over the seeds both rows ran (and recorded ``field``), in seed order."""
    a = {r["seed"]: r[field] for r in groups.get((fraction, left), []) if r.get(field) is not None}
    b = {r["seed"]: r[field] for r in groups.get((fraction, right), []) if r.get(field) is not None}
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def paired_gap(groups: dict[tuple[str, str], list[dict[str, Any]]], fraction: str, left: str, right: str,
               field: str = "val_miou") -> tuple[float | None, int]:
    """Mean over the seeds both rows ran (and recorded ``field``) of ``left − right``, paired by seed; how many seeds."""
    differences = paired_differences(groups, fraction, left, right, field)
    return (float(np.mean(list(differences.values()))), len(differences)) if differences else (None, 0)


def options_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Each option's dev gain over its row's baseline (trained at the options' commit, or the search's run where its
    commit trains alike to the byte), paired by seed (SPEC §2.9; adopt what helps over 3 seeds)."""
    if not records:
        return []
    lines = ["", "## Options on the dev split at 1/8 (against the row's baseline, trained alike to the byte; paired by seed)",
             "", "| row | option | seeds | dev mIoU | gain | tail gain | student gain |", "|---|---|---|---|---|---|---|"]
    groups = val_groups(records, "dev")
    for fraction, row in sorted((key for key in groups if not key[1].endswith("+baseline")),
                                key=lambda key: (ORDER.index(key[1].partition("+")[0]), key[1])):
        base = row.partition("+")[0] + "+baseline"
        gains = [paired_gap(groups, fraction, row, base, field) for field in ("dev_miou", "dev_tail_miou", "student_miou")]
        if not gains[0][1]:
            continue
        lines.append(f"| {row.partition('+')[0]} | {row.partition('+')[2]} | {gains[0][1]} | "
                     f"{np.mean([r['dev_miou'] for r in groups[fraction, row]]):.2f} | "
                     + " | ".join("–" if gain is None else f"{gain:+.2f}" for gain, _ in gains) + " |")
    return lines


def search_grid(dev: Sequence[dict[str, Any]], min_gain: float, max_budget: int) -> list[str]:
    """The dev search at a glance: a row's teacher (the exported network) and student per budget, the chosen budget
    (the first whose doubling gained less than ``min_gain``, else ``max_budget``, marked "cap") in bold."""
    budgets = sorted({r["steps"] for r in dev})
    lines = ["| fraction | row | " + " | ".join(f"{b} steps" for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
    for fraction, row in dict.fromkeys((r["fraction"], r["row"]) for r in dev):
        runs = {r["steps"]: r for r in dev if (r["fraction"], r["row"]) == (fraction, row)}
        chosen = next((b for b in budgets if b in runs and 2 * b in runs
                       and runs[2 * b]["dev_miou"] - runs[b]["dev_miou"] < min_gain), None)
        capped = chosen is None and max_budget in runs
        chosen = max_budget if capped else chosen
        for network, field in (("teacher", "dev_miou"), ("student", "student_miou")):
            if not any(run.get(field) is not None for run in runs.values()):
                continue
            cells = ["" if runs.get(b, {}).get(field) is None else f"{runs[b][field]:.2f}" for b in budgets]
            cells = [f"**{cell}**{' (cap)' * capped}" if b == chosen and network == "teacher" else cell
                     for b, cell in zip(budgets, cells)]
            label = row if row == "supervised" else f"{row} ({network})"
            lines.append(f"| {fraction} | {label} | " + " | ".join(cells) + " |")
    return lines


def machine_letters(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A letter per machine (``cpu`` field), in sorted order, for the tables' machine columns."""
    return {machine: chr(ord("A") + i) for i, machine in enumerate(sorted({r["cpu"] for r in records}))}


def by_budget(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["eval_split"] != "dev", FRACTION_ORDER.index(r["fraction"]),
                                          ORDER.index(r["row"].partition("+")[0]), r["row"], r["steps"], r["seed"]))


def accuracy_sections(records: Sequence[dict[str, Any]], min_gain: float, max_budget: int,
                      letters: dict[str, str]) -> list[str]:
    """The search grid, the options, val and the targets, over every machine's runs (mIoU does not depend on the
    machine; seconds do, and stay in :func:`machine_section`)."""
    dev = [r for r in by_budget(records) if r["eval_split"] == "dev"]
    search, options = [r for r in dev if "+" not in r["row"]], [r for r in dev if "+" in r["row"]]
    lines = [f"## Budget search on the dev split (seed 0; doubling stops below +{min_gain} points)", "",
             *search_grid(search, min_gain, max_budget), "",
             f"**Bold**: the budget chosen; \"(cap)\": still gaining at the largest budget, {max_budget} steps, the "
             "longest run that ends within one session (a session usually lands on a new machine, with no run folders; a "
             "run resumes from its checkpoints only where the next session finds the same machine). Each "
             "run, with its machine and seconds, is in the machine sections below."]
    lines += options_table(options)
    groups = val_groups(records)
    lines += ["", "## Val at the chosen budgets (3 seeds; spread = max − min)", ""]
    if not groups:
        return lines + ["No val run has finished yet.", ""]
    lines += ["| fraction | row | steps | seeds | val mIoU | spread | tail mIoU | sup-eq | machines |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (fraction, row), group in sorted(groups.items(), key=lambda kv: (FRACTION_ORDER.index(kv[0][0]),
                                                                         ORDER.index(kv[0][1].partition("+")[0]))):
        values = [r["val_miou"] for r in group]
        spread = max(values) - min(values) if len(values) > 1 else None  # one seed has no spread
        lines.append(f"| {fraction} | {row} | {group[0]['steps']} | {len(group)} | {np.mean(values):.2f} | "
                     f"{_fmt(spread)} | {np.mean([r['val_tail_miou'] for r in group]):.2f} | "
                     f"{_fmt(group[0]['sup_step_equiv'], 0)} | {', '.join(sorted({letters[r['cpu']] for r in group}))} |")
    lines += ["", "## Targets (val, paired by seed)", "", "| target | needed | measured | met |", "|---|---|---|---|"]
    for label, fraction, left, right, threshold in TARGETS:
        value, seeds = paired_gap(groups, fraction, left, right)
        verdict = "–" if value is None or threshold is None else _met(value >= threshold, seeds)
        lines.append(f"| {label} | " + ("no target" if threshold is None else f"≥ {threshold:+.1f}") + " | "
                     + ("not run yet" if value is None else f"{value:+.2f} ({seeds} seed{'s' * (seeds > 1)})")
                     + f" | {verdict} |")
    full, des4 = groups.get(("full", "supervised")), groups.get(("1/8", "des4"))
    if full and des4:
        share = np.mean([r["val_miou"] for r in des4]) / np.mean([r["val_miou"] for r in full])
        met = _met(share >= 0.9, min(len(des4), len(full)))
        lines.append(f"| DeS4 at 1/8 ÷ full supervision | ≥ 90 % | {100 * share:.1f} % | {met} |")
    return lines + [""]


def supervised_step_cpu(records: Sequence[dict[str, Any]]) -> dict[int | None, tuple[float, int]]:
    """One machine's CPU seconds per supervised step, by torch threads: the median over its supervised runs that had
    the CPU to themselves, and how many there were."""
    per_step: dict[int | None, list[float]] = {}
    for r in records:
        if r["row"].partition("+")[0] == "supervised" and not r["shared_cpu"] and r.get("cpu_s"):
            per_step.setdefault(r.get("threads"), []).append(r["cpu_s"] / r["steps"])
    return {threads: (float(np.median(values)), len(values)) for threads, values in per_step.items()}


def machine_section(records: Sequence[dict[str, Any]], machine: str, letter: str,
                    previous: dict[tuple[str, str, int], float]) -> list[str]:
    """Every run one machine trained, with its seconds where it had the CPU to itself; the gain over half the budget
    is the search's, whichever machine ran the half (``previous``: (fraction, row, steps) → dev mIoU). "sup-eq by CPU
    s" checks the benchmark's step-cost ratios on this machine: a run's CPU seconds over a supervised step's."""
    first, base = records[0], supervised_step_cpu(records)
    lines = [f"### Machine {letter}: {machine}", "",
             f"Frames {first['resolution']} (CamVid's are 480×360; kept in memory), crops {first['crop']}², batch "
             f"{first['batch']} (labeled + unlabeled), fp32, commit(s) {', '.join(sorted({r['commit'] for r in records}))}.",
             "", "| split | fraction | row | steps | seed | mIoU | gain over half | tail mIoU | sup-eq | sup-eq by CPU s "
             "| CPU s | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in by_budget(records):
        split = r["eval_split"]
        half = previous.get((r["fraction"], r["row"], r["steps"] // 2)) if split == "dev" and r["seed"] == 0 else None
        miou = r[f"{split}_miou"]
        per_step = base.get(r.get("threads"), (None, 0))[0]
        by_cpu = "–" if per_step is None else _fmt(r["cpu_s"] / per_step, 0)
        seconds = ("shared",) * 3 if r["shared_cpu"] else (by_cpu, _fmt(r["cpu_s"], 0), _fmt(r["wall_s"], 0))
        lines.append(f"| {split} | {r['fraction']} | {r['row']} | {r['steps']} | {r['seed']} | {miou:.2f} | "
                     f"{'–' if half is None else f'{miou - half:+.2f}'} | {r[f'{split}_tail_miou']:.2f} | "
                     f"{_fmt(r['sup_step_equiv'], 0)} | {' | '.join(seconds)} |")
    measured = [f"{'default' if threads is None else threads} thread{'s' * (threads != 1)}: {seconds:.3f} s from "
                f"{count} run{'s' * (count > 1)}" for threads, (seconds, count) in sorted(base.items(),
                                                                                      key=lambda kv: kv[0] or 0)]
    lines += ["", "sup-eq by CPU s: the run's CPU seconds ÷ this machine's CPU seconds per supervised step at the same "
              f"torch threads (the median over its supervised runs alone on the CPU: {', '.join(measured) or 'none yet, so –'}"
              "). Where it exceeds sup-eq, the run cost this machine more than the step-cost ratios count."]
    return lines + [""]


def plot(records: Sequence[dict[str, Any]], title: str, path: Path, letters: dict[str, str]) -> None:
    """Dev mIoU against supervised-step equivalents (search, seed 0; a marker per machine) and val points with the
    seed range."""
    title += " (dev markers: " + ", ".join(f"{MARKERS[i]} {letter}" for i, letter in enumerate(letters.values())) + ")"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [f for f in FRACTION_ORDER if any(r["fraction"] == f for r in records)]
    figure, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False)
    for axis, fraction in zip(axes[0], fractions, strict=True):
        for row in ORDER:
            dev = sorted((r for r in records if r["fraction"] == fraction and r["row"] == row and r["eval_split"] == "dev"
                          and r["sup_step_equiv"] is not None), key=lambda r: r["steps"])
            if not dev:
                continue
            (line,) = axis.plot([r["sup_step_equiv"] for r in dev], [r["dev_miou"] for r in dev], label=f"{row} (dev)")
            for machine, letter in letters.items():  # each point's machine, by its marker
                mine = [r for r in dev if r["cpu"] == machine]
                axis.scatter([r["sup_step_equiv"] for r in mine], [r["dev_miou"] for r in mine], color=line.get_color(),
                             marker=MARKERS[ord(letter) - ord("A")])
            groups = val_groups([r for r in records if r["fraction"] == fraction and r["row"].partition("+")[0] == row])
            for (_, name), group in sorted(groups.items()):  # the row at its budget (and supervised at DeS4's compute)
                val = [r["val_miou"] for r in group]
                axis.errorbar([group[0]["sup_step_equiv"]], [np.mean(val)], fmt="s", color=line.get_color(), capsize=4,
                              yerr=[[np.mean(val) - min(val)], [max(val) - np.mean(val)]], label=f"{name} (val, seeds)")
        axis.set_xscale("log")
        axis.set_xlabel("supervised-step equivalents")
        axis.set_ylabel("mIoU (%)")
        axis.set_title(f"CamVid {fraction} labeled")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    temporary = path.with_name(f".tmp-{path.name}")
    figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    os.replace(temporary, path)


def write_report(records: Sequence[dict[str, Any]], report_dir: Path, ratios: dict[str, Any], min_gain: float,
                 max_budget: int) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    _atomic(report_dir / "ceiling.json", json.dumps(list(records), indent=1) + "\n")
    lines = ["# CamVid ceiling study (issue 30)", "",
             "Supervised, MT + CutMix and DeS4, each trained until doubling its budget gains less than "
             f"{min_gain} points on the dev split, then at that budget with 3 seeds on val (101 frames). Written by "
             "`python benchmarks/camvid_ceiling.py` (recipe `configs/camvid_ceiling.yaml`; splits in `splits/`).", ""]
    if ratios:
        t = ratios["training"]
        lines += [f"Step-cost ratios (`benchmarks/benchmark.py --only training`, on {ratios['machine']['cpu_model']}): "
                  f"MT + CutMix {t['mean_teacher_over_supervised']:.2f}× and DeS4 {t['des4_over_supervised']:.2f}× a "
                  f"supervised step (batch {t['batch_size']} + {t['unlabeled_batch_size']}, crop {t['crop_size']}).", ""]
    else:
        lines += ["No `step_ratios.json` yet: supervised-step equivalents of the semi-supervised rows are blank.", ""]
    letters = machine_letters(records)
    lines += ["Each session is lent whichever machine is free, and a run folder outlives its session only where the next "
              "session finds the same machine, so a row's runs "
              "come from several machines (" + "; ".join(f"{letter} = {machine}" for machine, letter in letters.items())
              + "). mIoU is pooled over them: it depends on the CPU no more than on the run's noise (see "
              "`README.md`, \"mIoU across machines\"). Supervised-step equivalents (sup-eq) come from the one set of "
              "step-cost ratios above. Seconds are never pooled: they are in each machine's section, and only for runs "
              "that had the CPU to themselves (`shared` otherwise).", ""]
    lines += accuracy_sections(records, min_gain, max_budget, letters)
    lines += ["## Every run, by machine", ""]
    previous = {(r["fraction"], r["row"], r["steps"]): r["dev_miou"] for r in records
                if r["eval_split"] == "dev" and r["seed"] == 0}
    for machine, letter in letters.items():
        lines += machine_section([r for r in records if r["cpu"] == machine], machine, letter, previous)
    if records:
        plot(records, f"Ceiling study: mIoU from machines {', '.join(letters.values())}; sup-eq by the ratios of "
                      f"{ratios['machine']['cpu_model'] if ratios else 'no machine yet'}", report_dir / "ceiling_curves.png", letters)
        lines += ["![the ceiling study's curves](ceiling_curves.png)", ""]
    _atomic(report_dir / "ceiling.md", "\n".join(lines) + "\n")
