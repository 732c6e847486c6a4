"""Checkpoints of a training run (SPEC: resumable to the step): what is saved with each one, the checks that make a
torn or foreign checkpoint fail loudly, the fall-back past damaged ones, and the trimmed log of a resumed run. The
functions take the :class:`~des4_hf.training.trainer.Trainer` whose state they save or restore."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import atomic_write, atomic_write_json, fsync_tree

if TYPE_CHECKING:
    from ..evaluation import EvaluationResult
    from ..modeling_des4 import Des4ForSemanticSegmentation
    from .trainer import Trainer

from ..loading import (
    CHECKPOINT_STATE as STATE_FILE,  # written last: a checkpoint folder without it is incomplete
)

#: recipe options that only a run with a teacher uses: a supervised run's record leaves them out
TEACHER_OPTIONS = ("unlabeled_batch_size", "lambda_unsupervised", "encoder_momentum", "pseudo_label_quantile",
                   "pixel_balanced_losses", "supervised_warmup", "unsupervised_rampup", "unlabeled_includes_labeled")
# What a resumed run must share with the run it continues: its data, its seed and its architecture.
RUN_KEYS = ("dataset", "seed", "method", "backbone", "output_stride", "decoder_channels", "separable_convs",
            "decoupled", "shared_head", "batch_size", "unlabeled_batch_size", "grad_accum_steps")


class ResumeError(ValueError):
    """``resume`` cannot continue: no intact checkpoint, or the options that define the run changed."""


@dataclass
class TrainerState:
    """Counters, schedule and data positions saved with every checkpoint as JSON (no pickles to trust on resume)."""

    step: int = 0
    best_miou: float = -1.0
    best_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    pseudo_label_counts: list[float] = field(default_factory=list)


def trim_log(log_path: Path, last_step: int) -> None:
    """Keep the entries of steps ≤ ``last_step`` and no line torn by a kill mid-write (a whole one ends with ``}``): a
    fresh run (0) into a used folder starts a new log, a resumed one drops the steps it is about to run again."""
    if not log_path.exists():
        return
    if last_step == 0:
        log_path.unlink()
        return
    kept = [line for line in log_path.read_text().splitlines() if line.endswith("}") and json.loads(line)["step"] <= last_step]
    atomic_write(log_path, "".join(line + "\n" for line in kept))


def _checkpoint_number(path: Path) -> int:
    return int(re.findall(r"(\d+)$", path.name)[0])


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (missing or torn state file, empty or truncated files), or None. Cheap:
    reads the JSON and the safetensors headers; :meth:`Trainer.resume` also falls back when loading itself fails."""
    from safetensors import safe_open

    state = folder / STATE_FILE
    if not state.is_file():
        return f"no {STATE_FILE} (the save did not finish)"
    try:
        saved = json.loads(state.read_text())
        missing = {"step", "trainer", "scheduler", "labeled_stream"} - set(saved)
    except (ValueError, AttributeError, TypeError):
        return f"{STATE_FILE} is not valid JSON"
    if missing:
        return f"{STATE_FILE} lacks {sorted(missing)}"
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.stat().st_size == 0:
            return f"{path.name} is empty"
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), "pt"):
                    pass
            except Exception as error:  # safetensors' own error type: a torn or truncated file
                return f"{path.name} is unreadable ({_first_line(error)})"
    return None


def save_checkpoint(self: Trainer) -> Path:
    """``save_state`` (named and pruned by Accelerate), then the JSON trainer state, written last."""
    accelerator = self.accelerator
    path = self.checkpoint_root / f"checkpoint_{accelerator.save_iteration}"
    accelerator.save_state(safe_serialization=True)
    accelerator.wait_for_everyone()  # every process's random states are written
    if self.is_main:
        fsync_tree(path)  # on disk before the state file marks the checkpoint complete
        atomic_write_json(path / STATE_FILE, {
            "step": self.state.step, "trainer": asdict(self.state), "scheduler": self.scheduler.state_dict(),
            "labeled_stream": self.labeled_stream.state_dict(),
            "unlabeled_stream": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None,
            "run": run_record(self),
        })
    accelerator.wait_for_everyone()
    return path

def run_record(self: Trainer) -> dict[str, Any]:
    """What defines this run (:data:`RUN_KEYS`, the split and the classes): a resume must match it."""
    return {**{key: getattr(self.config, key) for key in RUN_KEYS}, "split": self.split.name,
            "split_fingerprint": self.split.fingerprint, "class_names": list(self.class_names)}

