"""One DeS4 step: the loss of Eq. 4, where gradients flow, and how the teacher changes."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from des4_hf import Des4Config, Des4ForSemanticSegmentation
from des4_hf.method.losses import cross_entropy_loss, unbiased_supervised_loss, unlabeled_loss_factor
from des4_hf.method.pseudo_labels import low_confidence_mask
from des4_hf.method.step import TeacherStudent, apply_prototype_updates
from des4_hf.method.teacher import ema_momentum, ema_update_, rampup_weight
from des4_hf.training.config import TrainConfig

NUM_CLASSES = 3
CROP = 48


def make_model(**options) -> TeacherStudent:
    """A tiny teacher/student switched by ``TrainConfig(**options)`` (λ1 = 1, λ2 = 1.5 by default)."""
    torch.manual_seed(0)
    # No dropout so two forward passes over the same inputs agree exactly.
    config = Des4Config(backbone="test_resnet", num_labels=NUM_CLASSES, decoder_channels=16, decoder_dropout=0.0)
    return TeacherStudent(Des4ForSemanticSegmentation(config), TrainConfig(**options)).train()


def with_options(model: TeacherStudent, **options) -> TeacherStudent:
    model.train_config = replace(model.train_config, **options)
    return model


def make_batches(batch: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, NUM_CLASSES, (batch, CROP, CROP), generator=generator)
    labels[:, :4] = 255
    box = torch.zeros(batch, CROP, CROP, dtype=torch.bool)
    box[:, 10:30, 5:25] = True
    padding = torch.zeros(batch, CROP, CROP, dtype=torch.bool)
    padding[:, -5:] = True
    labeled = {"pixel_values": torch.randn(batch, 3, CROP, CROP, generator=generator), "labels": labels}
    unlabeled = {"pixel_values_weak": torch.randn(batch, 3, CROP, CROP, generator=generator),
                 "pixel_values_strong": torch.randn(batch, 3, CROP, CROP, generator=generator),
                 "padding_mask": padding, "cutmix_mask": box}
    return labeled, unlabeled


RATIO = torch.tensor([1.0, 0.5, 0.25])


def run_step(model: TeacherStudent, class_weights: torch.Tensor | None = None, batch_unlabeled: int = 2):
    labeled, _ = make_batches()
    _, unlabeled = make_batches(batch_unlabeled)
    return model(labeled, unlabeled, class_ratio=RATIO, class_weights=class_weights,
                 generator=torch.Generator().manual_seed(0)), labeled, unlabeled


@pytest.mark.parametrize("class_weights", [None, torch.tensor([0.25, 1.0, 4.0])], ids=["plain", "class-weighted"])
def test_total_loss_is_eq4_recomputed_from_the_algorithm_modules(class_weights: torch.Tensor | None) -> None:
    model = make_model()
    reference = copy.deepcopy(model)  # BN running statistics move during the step: recompute on a copy
    output, labeled, unlabeled = run_step(model, class_weights=class_weights)
    model = reference
    student = model.student
    size = (CROP, CROP)
    with torch.no_grad():
        # L_l^ub: teacher decoder on E^T features, through the prototypes, Eq. 7–8 weights.
        low, high = model.teacher_encoder(labeled["pixel_values"])
        teacher_logits = student.upsample_logits(student.prototype_head(model.teacher_decoder(low, high, size=size)),
                                                 size)
        expected_unbiased = unbiased_supervised_loss(teacher_logits, labeled["labels"], reweight=True,
                                                     class_weights=class_weights)
        # Pseudo labels: full teacher in eval mode on the weak view, padding ignored, CutMix from the next sample.
        model.teacher_decoder.eval()
        low_u, high_u = model.teacher_encoder(unlabeled["pixel_values_weak"])
        logits_u = student.upsample_logits(student.prototype_head(model.teacher_decoder(low_u, high_u, size=size)),
                                           size)
        model.teacher_decoder.train()
        pseudo = logits_u.argmax(1).masked_fill(unlabeled["padding_mask"], 255)
        box = unlabeled["cutmix_mask"]
        mixed_images = torch.where(box[:, None], unlabeled["pixel_values_strong"].roll(1, 0),
                                   unlabeled["pixel_values_strong"])
        mixed_labels = torch.where(box, pseudo.roll(1, 0), pseudo)
        student_logits = student(torch.cat([labeled["pixel_values"], mixed_images])).logits
        # Class weights (TrainConfig.class_weighting) enter all three cross-entropies.
        expected_supervised = cross_entropy_loss(student_logits[:2], labeled["labels"], class_weights=class_weights)
        expected_unsupervised = cross_entropy_loss(student_logits[2:], mixed_labels, class_weights=class_weights)
    expected = expected_unbiased + 1.0 * expected_supervised + 1.5 * expected_unsupervised
    torch.testing.assert_close(output.terms["loss_unbiased"], expected_unbiased, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.terms["loss_supervised"], expected_supervised, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.terms["loss_unsupervised"], expected_unsupervised, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.loss.detach(), expected, rtol=1e-4, atol=1e-5)


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_unbiased_loss_reaches_only_the_teacher_decoder() -> None:
    model = make_model(lambda_supervised=0.0, lambda_unsupervised=0.0)
    output, _, _ = run_step(model)
    output.loss.backward()  # = L_l^ub alone
    assert _grads(model.teacher_decoder), "D^T must be trained by L_l^ub"
    assert not _grads(model.student.encoder), "L_l^ub must not reach the student encoder"
    assert not _grads(model.student.decoder), "L_l^ub must not reach the student decoder"
    assert all(not p.requires_grad for p in model.teacher_encoder.parameters())
    assert all(p.grad is None for p in model.teacher_encoder.parameters()), "nothing flows into E^T"


def test_student_losses_do_not_reach_the_teacher_decoder() -> None:
    model = make_model()
    full, _, _ = run_step(model)
    full.loss.backward()
    grads_full = [p.grad.clone() for p in model.teacher_decoder.parameters()]
    model.zero_grad(set_to_none=True)
    alone, _, _ = run_step(with_options(model, lambda_supervised=0.0, lambda_unsupervised=0.0))
    alone.loss.backward()
    for full_grad, param in zip(grads_full, model.teacher_decoder.parameters(), strict=True):
        torch.testing.assert_close(full_grad, param.grad)  # D^T changes only through L_l^ub
    assert _grads(model.student.encoder) == [] and _grads(model.student.decoder) == []


def test_teacher_encoder_changes_only_by_ema() -> None:
    model = make_model()
    before = copy.deepcopy(model.teacher_encoder.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    output, _, _ = run_step(model)
    output.loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.teacher_encoder.state_dict().items()), \
        "the optimizer must not touch E^T"
    tau = model.update_teacher(step=5, momentum=0.99)
    assert tau == pytest.approx(ema_momentum(5, 0.99)) == pytest.approx(1 - 1 / 6)
    student_state = model.student.encoder.state_dict()
    for key, value in model.teacher_encoder.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, tau * before[key] + (1 - tau) * student_state[key])


def test_train_mode_keeps_the_ema_teacher_in_eval_mode() -> None:
    model = make_model(decoupled=True).train()
    assert model.student.training and model.teacher_decoder.training
    assert not model.teacher_encoder.training, "E^T runs on its EMA statistics, never on batch statistics"
    mean_teacher = make_model(decoupled=False).train()
    assert not mean_teacher.teacher_decoder.training


def test_ema_momentum_warm_up_caps_at_tau1() -> None:
    assert ema_momentum(0, 0.99) == 0.0  # first update copies the student
    assert ema_momentum(1000, 0.99) == 0.99


def test_unsupervised_rampup_rises_monotonically_to_one_and_is_off_by_default() -> None:
    assert all(rampup_weight(step, 300, 0.0) == 1.0 for step in (0, 1, 299))  # the paper: no ramp-up
    weights = [rampup_weight(step, 300, 0.5) for step in range(300)]
    assert weights[0] == pytest.approx(math.exp(-5.0))
    assert weights[75] == pytest.approx(math.exp(-5.0 * 0.25))  # halfway through the ramp
    assert all(a < b for a, b in zip(weights[:150], weights[1:151], strict=True))
    assert weights[150:] == [1.0] * 150


def test_ema_update_copies_integer_buffers() -> None:
    teacher, student = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    student.num_batches_tracked += 7
    student.running_mean += 1.0
    ema_update_(teacher, student, 0.5)
    assert int(teacher.num_batches_tracked) == 7
    torch.testing.assert_close(teacher.running_mean, torch.full((2,), 0.5))


def test_mean_teacher_has_no_unbiased_loss_and_an_ema_decoder_and_bank() -> None:
    model = make_model(method="mean-teacher")  # no D.T., no S.H., no P.R. (Table 3, first row)
    assert all(not p.requires_grad for p in model.teacher_decoder.parameters())
    output, _, _ = run_step(model)
    assert "loss_unbiased" not in output.terms
    assert output.student_statistics is not None  # the student's bank samples the student's features
    before_student = model.student.prototype_head.prototypes.clone()
    apply_prototype_updates(model, output.teacher_statistics, output.student_statistics, 0.9)
    assert not torch.equal(before_student, model.student.prototype_head.prototypes)
    # SPEC §4: the teacher's bank is no MES target; it follows the student's bank in the teacher's EMA.
    assert model.teacher_prototype_head is not None and not bool(model.teacher_prototype_head.initialized.any())
    model.update_teacher(0, 0.99)  # τ = 0 at step 0: a copy
    torch.testing.assert_close(model.teacher_prototype_head.prototypes, model.student.prototype_head.prototypes)
    assert torch.equal(model.teacher_prototype_head.initialized, model.student.prototype_head.initialized)


def test_mean_teacher_bank_can_still_sample_its_own_features() -> None:
    model = make_model(method="mean-teacher", ema_teacher_bank=False)
    output, _, _ = run_step(model)
    apply_prototype_updates(model, output.teacher_statistics, output.student_statistics, 0.9)
    assert model.teacher_prototype_head is not None and bool(model.teacher_prototype_head.initialized.any())
    assert not torch.equal(model.teacher_prototype_head.prototypes, model.student.prototype_head.prototypes)


@pytest.mark.parametrize("batch_labeled, batch_unlabeled, factor", [(6, 2, 1 / 3), (2, 2, 1.0), (4, 8, 2.0)])
def test_an_unlabeled_pixel_weighs_lambda2_times_a_labeled_one_whatever_the_batches(
        batch_labeled: int, batch_unlabeled: int, factor: float) -> None:
    assert unlabeled_loss_factor(batch_labeled, batch_unlabeled, pixel_balanced=True) == pytest.approx(factor)
    assert unlabeled_loss_factor(batch_labeled, batch_unlabeled, pixel_balanced=False) == 1.0
    # The per-pixel weights a loss gives, read off its gradient: labeled 1/N_l, unlabeled λ2·factor/N_u.
    pixels = 5
    ce_labeled = torch.ones(batch_labeled * pixels, requires_grad=True)
    ce_unlabeled = torch.ones(batch_unlabeled * pixels, requires_grad=True)
    lambda2 = 1.5
    (ce_labeled.mean() + lambda2 * unlabeled_loss_factor(batch_labeled, batch_unlabeled, True)
     * ce_unlabeled.mean()).backward()
    assert float(ce_unlabeled.grad[0] / ce_labeled.grad[0]) == pytest.approx(lambda2)


def test_step_scales_the_unlabeled_loss_by_the_batch_ratio() -> None:
    # Two labeled + one unlabeled crop: L = L_l^ub + λ1·L_l^b + λ2·(1/2)·L_u; unbalanced, λ2·L_u.
    for balanced, factor in ((True, 0.5), (False, 1.0)):
        model = make_model(pixel_balanced_losses=balanced)
        output, _, _ = run_step(model, batch_unlabeled=1)
        terms = output.terms
        expected = terms["loss_unbiased"] + terms["loss_supervised"] + 1.5 * factor * terms["loss_unsupervised"]
        torch.testing.assert_close(terms["loss"], expected)


def test_low_confidence_mask_drops_each_classes_least_sure_quantile() -> None:
    confidence = torch.tensor([[0.9, 0.5, 0.7, 0.2], [0.6, 0.4, 0.1, 0.3]])
    labels = torch.tensor([[0, 0, 0, 0], [1, 1, 255, 2]])
    drop = low_confidence_mask(confidence, labels, quantile=0.5, ignore_index=255)
    # Class 0: median of (0.9, 0.5, 0.7, 0.2) = 0.6 → drop 0.5 and 0.2. Class 1: median of (0.6, 0.4) = 0.5 →
    # drop 0.4. Class 2, one pixel: its own median → kept. The ignored pixel is left alone.
    assert drop.tolist() == [[False, True, False, True], [False, True, False, False]]
    assert not low_confidence_mask(confidence, labels, quantile=0.0, ignore_index=255).any()


def test_quantile_threshold_ignores_pseudo_labels_in_the_step() -> None:
    counts = []
    for quantile in (None, 0.5):
        output, _, _ = run_step(make_model(pseudo_label_quantile=quantile))
        counts.append(float(output.pseudo_label_counts.sum()))
    assert 0.4 * counts[0] < counts[1] < 0.6 * counts[0]  # about half of each class dropped (ties aside)


def test_warmup_restarts_the_teacher_ema_at_its_end() -> None:
    warmup = 60
    # During the warm-up the usual schedule min(1 − 1/(s+1), τ1) from step 0; at its end τ = 0 (a copy), then again.
    assert ema_momentum(0, 0.99, warmup) == 0.0
    assert ema_momentum(59, 0.99, warmup) == pytest.approx(1 - 1 / 60)
    assert ema_momentum(60, 0.99, warmup) == 0.0
    assert ema_momentum(61, 0.99, warmup) == 0.5
    assert ema_momentum(260, 0.99, warmup) == 0.99
    assert [ema_momentum(step, 0.99) for step in (0, 1, 99, 100)] == [0.0, 0.5, 0.99, 0.99]  # no warm-up: as before


def test_warmup_steps_from_the_fraction() -> None:
    from des4_hf_scripts.train import parse_train_config as parse_config

    from des4_hf.training.trainer import warmup_steps

    assert warmup_steps(parse_config(["--supervised-warmup", "0.2"]), 300) == 60
    assert warmup_steps(parse_config(["--supervised-warmup", "0.25"]), 1000) == 250
    assert warmup_steps(parse_config([]), 300) == 0
    assert warmup_steps(parse_config(["--method", "supervised", "--supervised-warmup", "0.2"]), 300) == 0


def test_warmup_step_trains_on_labels_only() -> None:
    model = make_model()
    labeled, _ = make_batches()
    output = model(labeled, None, class_ratio=RATIO, generator=torch.Generator().manual_seed(0), unsupervised=False)
    terms = output.terms
    assert float(terms["loss_unsupervised"]) == 0.0 and output.pseudo_label_counts is None
    torch.testing.assert_close(terms["loss"], terms["loss_unbiased"] + terms["loss_supervised"])
    output.loss.backward()  # the student and the decoupled teacher decoder both learn from the labels
    assert all(p.grad is not None for p in model.teacher_decoder.parameters())
    assert all(p.grad is not None for p in model.student.encoder.parameters())
    assert float(output.teacher_statistics.counts.sum()) > 0  # MES still feeds the prototypes


def test_supervised_baseline_uses_only_labeled_data() -> None:
    model = make_model(method="supervised")
    labeled, _ = make_batches()
    output = model(labeled, None, class_ratio=RATIO)
    assert set(output.terms) == {"loss", "loss_supervised"}
    assert model.teacher_encoder is None


def test_shared_head_update_uses_teacher_statistics() -> None:
    model = make_model()
    output, _, _ = run_step(model)
    counts = output.teacher_statistics.counts
    assert counts.sum() > 0
    apply_prototype_updates(model, output.teacher_statistics, None, 0.99)
    seen = counts > 0
    assert bool(model.student.prototype_head.initialized[seen].all())
    assert model.teacher_head is model.student.prototype_head


# -- the strongest later methods' ingredients as options (SPEC §2.9; issue 30) --------------------------------------
def test_a_fixed_threshold_ignores_pseudo_labels_below_it() -> None:
    from des4_hf.method.pseudo_labels import pseudo_labels

    logits = torch.log(torch.tensor([[0.97, 0.02, 0.01], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.01, 0.01, 0.98]]))
    logits = logits.T.reshape(1, 3, 1, 4)  # four pixels, confidences 0.97, 0.5, 0.7, 0.98
    padding = torch.tensor([[[False, False, False, True]]])
    labels = pseudo_labels(logits, padding, quantile=None, ignore_index=255, threshold=0.6)
    assert labels.tolist() == [[[0, 255, 1, 255]]]  # 0.5 below the threshold; the last pixel is padding
    assert pseudo_labels(logits, padding, None, 255).tolist() == [[[0, 0, 1, 255]]]  # off: every pixel kept
    counts = [float(run_step(make_model(pseudo_label_threshold=t))[0].pseudo_label_counts.sum()) for t in (None, 0.9)]
    assert counts[1] < counts[0]  # in the step too


def test_channel_dropout_drops_whole_channels_reproducibly() -> None:
    from des4_hf.method.perturbation import channel_dropout

    features = torch.ones(4, 64, 5, 5)
    dropped = channel_dropout(features, 0.5, torch.Generator().manual_seed(0))
    per_channel = dropped.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1)).all()  # a channel is gone or scaled by 2
    assert 0.3 < float((per_channel == 0).all(-1).float().mean()) < 0.7
    assert torch.equal(dropped, channel_dropout(features, 0.5, torch.Generator().manual_seed(0)))
    assert channel_dropout(features, 0.0) is features


def test_feature_perturbation_acts_only_on_the_unlabeled_pass() -> None:
    plain, _, _ = run_step(make_model())
    perturbed, _, _ = run_step(make_model(feature_perturbation=0.5))
    for name in ("loss_supervised", "loss_unbiased"):  # the labeled losses do not see the perturbed pass
        torch.testing.assert_close(perturbed.terms[name], plain.terms[name])
    assert "loss_feature_perturbation" not in plain.terms
    fp = perturbed.terms["loss_feature_perturbation"]
    # L_u = ½ (strong view + perturbed features); the strong view's loss itself is unchanged
    torch.testing.assert_close(perturbed.terms["loss_unsupervised"], 0.5 * (plain.terms["loss_unsupervised"] + fp))


def test_class_weights_can_leave_the_unlabeled_loss_alone() -> None:
    weights = torch.tensor([0.2, 1.0, 5.0])  # e.g. sqrt-median-frequency: a rare class weighs 25× a common one
    plain, _, _ = run_step(make_model())
    weighted, _, _ = run_step(make_model(class_weighting="sqrt-median-frequency"), class_weights=weights)
    labeled_only, _, _ = run_step(make_model(class_weighting="sqrt-median-frequency", unlabeled_class_weights=False),
                                  class_weights=weights)
    assert not torch.allclose(weighted.terms["loss_unsupervised"], plain.terms["loss_unsupervised"])
    # off: L_u is the unweighted cross-entropy of the pseudo labels, while the labeled losses keep their weights
    torch.testing.assert_close(labeled_only.terms["loss_unsupervised"], plain.terms["loss_unsupervised"])
    for name in ("loss_supervised", "loss_unbiased"):
        torch.testing.assert_close(labeled_only.terms[name], weighted.terms[name])


def test_two_strong_views_average_their_losses() -> None:
    labeled, unlabeled = make_batches()
    second = {"pixel_values_strong_2": torch.randn(2, 3, CROP, CROP, generator=torch.Generator().manual_seed(5)),
              "cutmix_mask_2": torch.zeros(2, CROP, CROP, dtype=torch.bool)}
    swapped = {**unlabeled, "pixel_values_strong": second["pixel_values_strong_2"], "cutmix_mask": second["cutmix_mask_2"]}
    losses = []
    for batch in (unlabeled, swapped, {**unlabeled, **second}):  # view 1 alone, view 2 alone, both
        model = make_model().eval()  # BatchNorm on running statistics: each view's loss is its own
        output = model(labeled, batch, class_ratio=RATIO, generator=torch.Generator().manual_seed(0))
        losses.append(output.terms["loss_unsupervised"])
    assert not torch.allclose(losses[0], losses[1])
    torch.testing.assert_close(losses[2], 0.5 * (losses[0] + losses[1]))
