"""``reports/test_tier.{json,md}``: how long the fast tier (``bash scripts/test.sh -m "not slow"``) takes (goal: 60 s,
issue 31), on which CPU, and whether other processes used the CPU meanwhile: such a run is marked shared and gives no
timing figure. Each call adds one row; figures compare only between rows of one machine.

    python benchmarks/test_tier.py

While the study's long runs train, pause them for the minute it takes (they resume where they were):
    kill -STOP $(pgrep -f scripts/train.py); python benchmarks/test_tier.py; kill -CONT $(pgrep -f scripts/train.py)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

# this file's folder is on sys.path
from camvid_ceiling import SHARED_CPU_SHARE, busy_seconds, children_seconds
from camvid_study import machine_name

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 60.0
COMMAND = ["bash", "scripts/test.sh", "-m", "not slow", "-p", "no:cacheprovider"]


def measure() -> dict:
    """One run of the fast tier: pytest's own seconds, the whole command's wall and CPU seconds, and the CPU seconds
    other processes used meanwhile."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    busy, children, start = busy_seconds(), children_seconds(), time.monotonic()
    done = subprocess.run(COMMAND, cwd=ROOT, capture_output=True, text=True)
    wall, own = time.monotonic() - start, children_seconds() - children
    others = max(busy_seconds() - busy - own, 0.0)
    summary = re.search(r"^(.*) in ([\d.]+)s", done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    if done.returncode != 0 or summary is None:
        sys.exit(f"{' '.join(COMMAND)} failed (exit {done.returncode}): no timing recorded\n{done.stdout[-2000:]}")
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit.strip() + ("+" if dirty else ""),
            "machine": machine_name(), "pytest_s": float(summary.group(2)), "wall_s": round(wall, 1),
            "cpu_s": round(own, 1), "others_cpu_s": round(others, 1), "shared": others > SHARED_CPU_SHARE * wall,
            "outcome": summary.group(1).strip("= ")}


def render(rows: list[dict]) -> str:
    lines = ["# Fast tier: `bash scripts/test.sh -m \"not slow\"`", "",
             f"Goal: pytest's time ≤ {GOAL_S:g} s (issue 31), on a CPU nothing else uses. Written by "
             "`python benchmarks/test_tier.py`, one row a run, one table a machine. A row whose run shared the CPU "
             f"(others used more than {SHARED_CPU_SHARE:.0%} of a core) gives no timing figure."]
    for machine in dict.fromkeys(row["machine"] for row in rows):  # in the order of each machine's first run
        lines += ["", f"## {machine}", "", "| date | commit | pytest s | wall s | CPU s | others' CPU s | goal | tests |",
                  "|---|---|---|---|---|---|---|---|", *(table_row(row) for row in rows if row["machine"] == machine)]
    return "\n".join(lines) + "\n"


def table_row(row: dict) -> str:
    goal = "shared: no figure" if row["shared"] else ("met" if row["pytest_s"] <= GOAL_S else "missed")
    return (f"| {row['date']} | {row['commit']} | {row['pytest_s']:.2f} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
            f"{row['others_cpu_s']:.1f} | {goal} | {row['outcome']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="folder of test_tier.{json,md}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "test_tier.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows.append(measure())
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "test_tier.md").write_text(render(rows))
    print(render(rows[-1:]))


if __name__ == "__main__":
    main()