def _check_same_run(self: Trainer, checkpoint: Path, saved: dict[str, Any]) -> None:
    if "run" not in saved:  # saved before runs were recorded: nothing to compare
        return
    current = run_record(self)
    changed = [f"{key} {saved['run'][key]!r} → {current[key]!r}" for key in current  # the keys the run recorded
               if key in saved["run"] and saved["run"][key] != current[key]]
    if changed:
        raise ResumeError(
            f"--resume: {checkpoint} belongs to a run with other {', '.join(changed)}; resume with that run's "
            "options, or start a new run with --overwrite or another --output-dir")

def resume(self: Trainer) -> None:
    """Load ``config.resume`` ("latest" or a checkpoint folder); new checkpoints are numbered after it."""
    existing = sorted(self.checkpoint_root.glob("checkpoint_*"), key=_checkpoint_number)
    self.accelerator.project_configuration.iteration = _checkpoint_number(existing[-1]) + 1 if existing else 0
    resume = self.config.resume
    if resume is None:
        return
    if resume == "latest" and not existing:
        self.print(f"resume=latest: no checkpoint under {self.checkpoint_root}; starting fresh")
        return
    # Newest first; a checkpoint torn by a crash is skipped (and named) for the next older one.
    candidates = existing[::-1] if resume == "latest" else [Path(resume)]
    skipped: list[str] = []
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            saved = json.loads((checkpoint / STATE_FILE).read_text())
            _check_same_run(self, checkpoint, saved)
            try:
                self.accelerator.load_state(str(checkpoint))
                break
            except Exception as error:  # the files passed the cheap checks but do not load: try an older one
                problem = f"does not load ({type(error).__name__}: {_first_line(error)})"
        skipped.append(f"{checkpoint.name}: {problem}")
    else:
        raise ResumeError(f"--resume {resume}: no intact checkpoint ({'; '.join(skipped)}); start over with "
                          "--overwrite, or give an intact checkpoint folder")
    if skipped:  # moved aside, so that pruning never deletes the intact checkpoint in favour of a damaged one
        damaged = self.output_dir / "damaged-checkpoints"
        self.accelerator.wait_for_everyone()
        if self.is_main:
            damaged.mkdir(exist_ok=True)
            for folder in candidates[:len(skipped)]:
                os.replace(folder, damaged / folder.name)
        self.print(f"resume: skipped damaged {'; '.join(skipped)} (moved to {damaged})")
    self.state = TrainerState(**saved["trainer"])
    self.scheduler.load_state_dict(saved["scheduler"])
    self.labeled_stream.load_state_dict(saved["labeled_stream"])
    if self.unlabeled_stream is not None:
        self.unlabeled_stream.load_state_dict(saved["unlabeled_stream"])
    self.print(f"resumed from {checkpoint} at step {self.state.step}")


# -- the run record and the exports ------------------------------------------------------------------------
def training_record(self: Trainer) -> dict[str, Any]:
    """What the exported config records about the run: the method's flags that applied (a supervised run has no
    teacher), the data, and the recipe with its step budget (epochs derived from the steps, never beside them)."""
    config = self.config
    recipe = config.to_dict()
    max_steps = getattr(self, "max_steps", None)
    if max_steps is not None:
        recipe.update(max_steps=max_steps, epochs=round(max_steps / self.steps_per_epoch, 3))
    for switch in ("decoupled", "shared_head", "reweight", "sampler", "ema_teacher_bank"):
        recipe.pop(switch)  # the resolved flags below say what ran
    if not config.recipe.with_teacher:
        for option in TEACHER_OPTIONS:
            recipe.pop(option)
    return {**config.recipe.record(), "dataset": config.dataset,
            "split": getattr(self, "split", None) and self.split.name,
            "split_fingerprint": getattr(self, "split", None) and self.split.fingerprint,
            "recipe": recipe}


def export(self: Trainer, model: Des4ForSemanticSegmentation, target: Path, result: EvaluationResult) -> None:
    """``save_pretrained`` (+ image processor, + the evaluation's ``eval.json``) into a temporary folder, then
    swap it in."""
    model.config.training = {**training_record(self), "exported": self.config.export if self.config.recipe.with_teacher
                             else "student", "step": self.state.step, "val_mean_iou": result.mean_iou}
    temporary = target.with_name(f".tmp-{target.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary)
    self.image_processor.save_pretrained(temporary)
    result.save(temporary)
    old = target.with_name(f".old-{target.name}")
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    shutil.rmtree(old, ignore_errors=True)
