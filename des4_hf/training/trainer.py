"""The Accelerate training loop for DeS4 and its baselines (SPEC §2–5), top to bottom:

data → model → ``accelerator.prepare`` (model, optimizer, loaders, scheduler) → resume → loop {step, backward,
optimizer, EMA teacher, prototype update, log, evaluate, checkpoint} → export the best and last teacher.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..configuration_des4 import Des4Config
from ..data import (
    DataError,
    EvalDataset,
    LabeledTrainDataset,
    SemiSupervisedSplit,
    UnlabeledTrainDataset,
    class_pixel_counts,
    get_class_names,
    list_standard_splits,
    load_segmentation_dataset,
)
from ..evaluation import EvaluationResult, evaluate_segmentation, protocol_window
from ..image_processing_des4 import Des4ImageProcessor
from ..inference import resolve_precision, training_probe
from ..method.losses import class_balancing_weights
from ..method.prototypes import PrototypeStatistics, orthonormal_prototypes_
from ..method.sampling import class_ratio as compute_class_ratio
from ..method.step import TeacherStudent, after_optimizer_step
from ..method.teacher import rampup_weight
from ..modeling_des4 import Des4ForSemanticSegmentation
from ..utils import atomic_write_json
from .checkpointing import TrainerState, export, resume, save_checkpoint, training_record, trim_log
from .config import TrainConfig
from .run_folder import write_marker
from .streams import BatchStream, stream_loader

logger = logging.getLogger(__name__)
class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the run stops and the last checkpoint is left as it was."""


class InitFromError(ValueError):
    """``init_from`` names a model whose architecture is not the recipe's."""


def warmup_steps(config: TrainConfig, max_steps: int) -> int:
    """Supervised-only warm-up steps: ``round(supervised_warmup × max_steps)``; none for the supervised method."""
    return round(config.supervised_warmup * max_steps) if config.recipe.with_teacher else 0


