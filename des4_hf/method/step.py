"""One DeS4 step (SPEC §2): :class:`TeacherStudent`'s ``forward`` is the Eq. 4 loss of one (micro-)batch, steps 1–8,
batches in, losses and prototype statistics out; :func:`after_optimizer_step` is what follows the optimizer step
(BatchNorm statistics and prototype samples summed over processes by the collective passed in, Eq. 12, Eq. 5)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling_des4 import Des4ForSemanticSegmentation, PrototypeHead
from .losses import cross_entropy_loss, entropy, unbiased_supervised_loss, unlabeled_loss_factor
from .perturbation import channel_dropout
from .prototypes import PrototypeStatistics, follow_prototypes_, update_prototypes_
from .pseudo_labels import cutmix, pseudo_labels
from .sampling import sample_class_features
from .teacher import ema_momentum, ema_update_


@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, Tensor]  # detached scalars, logged every step
    teacher_statistics: PrototypeStatistics  # for the shared bank (or the teacher's own)
    student_statistics: PrototypeStatistics | None = None  # only without a shared head
    pseudo_label_counts: Tensor | None = None  # (C,) classes of this step's valid pseudo labels


class TeacherStudent(nn.Module):
    """Student (E^S, D^S), teacher (E^T, D^T) and prototype bank(s) of one run, as ``config`` switches them:
    ``supervised`` has no teacher; ``decoupled`` (D.T.) trains D^T by ``L_l^ub``, else it is an EMA of D^S;
    ``shared_head`` (S.H.) shares one bank, else the teacher keeps its own, which for the mean teacher with
    ``ema_teacher_bank`` (SPEC §4) is an EMA of the student's, else updated by MES on the teacher's features."""

    def __init__(self, student: Des4ForSemanticSegmentation, config: Any) -> None:
        super().__init__()
        self.student = student
        self.train_config = config  # a TrainConfig: its recipe, λs, sampler settings and early-phase options
        recipe = config.recipe
        self.with_teacher = recipe.with_teacher
        self.decoupled = recipe.decoupled and self.with_teacher
        self.shared_head = recipe.shared_head or not self.with_teacher
        self.teacher_bank_follows_student = recipe.teacher_bank_follows_student
        self.teacher_encoder = self.teacher_decoder = self.teacher_prototype_head = None
        if self.with_teacher:
            self.teacher_encoder = copy.deepcopy(student.encoder).requires_grad_(False)
            self.teacher_decoder = copy.deepcopy(student.decoder).requires_grad_(self.decoupled)
            if not self.shared_head:
                self.teacher_prototype_head = copy.deepcopy(student.prototype_head)

    @property
    def teacher_head(self) -> PrototypeHead:
        return self.teacher_prototype_head if self.teacher_prototype_head is not None else self.student.prototype_head

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        # E^T always runs on its EMA statistics; an EMA decoder too. A decoupled D^T trains like any decoder.
        if self.teacher_encoder is not None:
            self.teacher_encoder.eval()
        if self.teacher_decoder is not None and not self.decoupled:
            self.teacher_decoder.eval()
        return self

    def trainable_parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, decoder parameters): the poly schedule gives the second group 10× lr."""
        backbone = [p for p in self.student.encoder.parameters() if p.requires_grad]
        decoders = [p for p in self.student.decoder.parameters() if p.requires_grad]
        if self.decoupled and self.teacher_decoder is not None:
            decoders += [p for p in self.teacher_decoder.parameters() if p.requires_grad]
        return backbone, decoders

    # -- the step ----------------------------------------------------------------------------------------
    def forward(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None = None, *,
                class_ratio: Tensor, class_weights: Tensor | None = None, generator: torch.Generator | None = None,
                lambda_unsupervised: float | None = None, unsupervised: bool = True) -> StepOutput:
        """The losses of Eq. 4 for one (micro-)batch and the prototype statistics of step 8. ``lambda_unsupervised``
        overrides λ2 (the ramp-up); ``unsupervised=False`` is a warm-up step on labels only; ``class_weights`` (C,)
        weight every cross-entropy per target class (``L_l^ub`` on top of its Eq. 7 pixel weights)."""
        config, student = self.train_config, self.student
        ignore = student.config.semantic_loss_ignore_index
        lambda_u = config.lambda_unsupervised if lambda_unsupervised is None else lambda_unsupervised
        images_l, labels_l = labeled["pixel_values"], labeled["labels"]
        size = tuple(images_l.shape[-2:])
        batch_l = images_l.shape[0]

        if not self.with_teacher:
            embeddings, low_res, logits = self._student_logits(images_l)
            loss_supervised = cross_entropy_loss(logits, labels_l, ignore, class_weights)
            statistics = self._sample(embeddings, low_res, labels_l, class_ratio, generator)
            loss = config.lambda_supervised * loss_supervised
            return StepOutput(loss, {"loss": loss.detach(), "loss_supervised": loss_supervised.detach()}, statistics)

        if unlabeled is None and unsupervised:
            raise ValueError(f"method={config.method!r} needs an unlabeled batch")
        images_weak = unlabeled["pixel_values_weak"] if unsupervised else images_l[:0]
        batch_u = images_weak.shape[0]

        # 1. Teacher encoder, no grad: labeled and weak unlabeled views in one pass (E^T runs on EMA stats).
        with torch.no_grad():
            low, high = self.teacher_encoder(torch.cat([images_l, images_weak]))
        features_l, features_u = (low[:batch_l], high[:batch_l]), (low[batch_l:], high[batch_l:])

        # 2–3. Teacher decoder on the labeled batch. Decoupled: trained by L_l^ub on detached E^T features;
        # otherwise an EMA copy, evaluated without grad. Its embeddings also feed MES (computed once).
        teacher_head = self.teacher_head
        with torch.set_grad_enabled(self.decoupled and torch.is_grad_enabled()):
            teacher_embeddings_l = self.teacher_decoder(*features_l, size=size)
            teacher_low_res_l = teacher_head(teacher_embeddings_l)
        terms: dict[str, Tensor] = {}
        loss = images_l.new_zeros(())
        if self.decoupled:
            teacher_logits_l = student.upsample_logits(teacher_low_res_l, size)
            loss_unbiased = unbiased_supervised_loss(teacher_logits_l, labels_l, reweight=config.reweight,
                                                     ignore_index=ignore, class_weights=class_weights)
            loss = loss + loss_unbiased
            terms["loss_unbiased"] = loss_unbiased.detach()

        if not unsupervised:  # warm-up: the student learns from the labels alone
            student_embeddings, student_low_res, student_logits = self._student_logits(images_l)
            loss_supervised = cross_entropy_loss(student_logits, labels_l, ignore, class_weights)
            loss = loss + config.lambda_supervised * loss_supervised
            terms.update(loss=loss.detach(), loss_supervised=loss_supervised.detach(),
                         loss_unsupervised=torch.zeros_like(loss_supervised.detach()))
            return StepOutput(loss, terms, *self._bank_statistics(
                teacher_embeddings_l, teacher_low_res_l, student_embeddings, student_low_res, labels_l, class_ratio,
                generator))

        # 4. Pseudo labels from the full teacher on the weak view (D^T on its running statistics).
        with torch.no_grad():
            was_training = self.teacher_decoder.training
            self.teacher_decoder.eval()
            teacher_logits_u = student.upsample_logits(teacher_head(self.teacher_decoder(*features_u, size=size)),
                                                       size)
            self.teacher_decoder.train(was_training)
            labels_u = pseudo_labels(teacher_logits_u, unlabeled["padding_mask"], config.pseudo_label_quantile, ignore,
                                     config.pseudo_label_threshold)
            # 5. CutMix on each strong view (one, or two as UniMatch), images and pseudo labels alike.
            mixed = [cutmix(unlabeled[f"pixel_values_strong{suffix}"], labels_u, unlabeled[f"cutmix_mask{suffix}"])
                     for suffix in ("", "_2") if f"pixel_values_strong{suffix}" in unlabeled]

        # 6. Student on labeled + mixed strong images in one pass (BN statistics over all); L_u is the views' mean.
        student_embeddings, student_low_res, student_logits = self._student_logits(
            torch.cat([images_l, *(images.to(images_l.dtype) for images, _ in mixed)]))
        loss_supervised = cross_entropy_loss(student_logits[:batch_l], labels_l, ignore, class_weights)
        weights_u = class_weights if config.unlabeled_class_weights else None  # option: the labeled losses only
        loss_unsupervised = sum(cross_entropy_loss(logits, labels, ignore, weights_u) for logits, (_, labels) in
                                zip(student_logits[batch_l:].split(batch_u), mixed, strict=True)) / len(mixed)
        if config.feature_perturbation > 0:  # SPEC §2.9 option: L_u = ½ (strong views + perturbed features)
            loss_perturbed = self._perturbed_loss(images_weak, labels_u, generator, weights_u)
            loss_unsupervised = 0.5 * (loss_unsupervised + loss_perturbed)
            terms["loss_feature_perturbation"] = loss_perturbed.detach()

        # 7. Eq. 4, with an unlabeled pixel weighing λ2 times a labeled one whatever the two batch sizes.
        lambda_u = lambda_u * unlabeled_loss_factor(batch_l, batch_u, config.pixel_balanced_losses)
        loss = loss + config.lambda_supervised * loss_supervised + lambda_u * loss_unsupervised
        terms.update(loss=loss.detach(), loss_supervised=loss_supervised.detach(),
                     loss_unsupervised=loss_unsupervised.detach())

        # 8 (statistics only; the trainer applies them after the optimizer step).
        teacher_statistics, student_statistics = self._bank_statistics(
            teacher_embeddings_l, teacher_low_res_l, student_embeddings[:batch_l], student_low_res[:batch_l],
            labels_l, class_ratio, generator)
        # Class distribution of this step's pseudo labels (the paper's Fig. 3 diagnostic).
        valid = labels_u != ignore
        pseudo_counts = torch.bincount(labels_u[valid].flatten(), minlength=teacher_head.num_classes).float()
        return StepOutput(loss, terms, teacher_statistics, student_statistics, pseudo_counts)

    def _student_logits(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(embeddings, stride-4 logits, full-size logits) of the student through its prototype head."""
        embeddings = self.student.embed(pixel_values)
        low_res = self.student.prototype_head(embeddings)
        return embeddings, low_res, self.student.upsample_logits(low_res, tuple(pixel_values.shape[-2:]))

    def _perturbed_loss(self, images_weak: Tensor, labels: Tensor, generator: torch.Generator | None,
                        class_weights: Tensor | None) -> Tensor:
        """The student on the weak view with its encoder features channel-dropped (:mod:`.perturbation`), against
        the pseudo labels: an extra pass that only the unlabeled loss sees."""
        student, p = self.student, self.train_config.feature_perturbation
        low, high = student.encoder(images_weak)
        size = tuple(images_weak.shape[-2:])
        embeddings = student.decoder(channel_dropout(low, p, generator), channel_dropout(high, p, generator), size=size)
        logits = student.upsample_logits(student.prototype_head(embeddings), size)
        return cross_entropy_loss(logits, labels, student.config.semantic_loss_ignore_index, class_weights)

    def _sample(self, embeddings: Tensor, low_res_logits: Tensor, labels: Tensor, class_ratio: Tensor,
                generator: torch.Generator | None) -> PrototypeStatistics:
        """MES (or an ablation sampler) over one labeled batch: L2-normalised embeddings, Eq. 9 entropies."""
        config = self.train_config
        with torch.no_grad():
            embeddings = F.normalize(embeddings.detach().float(), dim=1)
            pixel_entropy = entropy(low_res_logits.detach().float().softmax(1))
            labels_low = F.interpolate(labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest")[:, 0]
            sums, counts = sample_class_features(
                embeddings, labels_low.long(), pixel_entropy, class_ratio=class_ratio.to(embeddings.device),
                method=config.sampler, num_zones=config.mes_num_zones, alpha=config.mes_alpha,
                ignore_index=self.student.config.semantic_loss_ignore_index, generator=generator,
            )
        return PrototypeStatistics(sums.float(), counts.float())

    def _bank_statistics(self, teacher_embeddings: Tensor, teacher_low_res: Tensor, student_embeddings: Tensor,
                         student_low_res: Tensor, labels: Tensor, class_ratio: Tensor,
                         generator: torch.Generator | None) -> tuple[PrototypeStatistics, PrototypeStatistics | None]:
        """Step 8's samples on the labeled batch: the teacher's features for the shared (or teacher's) bank, the
        student's for its own bank; a bank that follows the student's by EMA samples nothing."""
        teacher = PrototypeStatistics.empty(self.teacher_head) if self.teacher_bank_follows_student else \
            self._sample(teacher_embeddings, teacher_low_res, labels, class_ratio, generator)
        student = None if self.shared_head else \
            self._sample(student_embeddings, student_low_res, labels, class_ratio, generator)
        return teacher, student

    # -- after each optimizer step -----------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, step: int, momentum: float, warmup_steps: int = 0) -> float:
        """EMA E^T ← E^S (and, for the mean teacher, D^T ← D^S and its bank ← the student's); returns τ."""
        if self.teacher_encoder is None:
            return 0.0
        tau = ema_momentum(step, momentum, warmup_steps)
        ema_update_(self.teacher_encoder, self.student.encoder, tau)
        if not self.decoupled and self.teacher_decoder is not None:
            ema_update_(self.teacher_decoder, self.student.decoder, tau)
        if self.teacher_bank_follows_student and self.teacher_prototype_head is not None:
            follow_prototypes_(self.teacher_prototype_head, self.student.prototype_head, tau)
        return tau

    @torch.no_grad()
    def export(self, which: str = "teacher") -> Des4ForSemanticSegmentation:
        """A standalone :class:`Des4ForSemanticSegmentation` holding the teacher (E^T, D^T, P) or the student."""
        model = copy.deepcopy(self.student)
        if which == "teacher" and self.teacher_encoder is not None and self.teacher_decoder is not None:
            model.encoder.load_state_dict(self.teacher_encoder.state_dict())
            model.decoder.load_state_dict(self.teacher_decoder.state_dict())
            model.prototype_head.load_state_dict(self.teacher_head.state_dict())
        elif which not in ("teacher", "student"):
            raise ValueError(f"which={which!r}: export 'teacher' or 'student'")
        model.float()
        model.to(memory_format=torch.contiguous_format)
        return model.eval()


def apply_prototype_updates(model: TeacherStudent, teacher: PrototypeStatistics,
                            student: PrototypeStatistics | None, momentum: float) -> None:
    """Eq. 12 on every bank that samples its own features (summed over processes first); a mean teacher's bank that
    follows the student's is updated by :meth:`TeacherStudent.update_teacher` instead."""
    if not model.teacher_bank_follows_student:
        update_prototypes_(model.teacher_head, teacher.sums, teacher.counts, momentum)
    if student is not None and not model.shared_head:
        update_prototypes_(model.student.prototype_head, student.sums, student.counts, momentum)


@torch.no_grad()
def average_batchnorm_statistics_(model: TeacherStudent, reduce_mean: Callable[[Tensor], Tensor]) -> None:
    """Each process's BN statistics follow its own batches: averaged (``reduce_mean``, one call for every layer), so
    that the EMA teacher, which copies them, and the decoupled teacher decoder, whose statistics make the pseudo
    labels, agree on every process."""
    modules = [model.student] + ([model.teacher_decoder] if model.decoupled else [])
    buffers = [buffer for module in modules for layer in module.modules()
               if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None
               for buffer in (layer.running_mean, layer.running_var)]
    if buffers:
        averaged = reduce_mean(torch.cat([buffer.flatten() for buffer in buffers]))
        for buffer, value in zip(buffers, averaged.split([buffer.numel() for buffer in buffers]), strict=True):
            buffer.copy_(value.view_as(buffer))


def after_optimizer_step(model: TeacherStudent, teacher: PrototypeStatistics, student: PrototypeStatistics | None,
                         step: int, warmup_steps: int, *, reduce: Callable[[Tensor, str], Tensor] | None = None,
                         ) -> float:
    """SPEC §2 step 8, once the optimizer has stepped: BN statistics averaged and prototype samples summed over
    processes (``reduce(tensor, "mean" | "sum")``, e.g. ``accelerator.reduce``; None on one process), Eq. 12 on the
    prototypes, then the teacher's EMA (Eq. 5; a mean teacher's own bank follows the student's fresh one). Returns
    the EMA momentum τ used."""
    config = model.train_config
    if reduce is not None:
        average_batchnorm_statistics_(model, lambda tensor: reduce(tensor, "mean"))
    for statistics in (teacher, student):
        if statistics is not None:
            statistics.reduce_(lambda tensor: reduce(tensor, "sum") if reduce is not None else tensor)
    apply_prototype_updates(model, teacher, student, config.prototype_momentum)
    return model.update_teacher(step, config.encoder_momentum, warmup_steps)
