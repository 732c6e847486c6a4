"""One training step (SPEC §2, steps 1–8), pure: batches in, losses and prototype statistics out.

Nothing here touches the optimizer, Accelerate or the data loaders; :mod:`.trainer` applies the
results (backward, optimizer step, EMA, prototype update). The losses and the sampler come from
:mod:`des4_hf.losses` and :mod:`des4_hf.sampling`; no second copy of them lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import cross_entropy_loss, entropy, unbiased_supervised_loss
from ..modeling_des4 import (
    Des4Decoder,
    Des4Encoder,
    Des4ForSemanticSegmentation,
    PrototypeHead,
    pad_to_multiple,
)
from ..sampling import sample_class_features
from .teacher import TeacherStudent


@dataclass(frozen=True)
class StepSettings:
    """The parts of :class:`~des4_hf.training.config.TrainConfig` a step needs."""

    method: str = "des4"
    reweight: bool = True
    sampler: str = "mes"
    lambda_supervised: float = 1.0
    lambda_unsupervised: float = 1.5
    num_zones: int = 5
    alpha: float = 0.1
    ignore_index: int = 255
    pseudo_label_threshold: float | None = None
    pseudo_label_quantile: float | None = None  # per-class confidence quantile below which pseudo labels are ignored
    class_weight_unbiased: bool = True  # class weights (when given) also enter L_l^ub
    pixel_balanced: bool = True  # L_u scaled by B_u / B_l: an unlabeled pixel weighs λ2 × a labeled one (SPEC §2.7)
    unsupervised: bool = True  # False during a supervised-only warm-up: no L_u, no pseudo labels


@dataclass
class PrototypeStatistics:
    """Per-class sums (C, d) and counts (C,) of sampled features, accumulated until the optimizer steps."""

    sums: Tensor
    counts: Tensor

    def add_(self, other: PrototypeStatistics) -> PrototypeStatistics:
        self.sums += other.sums
        self.counts += other.counts
        return self


@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, Tensor]  # detached scalars, logged every step
    teacher_statistics: PrototypeStatistics  # for the shared bank (or the teacher's own)
    student_statistics: PrototypeStatistics | None = None  # only without a shared head
    pseudo_label_counts: Tensor | None = None  # (C,) classes of this step's valid pseudo labels
    extras: dict[str, Tensor] = field(default_factory=dict)


def rampup_weight(step: int, max_steps: int, rampup: float) -> float:
    """Factor in [0, 1] for λ2 at 0-based ``step``: ``exp(−5(1−t)²)`` with t = step / (rampup·max_steps), then 1.

    The sigmoid-shaped ramp-up of Mean Teacher (Tarvainen & Valpola 2017); ``rampup=0`` is always 1.
    """
    length = rampup * max_steps
    if length <= 0 or step >= length:
        return 1.0
    progress = max(0.0, step / length)
    return math.exp(-5.0 * (1.0 - progress) ** 2)


def unlabeled_loss_factor(batch_labeled: int, batch_unlabeled: int, pixel_balanced: bool) -> float:
    """Factor on ``λ2 · L_u`` so that one unlabeled pixel weighs λ2 times one labeled pixel (SPEC §2.7 [choice]).

    Each loss is a mean over its own pixels, so unscaled an unlabeled pixel weighs ``λ2 · B_l / B_u`` times a
    labeled one (4.5× with 6 labeled + 2 unlabeled crops and λ2 = 1.5); ``B_u / B_l`` restores λ2. Equal
    batches, as in the paper, give 1 either way.
    """
    return batch_unlabeled / batch_labeled if pixel_balanced else 1.0


def low_confidence_mask(confidence: Tensor, pseudo_labels: Tensor, quantile: float, ignore_index: int) -> Tensor:
    """Pixels whose confidence lies below the ``quantile`` of their pseudo class's confidences in this batch.

    A threshold that passes pixels whatever the logit scale: with cosine logits × 10 a fixed 0.95 passes
    nothing early in training, while this keeps the most confident ``1 − quantile`` of every class, rare
    classes included (a class-wise quantile threshold; SPEC §2.7 [choice]).
    """
    drop = torch.zeros_like(pseudo_labels, dtype=torch.bool)
    for cls in torch.unique(pseudo_labels[pseudo_labels != ignore_index]).tolist():
        members = pseudo_labels == cls
        threshold = torch.quantile(confidence[members].float(), quantile)
        drop |= members & (confidence < threshold)
    return drop


def encode(encoder: Des4Encoder, pixel_values: Tensor, output_stride: int) -> tuple[Tensor, Tensor]:
    return encoder(pad_to_multiple(pixel_values, output_stride))


def decode(decoder: Des4Decoder, features: tuple[Tensor, Tensor], size: tuple[int, int]) -> Tensor:
    """Embeddings cropped to ⌈H/4⌉ × ⌈W/4⌉ of the unpadded input, as ``Des4ForSemanticSegmentation.embed``."""
    embeddings = decoder(*features)
    return embeddings[..., : math.ceil(size[0] / 4), : math.ceil(size[1] / 4)]


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of (B, H, W) labels to the embedding grid (SPEC §3 inputs)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sample_statistics(
    embeddings: Tensor, low_res_logits: Tensor, labels: Tensor, class_ratio: Tensor, settings: StepSettings,
    generator: torch.Generator | None,
) -> PrototypeStatistics:
    """MES (or an ablation sampler) over one labeled batch: L2-normalised embeddings, Eq. 9 entropies."""
    with torch.no_grad():
        embeddings = F.normalize(embeddings.detach().float(), dim=1)
        pixel_entropy = entropy(low_res_logits.detach().float().softmax(1))
        labels_low = resize_labels(labels, tuple(embeddings.shape[-2:]))
        sums, counts = sample_class_features(
            embeddings, labels_low, pixel_entropy, class_ratio=class_ratio.to(embeddings.device),
            method=settings.sampler, num_zones=settings.num_zones, alpha=settings.alpha,
            ignore_index=settings.ignore_index, generator=generator,
        )
    return PrototypeStatistics(sums.float(), counts.float())


def _student_logits(student: Des4ForSemanticSegmentation, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(embeddings, stride-4 logits, full-size logits) of the student through its prototype head."""
    embeddings = student.embed(pixel_values)
    low_res = student.prototype_head(embeddings)
    return embeddings, low_res, student.upsample_logits(low_res, tuple(pixel_values.shape[-2:]))