class Trainer:
    """Runs one :class:`TrainConfig`. ``Trainer(config).train()`` returns the final evaluation record."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"  # Accelerate's automatic checkpoint naming
        # the one resolver (auto on a CPU: timed on this network; fp16 refused there); also the evaluation's precision
        precision = config.mixed_precision
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            probe = training_probe(lambda: Des4ForSemanticSegmentation(config.model_config(random_encoder=True)),
                                   config.crop_size, config.channels_last) if precision == "auto" and device == "cpu" else {}
            self.precision = resolve_precision(precision, device, **probe).name
        except ValueError as error:
            raise ValueError(f"mixed_precision={config.mixed_precision!r}: {error}") from None
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision={"fp32": "no"}.get(self.precision, self.precision),
            gradient_accumulation_steps=config.grad_accum_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs"),
                automatic_checkpoint_naming=True, total_limit=config.keep_checkpoints),
            # EMA parameters need no grad and no buffer is broadcast: DDP syncs gradients only. The trainer keeps
            # BN statistics and prototypes identical on every process itself (``accelerator.reduce``).
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        self.state = TrainerState()
        self.is_main = self.accelerator.is_main_process
        self.print = self.accelerator.print

    # -- 1. data -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        config, accelerator = self.config, self.accelerator
        with accelerator.main_process_first():
            dataset = load_segmentation_dataset(config.dataset, **({"root": config.data_root} if config.data_root else {}))
        if "train" not in dataset or "val" not in dataset:
            raise ValueError(f"dataset {config.dataset!r} has splits {list(dataset)}; training needs 'train' and 'val'")
        self.class_names = get_class_names(dataset)
        self.num_classes = len(self.class_names)
        train = dataset["train"]
        if config.split is None:
            split = SemiSupervisedSplit.random(train, labeled=config.labeled_fraction, seed=config.seed)
        elif config.split in list_standard_splits():
            split = SemiSupervisedSplit.from_name(config.split)
        else:
            split = SemiSupervisedSplit.from_file(config.split)
        self.split = split  # saved under split/ once a resume has been accepted
        self.labeled_hf, self.unlabeled_hf = split.apply(train, config.unlabeled_includes_labeled)
        with accelerator.main_process_first():
            counts = class_pixel_counts(self.labeled_hf, self.num_classes, self.output_dir / "cache", split.fingerprint)
        self.labeled_pixel_counts = np.asarray(counts, dtype=np.int64)
        self.class_ratio = compute_class_ratio(torch.as_tensor(self.labeled_pixel_counts)).to(accelerator.device)
        weights = class_balancing_weights(torch.as_tensor(self.labeled_pixel_counts), config.class_weighting)
        self.class_weights = weights.to(accelerator.device) if weights is not None else None
        self.val_hf = dataset["val"]
        shared = sorted(set(self.labeled_hf["id"]) & set(self.val_hf["id"])) if "id" in self.val_hf.column_names else []
        if shared:  # the val score would count images the model was trained on
            logger.warning("%d labeled training id(s) are also in the val split (e.g. %s): the val mIoU counts images "
                           "the model learned from; remove them from one of the lists", len(shared), shared[:3])
        if int(self.labeled_pixel_counts.sum()) == 0:
            logger.warning("the %d labeled masks hold no class pixel (every pixel is ignore, 255): nothing can be "
                           "learned from them and the mIoU will be undefined; check the masks' values",
                           len(self.labeled_hf))
        self.print(f"data: {config.dataset} — {len(self.labeled_hf)} labeled, {len(self.unlabeled_hf)} unlabeled "
                   f"(split {split.name}), {len(self.val_hf)} val, {self.num_classes} classes")
        if self.class_weights is not None:
            weights = ", ".join(f"{name} {w:.2f}" for name, w in zip(self.class_names, self.class_weights.tolist()))
            self.print(f"class weights ({config.class_weighting}, from the labeled pixels): {weights}")

    # -- 2. model, optimizer, loaders, schedule --------------------------------------------------------------
    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        model_config = config.model_config(self.class_names, training=training_record(self))
        with accelerator.main_process_first():  # one process converts/caches encoder weights first
            student = Des4ForSemanticSegmentation(model_config) if not config.init_from else self._fine_tune_start(
                model_config)
            self.image_processor = Des4ImageProcessor.for_encoder(config.backbone, config.encoder_weights)
        if config.prototype_init == "orthonormal" and not bool(student.prototype_head.initialized.any()):
            # before the teacher copies the bank; the same on every rank (a fine-tune keeps trained prototypes)
            orthonormal_prototypes_(student.prototype_head, torch.Generator().manual_seed(config.seed))
        model = TeacherStudent(student, config)
        if accelerator.device.type == "cuda" and accelerator.num_processes > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        backbone, decoders = model.trainable_parameter_groups()
        optimizer = torch.optim.SGD(
            [{"params": backbone, "lr": config.lr}, {"params": decoders, "lr": config.lr * config.head_lr_multiplier}],
            lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        )
        mean, std = self.image_processor.image_mean, self.image_processor.image_std
        augment, frames = config.augment_config(), {"frame_scale": config.frame_scale, "cache_frames": config.cache_frames}
        labeled = LabeledTrainDataset(self.labeled_hf, augment, mean, std, seed=config.seed, num_classes=self.num_classes,
                                      **frames)
        loaders = [stream_loader(labeled, config.batch_size, config.seed, config.num_workers)]
        if model.with_teacher:
            if len(self.unlabeled_hf) < config.effective_unlabeled_batch_size:  # no full unlabeled batch to draw
                raise DataError(f"the split leaves {len(self.unlabeled_hf)} unlabeled image(s), fewer than one unlabeled "
                                f"batch of {config.effective_unlabeled_batch_size}. Fix: label fewer images "
                                "(--labeled-fraction), lower --unlabeled-batch-size, add --unlabeled-includes-labeled, or "
                                "train --method supervised.")
            unlabeled = UnlabeledTrainDataset(self.unlabeled_hf, augment, mean, std, seed=config.seed + 1, **frames)
            loaders.append(stream_loader(unlabeled, config.effective_unlabeled_batch_size, config.seed + 1,
                                         config.num_workers))
        self.model, self.optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
        self.labeled_stream = BatchStream(loaders[0], accelerator, config.batch_size, "labeled")
        self.unlabeled_stream = BatchStream(loaders[1], accelerator, config.effective_unlabeled_batch_size,
                                            "unlabeled") if len(loaders) > 1 else None
        self.val_dataset = EvalDataset(self.val_hf, mean, std, num_classes=self.num_classes, **frames)
        # An epoch is one pass over the unlabeled set (the labeled set cycles alongside) [choice, as U2PL].
        epoch_stream = self.unlabeled_stream or self.labeled_stream
        self.steps_per_epoch = max(1, epoch_stream.batches_per_epoch // config.grad_accum_steps)
        self.max_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = warmup_steps(config, self.max_steps)
        max_steps, power = self.max_steps, config.poly_power
        # Stepped once per optimizer step by the loop itself, so it is not prepared (Accelerate would step it
        # once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power)

    def _fine_tune_start(self, model_config: Any) -> Des4ForSemanticSegmentation:
        """``init_from``'s encoder and decoder; its prototypes when its classes are this dataset's, fresh ones else."""
        source = self.config.init_from
        saved = Des4Config.from_pretrained(source)
        different = [f"{key} {getattr(saved, key)!r} (the recipe: {getattr(model_config, key)!r})" for key in
                     ("backbone", "output_stride", "decoder_channels", "low_level_channels", "separable_convs",
                      "aspp_rates", "logit_scale") if getattr(saved, key) != getattr(model_config, key)]
        if different:
            raise InitFromError(f"init_from={source!r} has another architecture: {', '.join(different)}; set the "
                             "recipe's options to the checkpoint's")
        same_classes = [saved.id2label[i] for i in range(saved.num_labels)] == list(self.class_names)
        student = Des4ForSemanticSegmentation.from_pretrained(
            source, id2label=model_config.id2label, label2id=model_config.label2id, ignore_mismatched_sizes=True)
        student.config.training = model_config.training
        if not same_classes:  # same count, other classes: the loaded bank would name the wrong classes
            student.prototype_head.initialized.fill_(False)
        self.print(f"init_from {source}: encoder and decoder loaded; "
                   + ("its prototypes kept (same classes)" if same_classes else
                      f"new prototypes for {self.num_classes} classes (it had {saved.num_labels})"))
        return student.train()

    # -- 3. checkpoints (des4_hf.training.checkpointing) ------------------------------------------------------
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self)

    def resume(self) -> None:
        resume(self)

    # -- 4. evaluation and export ----------------------------------------------------------------------------
    def evaluate(self, model: Des4ForSemanticSegmentation) -> EvaluationResult:
        """mIoU on the val split with the dataset's protocol (sliding window for Cityscapes), over all processes."""
        config = self.config
        count = len(self.val_dataset) if config.eval_max_images is None else min(len(self.val_dataset),
                                                                                 config.eval_max_images)
        return evaluate_segmentation(
            model, torch.utils.data.Subset(self.val_dataset, range(count)), num_classes=self.num_classes,
            class_names=self.class_names, accelerator=self.accelerator,
            sliding_window=protocol_window(config.dataset), precision=self.precision,
            channels_last=config.channels_last, progress=False,
            settings={"dataset": config.dataset, "split": "val", "step": self.state.step})

    def evaluate_and_export(self, final: bool = False) -> dict[str, Any]:
        unwrapped: TeacherStudent = self.accelerator.unwrap_model(self.model)
        models = {"teacher": unwrapped.export("teacher")}
        if unwrapped.with_teacher:
            models["student"] = unwrapped.export("student")
        results = {name: self.evaluate(model) for name, model in models.items()}
        chosen = self.config.export if self.config.export in models else "teacher"  # the network best/ and last/ hold
        record: dict[str, Any] = {"step": self.state.step, **{name: {
            "mean_iou": result.mean_iou, "pixel_accuracy": result.pixel_accuracy, "num_images": result.num_images,
            "per_class_iou": dict(zip(self.class_names, result.per_class_iou, strict=True))}
            for name, result in results.items()}}
        record["pseudo_labels"] = self._pseudo_label_report()
        teacher_miou, chosen_miou = record["teacher"]["mean_iou"], record[chosen]["mean_iou"]
        if not math.isfinite(teacher_miou):
            logger.warning("step %d: the val mIoU is undefined (NaN): the val masks hold no class pixel that was "
                           "predicted or labeled; check their values", self.state.step)
        self.state.history.append({"step": self.state.step, "teacher_miou": teacher_miou,
                                   "student_miou": record.get("student", {}).get("mean_iou")})
        improved = chosen_miou > self.state.best_miou
        if improved:
            self.state.best_miou, self.state.best_step = chosen_miou, self.state.step
        if self.is_main:
            eval_dir = self.output_dir / "eval"
            atomic_write_json(eval_dir / f"step_{self.state.step:08d}.json", record)
            if improved:
                export(self, models[chosen], self.output_dir / "best", results[chosen])
            if final:
                export(self, models[chosen], self.output_dir / "last", results[chosen])
        scores = {name: record[name]["mean_iou"] for name in ("teacher", "student") if name in record}
        self.print(f"step {self.state.step}: " + ", ".join(f"{name} mIoU {100 * value:.2f}" for name, value in scores.items())
                   + f" (best {100 * self.state.best_miou:.2f} at step {self.state.best_step})")
        self.accelerator.log({f"eval/{name}_miou": value for name, value in scores.items()}, step=self.state.step)
        self.accelerator.wait_for_everyone()
        return record

    def _pseudo_label_report(self) -> dict[str, Any]:
        """Pseudo-label class shares since the last evaluation vs the labeled set's (paper Fig. 3)."""
        counts = torch.tensor(self.state.pseudo_label_counts or [0.0] * self.num_classes,
                              dtype=torch.float64, device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, "sum")
        self.state.pseudo_label_counts = [0.0] * self.num_classes
        labeled = self.labeled_pixel_counts / max(1, self.labeled_pixel_counts.sum())
        pseudo = (counts / counts.sum().clamp_min(1)).cpu().tolist()
        return {"classes": self.class_names, "labeled_share": labeled.tolist(), "pseudo_label_share": pseudo}

    # -- 5. the loop -----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)  # identical initial weights on every process
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        self.build()
        self.model.train()  # TeacherStudent.train keeps E^T (and an EMA D^T) in eval mode
        self.resume()  # before anything is written: a refused resume leaves the folder as it was
        if self.is_main:
            config.save(self.output_dir / "train_config.yaml")
            self.split.save(self.output_dir / "split")
            write_marker(self.output_dir)  # the run has started: --resume / --overwrite may now act on this folder
        if config.report_to != "none":
            accelerator.init_trackers("des4", config={k: v for k, v in config.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool))})
        if not self.state.pseudo_label_counts:
            self.state.pseudo_label_counts = [0.0] * self.num_classes

        self.print(f"training {config.method} for {self.max_steps} steps on {accelerator.num_processes} process(es), "
                   f"precision {accelerator.mixed_precision}, output {self.output_dir}")
        progress = tqdm(total=self.max_steps, initial=self.state.step, disable=not self.is_main, desc=config.method,
                        dynamic_ncols=True)
        log_path = self.output_dir / "log.jsonl"
        if self.is_main:
            trim_log(log_path, self.state.step)
        unwrapped: TeacherStudent = accelerator.unwrap_model(self.model)
        try:
            while self.state.step < self.max_steps:
                started, cpu_started = time.perf_counter(), time.process_time()
                terms = self.train_step(unwrapped)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                self.state.step += 1
                lr = self.scheduler.get_last_lr()[0]
                if self.is_main:
                    with log_path.open("a") as handle:
                        handle.write(json.dumps({"step": self.state.step, **terms, "lr": lr, "seconds": seconds,
                                                 "cpu_seconds": cpu_seconds}) + "\n")
                    progress.update(1)
                    progress.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in terms.items()}
                                         | {"lr": f"{lr:.2e}", "s/step": f"{seconds:.2f}"})
                if self.state.step % config.log_every == 0:
                    accelerator.log({f"train/{k}": v for k, v in terms.items()} | {"train/lr": lr}, step=self.state.step)
                if self.state.step % config.eval_every == 0 and self.state.step < self.max_steps:
                    self.evaluate_and_export()
                if self.state.step % config.checkpoint_every == 0 and self.state.step < self.max_steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            progress.close()
            path = self.save_checkpoint()
            self.print(f"interrupted: saved a resumable state to {path} (resume with --resume latest)")
            raise
        finally:  # also when a step fails, so that the error is printed on a line of its own
            progress.close()
        final = self.evaluate_and_export(final=True)
        self.save_checkpoint()
        if self.is_main:
            atomic_write_json(self.output_dir / "results.json", {
                "final": final, "best_teacher_miou": self.state.best_miou, "best_step": self.state.best_step,
                "history": self.state.history, "max_steps": self.max_steps})
        accelerator.wait_for_everyone()
        accelerator.end_training()  # also tears down the process group
        return final

    def train_step(self, unwrapped: TeacherStudent) -> dict[str, float]:
        """One optimizer step: ``grad_accum_steps`` micro-batches, then EMA teacher and prototype updates."""
        config, accelerator = self.config, self.accelerator
        teacher_statistics = PrototypeStatistics.empty(unwrapped.teacher_head)
        student_statistics = None if unwrapped.shared_head else PrototypeStatistics.empty(unwrapped.student.prototype_head)
        summed: dict[str, float] = {}
        warming_up = self.state.step < self.warmup_steps  # labels only: no unlabeled batch is drawn
        lambda_unsupervised = None
        if config.unsupervised_rampup > 0:  # a function of the step only, so resume reproduces it
            lambda_unsupervised = config.lambda_unsupervised * rampup_weight(
                self.state.step, self.max_steps, config.unsupervised_rampup)
            summed["lambda_unsupervised"] = 0.0 if warming_up else lambda_unsupervised
        for micro_step in range(config.grad_accum_steps):
            labeled = self._channels_last(self.labeled_stream.next())
            unlabeled = None
            if self.unlabeled_stream is not None and not warming_up:
                unlabeled = self._channels_last(self.unlabeled_stream.next())
            # Sampling seed from (seed, step, micro-step, rank): a resumed run draws the same pixels.
            generator = torch.Generator(device="cpu").manual_seed(
                ((config.seed * 1_000_003 + self.state.step) * 64 + micro_step) * 1024 + accelerator.process_index)
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    try:
                        output = self.model(labeled, unlabeled, class_ratio=self.class_ratio,
                                            class_weights=self.class_weights, generator=generator,
                                            lambda_unsupervised=lambda_unsupervised, unsupervised=not warming_up)
                    except FloatingPointError as error:  # raised by the prototype sampling before any loss exists
                        raise NonFiniteLossError(self._non_finite_message(str(error))) from None
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
        # After the optimizer step: BN statistics and prototype samples summed over processes, Eq. 12, Eq. 5.
        self.scheduler.step()
        summed["ema_momentum"] = after_optimizer_step(
            unwrapped, teacher_statistics, student_statistics, self.state.step, self.warmup_steps,
            reduce=accelerator.reduce if accelerator.num_processes > 1 else None)
        return summed

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop every process together when any process sees a NaN/inf loss term."""
        names = sorted(terms)
        values = torch.stack([terms[name].float() for name in names])
        bad = self.accelerator.reduce((~torch.isfinite(values)).float(), "sum")
        if bool(bad.any()):
            broken = [name for name, flag in zip(names, bad.tolist()) if flag]
            raise NonFiniteLossError(self._non_finite_message(
                f"loss term(s) {broken} became NaN/inf (local values {dict(zip(names, values.tolist()))})"))

    def _non_finite_message(self, what: str) -> str:
        return (f"step {self.state.step + 1}: {what}. Stopped; the last checkpoint under {self.checkpoint_root} is "
                "intact. Lower lr, check the data, or use mixed_precision=no.")

    def _channels_last(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.config.channels_last:
            return batch
        return {key: value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value
                for key, value in batch.items()}
