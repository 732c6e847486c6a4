"""Teacher and student of one run (SPEC §2) and the Eq. 4 step: :class:`TeacherStudent`'s ``forward`` is one
(micro-)batch of SPEC §2 steps 1–8, batches in, losses and prototype statistics out; the trainer applies them
(backward, optimizer, :meth:`TeacherStudent.update_teacher`, :func:`apply_prototype_updates`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import cross_entropy_loss, entropy, unbiased_supervised_loss
from ..modeling_des4 import Des4ForSemanticSegmentation, PrototypeHead
from ..sampling import sample_class_features
from .config import TrainConfig


def ema_momentum(step: int, momentum: float, warmup_steps: int = 0) -> float:
    """U2PL-style ``τ = min(1 − 1/(s+1), τ1)`` (SPEC §2 [choice]): early teachers follow fast. ``s`` restarts at
    the end of a supervised-only warm-up, so the first teacher to make pseudo labels is a copy of the student."""
    s = step - warmup_steps if step >= warmup_steps else step
    return min(1.0 - 1.0 / (s + 1), momentum)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Eq. 5 in place: ``θ_t ← τ·θ_t + (1−τ)·θ_s`` for parameters and float buffers (BN statistics, averaged
    over processes first); integer buffers are copied."""
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
        teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        if teacher_buffer.is_floating_point():
            teacher_buffer.mul_(momentum).add_(student_buffer.detach(), alpha=1.0 - momentum)
        else:
            teacher_buffer.copy_(student_buffer)


def rampup_weight(step: int, max_steps: int, rampup: float) -> float:
    """Mean Teacher's ramp-up factor for λ2: ``exp(−5(1−t)²)`` with t = step / (rampup·max_steps), then 1."""
    length = rampup * max_steps
    return 1.0 if length <= 0 or step >= length else math.exp(-5.0 * (1.0 - max(0.0, step / length)) ** 2)


def unlabeled_loss_factor(batch_labeled: int, batch_unlabeled: int, pixel_balanced: bool) -> float:
    """Factor on ``λ2 · L_u`` so that an unlabeled pixel weighs λ2 times a labeled one whatever the batch sizes
    (SPEC §2.7 [choice]): each loss is a mean over its own pixels, so unscaled it weighs ``λ2 · B_l / B_u``."""
    return batch_unlabeled / batch_labeled if pixel_balanced else 1.0


def low_confidence_mask(confidence: Tensor, pseudo_labels: Tensor, quantile: float, ignore_index: int) -> Tensor:
    """Pixels below the ``quantile`` of their pseudo class's confidences in this batch (SPEC §2.7 [choice]): unlike
    a fixed threshold, which cosine logits may never pass, it keeps the surest ``1 − quantile`` of every class."""
    drop = torch.zeros_like(pseudo_labels, dtype=torch.bool)
    for cls in torch.unique(pseudo_labels[pseudo_labels != ignore_index]).tolist():
        members = pseudo_labels == cls
        threshold = torch.quantile(confidence[members].float(), quantile)
        drop |= members & (confidence < threshold)
    return drop


@dataclass
class PrototypeStatistics:
    """Per-class sums (C, d) and counts (C,) of sampled features, accumulated until the optimizer steps."""

    sums: Tensor
    counts: Tensor

    @classmethod
    def empty(cls, head: PrototypeHead) -> PrototypeStatistics:
        return cls(torch.zeros_like(head.prototypes, dtype=torch.float32),
                   torch.zeros(head.num_classes, device=head.prototypes.device))

    def add_(self, other: PrototypeStatistics) -> None:
        self.sums += other.sums
        self.counts += other.counts


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

    def __init__(self, student: Des4ForSemanticSegmentation, config: TrainConfig) -> None:
        super().__init__()
        self.student = student
        self.train_config = config
        self.with_teacher = config.method != "supervised"
        self.decoupled = config.decoupled and self.with_teacher
        self.shared_head = config.shared_head or not self.with_teacher
        self.teacher_bank_follows_student = (self.with_teacher and not self.decoupled and not self.shared_head
                                             and config.ema_teacher_bank)
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
            confidence, pseudo_labels = teacher_logits_u.float().softmax(1).max(1)
            pseudo_labels = pseudo_labels.masked_fill(unlabeled["padding_mask"], ignore)
            if config.pseudo_label_quantile is not None:
                pseudo_labels = pseudo_labels.masked_fill(
                    low_confidence_mask(confidence, pseudo_labels, config.pseudo_label_quantile, ignore), ignore)

            # 5. CutMix on the strong view: each sample's box is filled from the next sample of the batch
            # (with a batch of one the box comes from the image itself, i.e. no mixing).
            partner = torch.roll(torch.arange(batch_u, device=images_weak.device), shifts=1)
            box = unlabeled["cutmix_mask"]
            images_mixed = torch.where(box[:, None], unlabeled["pixel_values_strong"][partner],
                                       unlabeled["pixel_values_strong"])
            labels_mixed = torch.where(box, pseudo_labels[partner], pseudo_labels)

        # 6. Student on labeled + mixed strong images in one pass (BN statistics over both).
        student_embeddings, student_low_res, student_logits = self._student_logits(
            torch.cat([images_l, images_mixed.to(images_l.dtype)]))
        loss_supervised = cross_entropy_loss(student_logits[:batch_l], labels_l, ignore, class_weights)
        loss_unsupervised = cross_entropy_loss(student_logits[batch_l:], labels_mixed, ignore, class_weights)

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
        valid = pseudo_labels != ignore
        pseudo_counts = torch.bincount(pseudo_labels[valid].flatten(), minlength=teacher_head.num_classes).float()
        return StepOutput(loss, terms, teacher_statistics, student_statistics, pseudo_counts)

    def _student_logits(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(embeddings, stride-4 logits, full-size logits) of the student through its prototype head."""
        embeddings = self.student.embed(pixel_values)
        low_res = self.student.prototype_head(embeddings)
        return embeddings, low_res, self.student.upsample_logits(low_res, tuple(pixel_values.shape[-2:]))

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
            self.teacher_prototype_head.follow_(self.student.prototype_head, tau)
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
    """Eq. 12 on every bank that samples its own features (all-reduced inside ``PrototypeHead.update``); a mean
    teacher's bank that follows the student's is updated by :meth:`TeacherStudent.update_teacher` instead."""
    if not model.teacher_bank_follows_student:
        model.teacher_head.update(teacher.sums, teacher.counts, momentum)
    if student is not None and not model.shared_head:
        model.student.prototype_head.update(student.sums, student.counts, momentum)
