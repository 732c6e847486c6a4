"""The Accelerate training loop for DeS4 and its baselines (SPEC §2–5). Reads top to bottom:

prepare data → build model → prepare with Accelerate → loop {step, backward, optimizer, EMA teacher,
prototype update, log, checkpoint, evaluate} → export the best and last teacher → overlays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..configuration_des4 import Des4Config
from ..data import (
    EvalDataset,
    LabeledTrainDataset,
    SemiSupervisedSplit,
    UnlabeledTrainDataset,
    class_pixel_counts,
    get_class_names,
    list_standard_splits,
    load_segmentation_dataset,
)
from ..data.augment import AugmentConfig
from ..image_processing_des4 import Des4ImageProcessor
from ..inference import overlay
from ..losses import class_balancing_weights
from ..metrics.confusion import ConfusionMatrix
from ..modeling_des4 import Des4ForSemanticSegmentation
from ..sampling import class_ratio as compute_class_ratio
from .config import TrainConfig
from .step import PrototypeStatistics, StepSettings, apply_prototype_updates, empty_statistics, rampup_weight
from .teacher import TeacherStudent

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the run stops and the last checkpoint is left as it was."""


@dataclass
class TrainerState:
    """Counters saved with every checkpoint (as JSON in ``trainer_state.json``)."""

    step: int = 0
    best_miou: float = -1.0
    best_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    pseudo_label_counts: list[float] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_miou": self.best_miou, "best_step": self.best_step,
                "history": self.history, "pseudo_label_counts": self.pseudo_label_counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_miou = float(state["best_miou"])
        self.best_step = int(state["best_step"])
        self.history = list(state["history"])
        self.pseudo_label_counts = list(state["pseudo_label_counts"])


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` → bf16 (or fp16) on CUDA, fp32 ("no") on the CPU.

    Never bf16 on the CPU from capability flags: emulated on AVX2-only CPUs it measured 6–30× slower than fp32,
    and even where oneDNN reports native bf16 (AVX512-BF16) a training step measured slower than fp32. It also
    keeps CPU comparisons (the CamVid study) in one precision whatever the machine.
    """
    if requested != "auto":
        if requested == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision='fp16' needs a GPU; on the CPU use 'no' or 'bf16'.")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def warmup_steps(config: TrainConfig, max_steps: int) -> int:
    """Supervised-only warm-up steps: ``round(supervised_warmup × max_steps)``; none for the supervised method."""
    if config.method == "supervised":
        return 0
    return round(config.supervised_warmup * max_steps)


def trim_log(log_path: Path, last_step: int) -> None:
    """Keep only the entries of steps ≤ ``last_step``: a fresh run (0) into a used folder starts a new log, and a
    resumed one drops the steps logged after its checkpoint, which it is about to run again."""
    if not log_path.exists():
        return
    if last_step == 0:
        log_path.unlink()
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    temporary = log_path.with_name(log_path.name + ".tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, log_path)


class Trainer:
    """Runs one :class:`TrainConfig`. ``Trainer(config).train()`` returns the final evaluation record."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            gradient_accumulation_steps=config.grad_accum_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=True, find_unused_parameters=False)],
        )
        self.state = TrainerState()
        self.settings = StepSettings(
            method=config.method, reweight=config.reweight, sampler=config.sampler,
            lambda_supervised=config.lambda_supervised, lambda_unsupervised=config.lambda_unsupervised,
            num_zones=config.mes_num_zones, alpha=config.mes_alpha,
            pseudo_label_threshold=config.pseudo_label_threshold, pseudo_label_quantile=config.pseudo_label_quantile,
            class_weight_unbiased=config.class_weight_unbiased, pixel_balanced=config.pixel_balanced_losses,
        )

    # -- logging helpers ---------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, message: str) -> None:
        self.accelerator.print(message)

    # -- 1. data -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        config = self.config
        dataset_kwargs: dict[str, Any] = {}
        if config.data_root is not None:
            dataset_kwargs["root"] = config.data_root
        with self.accelerator.main_process_first():
            dataset = load_segmentation_dataset(config.dataset, **dataset_kwargs)
        if config.train_split not in dataset or config.val_split not in dataset:
            raise ValueError(f"dataset {config.dataset!r} has splits {list(dataset)}; set train_split/val_split")
        self.class_names = get_class_names(dataset)
        self.num_classes = len(self.class_names)
        train = dataset[config.train_split]
        if config.split is None:
            split = SemiSupervisedSplit.random(train, labeled=config.labeled_fraction, seed=config.seed)
        elif config.split in list_standard_splits():
            split = SemiSupervisedSplit.from_name(config.split)
        else:
            split = SemiSupervisedSplit.from_file(config.split)
        self.split = split
        if self.is_main:
            split.save(self.output_dir / "split")
        self.labeled_hf, self.unlabeled_hf = split.apply(train)
        with self.accelerator.main_process_first():
            counts = class_pixel_counts(self.labeled_hf, self.num_classes, self.output_dir / "cache", split.fingerprint)
        self.labeled_pixel_counts = np.asarray(counts, dtype=np.int64)
        # On the device once, so the step's .to(device) calls are no-ops.
        device = self.accelerator.device
        self.class_ratio = compute_class_ratio(torch.as_tensor(self.labeled_pixel_counts)).to(device)
        self.class_weights = class_balancing_weights(torch.as_tensor(self.labeled_pixel_counts),
                                                     config.class_weighting)
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        self.val_hf = dataset[config.val_split]
        self.print(f"data: {config.dataset} — {len(self.labeled_hf)} labeled, {len(self.unlabeled_hf)} unlabeled "
                   f"(split {split.name}), {len(self.val_hf)} val, {self.num_classes} classes")
        if self.class_weights is not None:
            weights = ", ".join(f"{name} {w:.2f}" for name, w in zip(self.class_names, self.class_weights.tolist()))
            self.print(f"class weights ({config.class_weighting}, from the labeled pixels): {weights}")

    # -- 2. model ------------------------------------------------------------------------------------------
    def build_model(self) -> None:
        config = self.config
        id2label = dict(enumerate(self.class_names))
        model_config = Des4Config(
            backbone=config.backbone, encoder_weights=config.encoder_weights, output_stride=config.output_stride,
            decoder_channels=config.decoder_channels, separable_convs=config.separable_convs,
            aspp_rates=config.aspp_rates,
            logit_scale=config.logit_scale, prototype_momentum=config.prototype_momentum, encoder_momentum=config.encoder_momentum,
            mes_num_zones=config.mes_num_zones, mes_alpha=config.mes_alpha,
            id2label=id2label, label2id={name: index for index, name in id2label.items()},
            training=self.training_record(),
        )
        with self.accelerator.main_process_first():  # one process converts/caches encoder weights first
            student = Des4ForSemanticSegmentation(model_config)
            self.image_processor = Des4ImageProcessor.for_encoder(config.backbone, config.encoder_weights)
        if config.prototype_init == "orthonormal":  # before the teacher copies the bank; the same on every rank
            student.prototype_head.reset_orthonormal_(torch.Generator().manual_seed(config.seed))
        with_teacher = config.method != "supervised"
        self.model = TeacherStudent(student, with_teacher=with_teacher, decoupled=config.decoupled,
                                    shared_head=config.shared_head, ema_teacher_bank=config.ema_teacher_bank)
        if self.accelerator.device.type == "cuda" and self.accelerator.num_processes > 1 and config.sync_batchnorm:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # type: ignore[assignment]
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The EMA parts and prototype banks change only through our own (identical) updates: DDP must
        # neither broadcast nor average them behind the trainer's back.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, self.model.state_outside_ddp())
        backbone, decoders = self.model.trainable_parameter_groups()
        self.optimizer = torch.optim.SGD(
            [{"params": backbone, "lr": config.lr}, {"params": decoders, "lr": config.lr * config.head_lr_multiplier}],
            lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        )

    def training_record(self) -> dict[str, Any]:
        """What the exported config records about the run (SPEC: "config records method, split, recipe")."""
        config = self.config
        return {
            "method": config.method, "decoupled": config.decoupled, "shared_head": config.shared_head,
            "reweight": config.reweight, "sampler": config.sampler, "dataset": config.dataset,
            "split": getattr(self, "split", None) and self.split.name,
            "split_fingerprint": getattr(self, "split", None) and self.split.fingerprint,
            "recipe": config.to_dict(),
        }

    # -- 3. streams, schedule ------------------------------------------------------------------------------
    def build_streams(self) -> None:
        config, accelerator = self.config, self.accelerator
        from .streams import BatchStream

        mean, std = self.image_processor.image_mean, self.image_processor.image_std
        augment = AugmentConfig(crop_size=config.crop_size, scale_range=tuple(config.scale_range))
        common = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                  "num_workers": config.num_workers}
        labeled = LabeledTrainDataset(self.labeled_hf, config.crop_size, mean, std, seed=config.seed, config=augment,
                                      num_classes=self.num_classes)
        self.labeled_stream = BatchStream(labeled, config.batch_size, seed=config.seed, name="labeled", **common)
        self.unlabeled_stream = None
        if config.method != "supervised":
            unlabeled = UnlabeledTrainDataset(self.unlabeled_hf, config.crop_size, mean, std, seed=config.seed + 1,
                                              config=augment)
            self.unlabeled_stream = BatchStream(unlabeled, config.effective_unlabeled_batch_size,
                                                seed=config.seed + 1, name="unlabeled", **common)
        self.val_dataset = EvalDataset(self.val_hf, mean, std, num_classes=self.num_classes)
        # An epoch is one pass over the unlabeled set (the labeled set cycles alongside) [choice, as U2PL].
        epoch_stream = self.unlabeled_stream or self.labeled_stream
        steps_per_epoch = max(1, epoch_stream.batches_per_epoch // config.grad_accum_steps)
        self.max_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        self.warmup_steps = warmup_steps(config, self.max_steps)
        max_steps, power = self.max_steps, config.poly_power
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power
        )

    # -- 4. checkpoints ------------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self, tag: str | None = None) -> Path:
        """``save_state`` into a temporary folder, then an atomic rename: a crash never leaves half a checkpoint."""
        accelerator = self.accelerator
        name = tag or f"step_{self.state.step:08d}"
        final = self.checkpoint_root / name
        temporary = self.checkpoint_root / f".tmp-{name}"
        if self.is_main and temporary.exists():
            shutil.rmtree(temporary)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary), safe_serialization=True)
        accelerator.wait_for_everyone()
        if self.is_main:
            # Counters, schedule and data positions as plain JSON (no pickles to trust on resume).
            _write_json_atomic(temporary / "trainer_state.json", {
                "step": self.state.step, "trainer": self.state.state_dict(), "scheduler": self.scheduler.state_dict(),
                "labeled_stream": self.labeled_stream.state_dict(),
                "unlabeled_stream": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None,
            })
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
            self._prune_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        steps = sorted(p for p in self.checkpoint_root.glob("step_*") if p.is_dir())
        for old in steps[: max(0, len(steps) - self.config.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def find_resume_checkpoint(self) -> Path | None:
        resume = self.config.resume
        if resume is None:
            return None
        if resume == "latest":
            candidates = sorted(p for p in self.checkpoint_root.glob("*") if p.is_dir() and not p.name.startswith("."))
            candidates = [p for p in candidates if (p / "trainer_state.json").is_file()]
            if not candidates:
                self.print(f"resume=latest: no checkpoint under {self.checkpoint_root}; starting fresh")
                return None
            return max(candidates, key=lambda p: json.loads((p / "trainer_state.json").read_text())["step"])
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"resume={resume!r} is not a checkpoint folder (no trainer_state.json)")
        return path

    # -- 5. evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Des4ForSemanticSegmentation) -> dict[str, Any]:
        """mIoU on the val split at original resolution; each process takes every n-th image, then SUM."""
        accelerator = self.accelerator
        model.eval()
        count = len(self.val_dataset)
        if self.config.eval_max_images is not None:
            count = min(count, self.config.eval_max_images)
        matrix = ConfusionMatrix(self.num_classes, ignore_index=255, device=accelerator.device)
        for index in range(accelerator.process_index, count, accelerator.num_processes):
            item = self.val_dataset[index]
            pixel_values = item["pixel_values"][None].to(accelerator.device)
            if self.config.channels_last:
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                logits = model(pixel_values=pixel_values).logits
            matrix.update(logits.argmax(1), item["labels"][None].to(accelerator.device), where=str(item["id"]))
        matrix.reduce()
        scores = matrix.compute()
        return {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"], "num_images": count,
                "per_class_iou": dict(zip(self.class_names, [float(v) for v in scores["per_class_iou"]], strict=True))}

    def evaluate_and_export(self, final: bool = False) -> dict[str, Any]:
        unwrapped: TeacherStudent = self.accelerator.unwrap_model(self.model)
        teacher = unwrapped.export("teacher")
        record: dict[str, Any] = {"step": self.state.step, "teacher": self.evaluate(teacher)}
        if unwrapped.with_teacher:
            record["student"] = self.evaluate(unwrapped.export("student"))
        record["pseudo_labels"] = self._pseudo_label_report()
        teacher_miou = record["teacher"]["mean_iou"]
        self.state.history.append({"step": self.state.step, "teacher_miou": teacher_miou,
                                   "student_miou": record.get("student", {}).get("mean_iou")})
        improved = teacher_miou > self.state.best_miou
        if improved:
            self.state.best_miou, self.state.best_step = teacher_miou, self.state.step
        if self.is_main:
            eval_dir = self.output_dir / "eval"
            eval_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(eval_dir / f"step_{self.state.step:08d}.json", record)
            self._plot_pseudo_labels(record["pseudo_labels"], eval_dir / f"pseudo_labels_step_{self.state.step:08d}.png")
            if improved:
                self.export(teacher, self.output_dir / "best", record)
            if final:
                self.export(teacher, self.output_dir / "last", record)
        message = f"step {self.state.step}: teacher mIoU {100 * teacher_miou:.2f}"
        if "student" in record:
            message += f", student mIoU {100 * record['student']['mean_iou']:.2f}"
        self.print(message + f" (best {100 * self.state.best_miou:.2f} at step {self.state.best_step})")
        self.accelerator.log({"eval/teacher_miou": teacher_miou,
                              **({"eval/student_miou": record["student"]["mean_iou"]} if "student" in record else {})},
                             step=self.state.step)
        self.accelerator.wait_for_everyone()
        return record

    def _pseudo_label_report(self) -> dict[str, Any]:
        """Pseudo-label class shares since the last evaluation vs the labeled set's (paper Fig. 3)."""
        counts = torch.tensor(self.state.pseudo_label_counts or [0.0] * self.num_classes,
                              dtype=torch.float64, device=self.accelerator.device)
        if dist.is_available() and dist.is_initialized() and self.accelerator.num_processes > 1:
            dist.all_reduce(counts)
        self.state.pseudo_label_counts = [0.0] * self.num_classes
        labeled = self.labeled_pixel_counts / max(1, self.labeled_pixel_counts.sum())
        pseudo = (counts / counts.sum().clamp_min(1)).cpu().tolist()
        return {"classes": self.class_names, "labeled_share": labeled.tolist(), "pseudo_label_share": pseudo}

    def _plot_pseudo_labels(self, report: dict[str, Any], path: Path) -> None:
        if sum(report["pseudo_label_share"]) == 0:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        positions = np.arange(len(report["classes"]))
        figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(positions)), 3.5))
        axis.bar(positions - 0.2, report["labeled_share"], 0.4, label="labeled ground truth")
        axis.bar(positions + 0.2, report["pseudo_label_share"], 0.4, label="teacher pseudo labels")
        axis.set_xticks(positions, report["classes"], rotation=45, ha="right")
        axis.set_ylabel("share of pixels")
        axis.set_title(f"Class distribution, step {self.state.step}")
        axis.legend()
        figure.tight_layout()
        temporary = path.with_name(f".tmp-{path.name}")
        figure.savefig(temporary, dpi=100, format="png")
        plt.close(figure)
        os.replace(temporary, path)

    def export(self, model: Des4ForSemanticSegmentation, target: Path, record: dict[str, Any]) -> None:
        """``save_pretrained`` (+ image processor) into a temporary folder, then swap it in."""
        model.config.training = {**self.training_record(), "step": self.state.step,
                                 "val_mean_iou": record["teacher"]["mean_iou"]}
        temporary = target.with_name(f".tmp-{target.name}")
        if temporary.exists():
            shutil.rmtree(temporary)
        model.save_pretrained(temporary)
        self.image_processor.save_pretrained(temporary)
        _write_json_atomic(temporary / "eval.json", {"dataset": self.config.dataset, "split": self.config.val_split,
                                                     **record["teacher"], "step": self.state.step})
        old = target.with_name(f".old-{target.name}")
        if target.exists():
            os.replace(target, old)
        os.replace(temporary, target)
        shutil.rmtree(old, ignore_errors=True)

    def write_overlays(self, model: Des4ForSemanticSegmentation) -> None:
        if not self.is_main or self.config.overlays <= 0:
            return
        from PIL import Image

        folder = self.output_dir / "overlays"
        folder.mkdir(parents=True, exist_ok=True)
        model.eval()
        for index in range(min(self.config.overlays, len(self.val_dataset))):
            item = self.val_dataset[index]
            with torch.no_grad():
                prediction = model(pixel_values=item["pixel_values"][None]).logits.argmax(1)[0].numpy()
            record = self.val_hf[index]
            image = record["image"] if isinstance(record["image"], Image.Image) else Image.open(record["image"]["path"])
            overlay(image, prediction).save(folder / f"{item['id']}_overlay.jpg", quality=90)

    # -- 6. the loop ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)  # identical initial weights on every process
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        self.build_model()
        self.build_streams()
        if self.is_main:
            config.save(self.output_dir / "train_config.yaml")
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        unwrapped: TeacherStudent = accelerator.unwrap_model(self.model)
        unwrapped.broadcast_from_main()
        self.model.train()  # TeacherStudent.train keeps E^T (and an EMA D^T) in eval mode
        if config.report_to != "none":
            accelerator.init_trackers("des4", config={k: v for k, v in config.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool))})
        checkpoint = self.find_resume_checkpoint()
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            saved = json.loads((checkpoint / "trainer_state.json").read_text())
            self.state.load_state_dict(saved["trainer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.labeled_stream.load_state_dict(saved["labeled_stream"])
            if self.unlabeled_stream is not None:
                self.unlabeled_stream.load_state_dict(saved["unlabeled_stream"])
            self.print(f"resumed from {checkpoint} at step {self.state.step}")
        if not self.state.pseudo_label_counts:
            self.state.pseudo_label_counts = [0.0] * self.num_classes

        self.print(f"training {config.method} for {self.max_steps} steps on {accelerator.num_processes} process(es), "
                   f"precision {accelerator.mixed_precision}, output {self.output_dir}")
        progress = tqdm(total=self.max_steps, initial=self.state.step, disable=not self.is_main, desc=config.method,
                        dynamic_ncols=True)
        log_path = self.output_dir / "log.jsonl"
        if self.is_main:
            trim_log(log_path, self.state.step)
        images_per_step = (config.batch_size + (config.effective_unlabeled_batch_size if self.unlabeled_stream else 0)) \
            * accelerator.num_processes * config.grad_accum_steps
        try:
            while self.state.step < self.max_steps:
                started = time.perf_counter()
                terms = self.train_step(unwrapped)
                seconds = time.perf_counter() - started
                self.state.step += 1
                lr = self.scheduler.get_last_lr()[0]
                if self.is_main:
                    entry = {"step": self.state.step, **terms, "lr": lr, "seconds": seconds,
                             "images_per_second": images_per_step / seconds}
                    with log_path.open("a") as handle:
                        handle.write(json.dumps(entry) + "\n")
                    progress.update(1)
                    progress.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in terms.items()}
                                         | {"lr": f"{lr:.2e}", "img/s": f"{images_per_step / seconds:.1f}"})
                if self.state.step % config.log_every == 0:
                    accelerator.log({f"train/{k}": v for k, v in terms.items()} | {"train/lr": lr}, step=self.state.step)
                if self.state.step % config.eval_every == 0 and self.state.step < self.max_steps:
                    self.evaluate_and_export()
                if self.state.step % config.checkpoint_every == 0 and self.state.step < self.max_steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            progress.close()
            path = self.save_checkpoint(f"step_{self.state.step:08d}")
            self.print(f"interrupted: saved a resumable state to {path} (resume with --resume latest)")
            raise
        progress.close()
        final = self.evaluate_and_export(final=True)
        self.save_checkpoint()
        if self.is_main:
            self.write_overlays(unwrapped.export("teacher"))
            _write_json_atomic(self.output_dir / "results.json", {
                "final": final, "best_teacher_miou": self.state.best_miou, "best_step": self.state.best_step,
                "history": self.state.history, "max_steps": self.max_steps})
        accelerator.wait_for_everyone()
        accelerator.end_training()  # also tears down the process group
        return final

    def train_step(self, unwrapped: TeacherStudent) -> dict[str, float]:
        """One optimizer step: ``grad_accum_steps`` micro-batches, then EMA teacher and prototype updates."""
        config, accelerator = self.config, self.accelerator
        teacher_statistics = empty_statistics(unwrapped.teacher_head)
        student_statistics: PrototypeStatistics | None = None
        if not unwrapped.shared_head:
            student_statistics = empty_statistics(unwrapped.student.prototype_head)
        summed: dict[str, float] = {}
        settings = self.settings
        warming_up = self.state.step < self.warmup_steps  # labels only: no unlabeled batch is drawn
        if warming_up:
            settings = dataclasses.replace(settings, unsupervised=False)
        if config.unsupervised_rampup > 0:  # a function of the step only, so resume reproduces it
            lambda_unsupervised = config.lambda_unsupervised * rampup_weight(
                self.state.step, self.max_steps, config.unsupervised_rampup)
            settings = dataclasses.replace(settings, lambda_unsupervised=lambda_unsupervised)
            summed["lambda_unsupervised"] = 0.0 if warming_up else lambda_unsupervised
        for micro_step in range(config.grad_accum_steps):
            labeled = self._to_device(self.labeled_stream.next())
            unlabeled = None
            if self.unlabeled_stream is not None and not warming_up:
                unlabeled = self._to_device(self.unlabeled_stream.next())
            # Sampling seed from (seed, step, micro-step, rank): a resumed run draws the same pixels.
            generator = torch.Generator(device="cpu").manual_seed(
                ((config.seed * 1_000_003 + self.state.step) * 64 + micro_step) * 1024 + accelerator.process_index)
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    output = self.model(labeled, unlabeled, settings=settings, class_ratio=self.class_ratio,
                                        class_weights=self.class_weights, generator=generator)
                self._check_finite(output.terms)
                accelerator.backward(output.loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            teacher_statistics.add_(output.teacher_statistics)
            if student_statistics is not None and output.student_statistics is not None:
                student_statistics.add_(output.student_statistics)
            if output.pseudo_label_counts is not None:
                self.state.pseudo_label_counts = [a + float(b) for a, b in
                                                  zip(self.state.pseudo_label_counts, output.pseudo_label_counts.cpu())]
            for key, value in output.terms.items():
                summed[key] = summed.get(key, 0.0) + float(value) / config.grad_accum_steps
        # After the optimizer step: Eq. 12 on the prototypes (all-reduced inside), then the teacher's EMA (a mean
        # teacher's own bank follows the student's freshly updated one).
        self.scheduler.step()
        unwrapped.average_batchnorm_statistics()
        apply_prototype_updates(unwrapped, teacher_statistics, student_statistics, config.prototype_momentum)
        tau = unwrapped.update_teacher(self.state.step, config.encoder_momentum, self.warmup_steps)
        summed["ema_momentum"] = tau
        return summed

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop every process together when any process sees a NaN/inf loss term."""
        names = sorted(terms)
        values = torch.stack([terms[name].float() for name in names])
        bad = (~torch.isfinite(values)).float()
        if dist.is_available() and dist.is_initialized() and self.accelerator.num_processes > 1:
            dist.all_reduce(bad)
        if bool(bad.any()):
            broken = [name for name, flag in zip(names, bad.tolist()) if flag]
            raise NonFiniteLossError(
                f"step {self.state.step + 1}: loss term(s) {broken} became NaN/inf (local values "
                f"{dict(zip(names, values.tolist()))}). Stopped; the last checkpoint under {self.checkpoint_root} is "
                "intact. Lower lr, check the data, or use mixed_precision=no."
            )

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        moved = {}
        for key, value in batch.items():
            value = value.to(device, non_blocking=True)
            if self.config.channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            moved[key] = value
        return moved


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(temporary, path)