def compute_step(
    model: TeacherStudent,
    labeled: dict[str, Tensor],
    unlabeled: dict[str, Tensor] | None,
    *,
    settings: StepSettings,
    class_ratio: Tensor,
    class_weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """The losses of Eq. 4 for one (micro-)batch and the prototype statistics of step 8.

    ``class_weights`` (C,), when given, weight the cross-entropies per target class
    (``TrainConfig.class_weighting``, not in the paper): the student's ``L_l^b`` and ``L_u``, and, with
    ``settings.class_weight_unbiased``, ``L_l^ub`` on top of its Eq. 7 pixel weights.
    """
    student = model.student
    ignore = settings.ignore_index
    images_l, labels_l = labeled["pixel_values"], labeled["labels"]
    size = tuple(images_l.shape[-2:])
    batch_l = images_l.shape[0]

    if settings.method == "supervised" or not model.with_teacher:
        embeddings, low_res, logits = _student_logits(student, images_l)
        loss_supervised = cross_entropy_loss(logits, labels_l, ignore, class_weights)
        statistics = sample_statistics(embeddings, low_res, labels_l, class_ratio, settings, generator)
        loss = settings.lambda_supervised * loss_supervised
        return StepOutput(loss, {"loss": loss.detach(), "loss_supervised": loss_supervised.detach()}, statistics)

    use_unlabeled = settings.unsupervised  # False during a supervised-only warm-up: steps 4–6 are skipped
    if unlabeled is None and use_unlabeled:
        raise ValueError(f"method={settings.method!r} needs an unlabeled batch")
    assert model.teacher_encoder is not None and model.teacher_decoder is not None
    output_stride = student.config.output_stride
    images_weak = unlabeled["pixel_values_weak"] if use_unlabeled else images_l[:0]
    batch_u = images_weak.shape[0]

    # 1. Teacher encoder, no grad: labeled and weak unlabeled views in one pass (E^T runs on EMA stats).
    with torch.no_grad():
        low, high = encode(model.teacher_encoder, torch.cat([images_l, images_weak]), output_stride)
    features_l = (low[:batch_l], high[:batch_l])
    features_u = (low[batch_l:], high[batch_l:])

    # 2–3. Teacher decoder on the labeled batch. Decoupled: trained by L_l^ub on detached E^T features;
    # otherwise an EMA copy, evaluated without grad. Its embeddings also feed MES (computed once).
    teacher_head = model.teacher_head
    with torch.set_grad_enabled(model.decoupled and torch.is_grad_enabled()):
        teacher_embeddings_l = decode(model.teacher_decoder, features_l, size)
        teacher_low_res_l = teacher_head(teacher_embeddings_l)
    terms: dict[str, Tensor] = {}
    loss = images_l.new_zeros(())
    if model.decoupled:
        teacher_logits_l = student.upsample_logits(teacher_low_res_l, size)
        loss_unbiased = unbiased_supervised_loss(
            teacher_logits_l, labels_l, reweight=settings.reweight, ignore_index=ignore,
            class_weights=class_weights if settings.class_weight_unbiased else None)
        loss = loss + loss_unbiased
        terms["loss_unbiased"] = loss_unbiased.detach()

    if not use_unlabeled:  # warm-up: the student learns from the labels alone
        student_embeddings, student_low_res, student_logits = _student_logits(student, images_l)
        loss_supervised = cross_entropy_loss(student_logits, labels_l, ignore, class_weights)
        loss = loss + settings.lambda_supervised * loss_supervised
        terms.update(loss=loss.detach(), loss_supervised=loss_supervised.detach(),
                     loss_unsupervised=torch.zeros_like(loss_supervised.detach()))
        return StepOutput(loss, terms, *_bank_statistics(
            model, teacher_embeddings_l, teacher_low_res_l, student_embeddings, student_low_res, labels_l,
            class_ratio, settings, generator))

    # 4. Pseudo labels from the full teacher on the weak view (D^T on its running statistics).
    with torch.no_grad():
        was_training = model.teacher_decoder.training
        model.teacher_decoder.eval()
        teacher_logits_u = student.upsample_logits(teacher_head(decode(model.teacher_decoder, features_u, size)), size)
        model.teacher_decoder.train(was_training)
        confidence, pseudo_labels = teacher_logits_u.float().softmax(1).max(1)
        pseudo_labels = pseudo_labels.masked_fill(unlabeled["padding_mask"], ignore)
        if settings.pseudo_label_threshold is not None:
            pseudo_labels = pseudo_labels.masked_fill(confidence < settings.pseudo_label_threshold, ignore)
        if settings.pseudo_label_quantile is not None:
            pseudo_labels = pseudo_labels.masked_fill(
                low_confidence_mask(confidence, pseudo_labels, settings.pseudo_label_quantile, ignore), ignore)

        # 5. CutMix on the strong view: each sample's box is filled from the next sample of the batch
        # (with a batch of one the box comes from the image itself, i.e. no mixing).
        partner = torch.roll(torch.arange(batch_u, device=images_weak.device), shifts=1)
        box = unlabeled["cutmix_mask"]
        images_mixed = torch.where(box[:, None], unlabeled["pixel_values_strong"][partner],
                                   unlabeled["pixel_values_strong"])
        labels_mixed = torch.where(box, pseudo_labels[partner], pseudo_labels)

    # 6. Student on labeled + mixed strong images in one pass (BN statistics over both).
    student_embeddings, student_low_res, student_logits = _student_logits(
        student, torch.cat([images_l, images_mixed.to(images_l.dtype)])
    )
    loss_supervised = cross_entropy_loss(student_logits[:batch_l], labels_l, ignore, class_weights)
    loss_unsupervised = cross_entropy_loss(student_logits[batch_l:], labels_mixed, ignore, class_weights)

    # 7. Eq. 4, with an unlabeled pixel weighing λ2 times a labeled one whatever the two batch sizes.
    lambda_unsupervised = settings.lambda_unsupervised * unlabeled_loss_factor(batch_l, batch_u, settings.pixel_balanced)
    loss = loss + settings.lambda_supervised * loss_supervised + lambda_unsupervised * loss_unsupervised
    terms.update(loss=loss.detach(), loss_supervised=loss_supervised.detach(),
                 loss_unsupervised=loss_unsupervised.detach())

    # 8 (statistics only; the trainer applies them after the optimizer step).
    teacher_statistics, student_statistics = _bank_statistics(
        model, teacher_embeddings_l, teacher_low_res_l, student_embeddings[:batch_l], student_low_res[:batch_l],
        labels_l, class_ratio, settings, generator)
    # Class distribution of this step's pseudo labels (the paper's Fig. 3 diagnostic).
    valid = pseudo_labels != ignore
    pseudo_counts = torch.bincount(pseudo_labels[valid].flatten(), minlength=teacher_head.num_classes).float()
    return StepOutput(loss, terms, teacher_statistics, student_statistics, pseudo_counts)


def _bank_statistics(
    model: TeacherStudent, teacher_embeddings: Tensor, teacher_low_res: Tensor, student_embeddings: Tensor,
    student_low_res: Tensor, labels: Tensor, class_ratio: Tensor, settings: StepSettings,
    generator: torch.Generator | None,
) -> tuple[PrototypeStatistics, PrototypeStatistics | None]:
    """Step 8's samples on the labeled batch: the teacher's features for the shared (or teacher's) bank, and the
    student's for its own bank when the banks are separate. A mean teacher's bank that follows the student's
    by EMA samples nothing (empty statistics, never applied)."""
    if model.teacher_bank_follows_student:
        teacher = empty_statistics(model.teacher_head)
    else:
        teacher = sample_statistics(teacher_embeddings, teacher_low_res, labels, class_ratio, settings, generator)
    student = None
    if not model.shared_head:
        student = sample_statistics(student_embeddings, student_low_res, labels, class_ratio, settings, generator)
    return teacher, student


def apply_prototype_updates(model: TeacherStudent, teacher: PrototypeStatistics,
                            student: PrototypeStatistics | None, momentum: float) -> None:
    """Eq. 12 on every bank that samples its own features (all-reduced inside ``PrototypeHead.update``); a mean
    teacher's bank that follows the student's is updated by ``TeacherStudent.update_teacher`` instead."""
    if not model.teacher_bank_follows_student:
        model.teacher_head.update(teacher.sums, teacher.counts, momentum)
    if student is not None and not model.shared_head:
        model.student.prototype_head.update(student.sums, student.counts, momentum)


def empty_statistics(head: PrototypeHead) -> PrototypeStatistics:
    return PrototypeStatistics(torch.zeros_like(head.prototypes, dtype=torch.float32),
                               torch.zeros(head.num_classes, device=head.prototypes.device))
