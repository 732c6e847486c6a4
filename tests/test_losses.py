"""Eq. 6–9 on hand-built tensors whose values are worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from des4_hf.method.losses import (
    class_balancing_weights,
    cross_entropy_loss,
    entropy,
    pixel_weights,
    unbiased_supervised_loss,
)
from des4_hf.modeling_des4 import prototype_logits

LN2, LN3 = math.log(2.0), math.log(3.0)


def toy_batch():
    """2 classes, d = 2, one 2×2 image, one ignored pixel.

    Prototypes p0 = (1, 0), p1 = (0, 2) (normalised → (0, 1)); scale s = ln 3.
    Pixel embeddings (row-major):  a = (2, 0)   b = (0, 5)   c = (1, 1)   d = (3, −4)
    cosines to (p0, p1):           (1, 0)       (0, 1)       (1/√2, 1/√2)  (0.6, −0.8)
    logits = ln3 · cos:            (ln3, 0)     (0, ln3)     equal         ignored
    softmax:                       (3/4, 1/4)   (1/4, 3/4)   (1/2, 1/2)
    labels:                        0            0            1             255
    """
    # channel 0 holds the pixels' first components, channel 1 their second ones
    embeddings = torch.stack(
        [torch.tensor([[2.0, 0.0], [1.0, 3.0]]), torch.tensor([[0.0, 5.0], [1.0, -4.0]])]
    )
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([[[0, 0], [1, 255]]])
    return embeddings[None], prototypes, labels, LN3


def test_prototype_logits_hand_computed():
    embeddings, prototypes, _, scale = toy_batch()
    logits = prototype_logits(embeddings, prototypes, scale)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[[LN3, 0.0], [r * LN3, 0.6 * LN3]], [[0.0, LN3], [r * LN3, -0.8 * LN3]]])[None]
    assert logits.shape == (1, 2, 2, 2)
    assert torch.allclose(logits, expected, atol=1e-6)
    # (N, d) form gives the same numbers.
    flat = prototype_logits(embeddings.permute(0, 2, 3, 1).reshape(-1, 2), prototypes, scale)
    assert torch.allclose(flat, expected.permute(0, 2, 3, 1).reshape(-1, 2), atol=1e-6)


def test_entropy_uniform_one_hot_and_two_class():
    assert torch.allclose(entropy(torch.full((1, 4), 0.25)), torch.tensor([math.log(4)]))
    assert entropy(torch.tensor([[0.0, 1.0, 0.0]])).abs().item() < 1e-9
    # (3/4, 1/4): −(3/4 ln 3/4 + 1/4 ln 1/4) = ln 4 − (3/4) ln 3 = 0.5623351
    h = entropy(torch.tensor([0.75, 0.25]), dim=0)
    assert h.item() == pytest.approx(2 * LN2 - 0.75 * LN3, abs=1e-6)
    # dim=1 on a (B, C, H, W) map drops the class axis.
    assert entropy(torch.full((2, 5, 3, 3), 0.2)).shape == (2, 3, 3)


def test_pixel_weights_eq7_hand_computed():
    embeddings, prototypes, labels, scale = toy_batch()
    logits = prototype_logits(embeddings, prototypes, scale)
    # (1 − p_max)²: a, b → (1/4)² = 1/16; c → (1/2)² = 1/4; Σ = 3/8 → 1/6, 1/6, 2/3; ignored → 0.
    w = pixel_weights(logits, labels)
    assert torch.allclose(w, torch.tensor([[[1 / 6, 1 / 6], [2 / 3, 0.0]]]), atol=1e-6)
    assert not w.requires_grad


def test_unbiased_loss_eq8_hand_computed():
    embeddings, prototypes, labels, scale = toy_batch()
    logits = prototype_logits(embeddings, prototypes, scale)
    # CE: a → −ln 3/4 = ln4 − ln3; b → −ln 1/4 = ln 4; c → −ln 1/2 = ln 2.
    # Eq. 8: 1/6 (ln4 − ln3) + 1/6 ln4 + 2/3 ln2 = (8 ln2 − ln3) / 6 = 0.7410941
    expected = (8 * LN2 - LN3) / 6
    assert unbiased_supervised_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    # reweight=False: plain mean over the 3 valid pixels = (5 ln2 − ln3) / 3 = 0.7890414
    plain = (5 * LN2 - LN3) / 3
    assert unbiased_supervised_loss(logits, labels, reweight=False).item() == pytest.approx(plain, abs=1e-6)
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(plain, abs=1e-6)
    assert F.cross_entropy(logits, labels, ignore_index=255).item() == pytest.approx(plain, abs=1e-6)


def test_images_are_averaged_and_all_ignored_image_adds_nothing():
    embeddings, prototypes, labels, scale = toy_batch()
    logits = prototype_logits(embeddings.repeat(3, 1, 1, 1), prototypes, scale)
    labels2 = labels.repeat(3, 1, 1)
    labels2[1] = 255  # image 1: nothing valid → not in the denominator
    labels2[2] = torch.tensor([[1, 255], [255, 255]])  # image 2: only pixel a, labelled 1: CE ln 4, W = 1
    expected = ((8 * LN2 - LN3) / 6 + 2 * LN2) / 2  # mean over images 0 and 2 = 1.0636941
    loss = unbiased_supervised_loss(logits, labels2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert torch.isfinite(loss)


def test_weights_are_detached():
    embeddings, prototypes, labels, scale = toy_batch()
    logits = prototype_logits(embeddings, prototypes, scale).detach().requires_grad_(True)
    unbiased_supervised_loss(logits, labels).backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(ref_logits, labels, ignore_index=255, reduction="none")
    (ce * torch.tensor([[[1 / 6, 1 / 6], [2 / 3, 0.0]]])).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)


@pytest.mark.parametrize("reweight", [True, False])
def test_all_ignored_batch_is_zero_with_grad(reweight):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), 255)
    loss = unbiased_supervised_loss(logits, labels, reweight=reweight)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_fully_confident_image_has_no_nan():
    # max softmax rounds to 1 in float32 → every (1 − p)² underflows; weights fall back to uniform.
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 200.0
    labels = torch.tensor([[[0, 0], [1, 255]]])
    w = pixel_weights(logits, labels)
    assert torch.allclose(w, torch.tensor([[[1 / 3, 1 / 3], [1 / 3, 0.0]]]))
    loss = unbiased_supervised_loss(logits, labels)
    assert loss.item() == pytest.approx(200.0 / 3, rel=1e-5)  # only pixel c has loss (200)


def test_shape_mismatch_says_how_to_fix():
    with pytest.raises(ValueError, match="interpolate"):
        unbiased_supervised_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


def test_median_frequency_weights_hand_computed():
    # shares 0.5, 0.3, 0.15, 0.05 and one absent class: median of the present shares = (0.3 + 0.15) / 2
    counts = torch.tensor([500, 300, 150, 50, 0])
    weights = class_balancing_weights(counts, "median-frequency")
    torch.testing.assert_close(weights, torch.tensor([0.45, 0.75, 1.5, 4.5, 1.0]))
    torch.testing.assert_close(class_balancing_weights(counts, "sqrt-median-frequency"), weights.sqrt())
    assert class_balancing_weights(counts, "none") is None
    with pytest.raises(ValueError, match="median-frequency"):
        class_balancing_weights(counts, "inverse")
    with pytest.raises(ValueError, match="at least one labeled pixel"):
        class_balancing_weights(torch.zeros(3), "median-frequency")


def test_class_weighted_cross_entropy_is_pytorchs_weighted_mean():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5, 6), generator=generator)
    labels[0, 0] = 255
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0])
    loss = cross_entropy_loss(logits, labels, class_weights=weights)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, weight=weights, ignore_index=255))
    # equal weights give the plain mean, and an all-ignored batch a connected 0
    torch.testing.assert_close(cross_entropy_loss(logits, labels, class_weights=torch.full((4,), 3.0)),
                               cross_entropy_loss(logits, labels))
    empty = cross_entropy_loss(logits, torch.full_like(labels, 255), class_weights=weights)
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="one weight per class"):
        cross_entropy_loss(logits, labels, class_weights=torch.ones(3))


def test_class_weights_multiply_the_eq7_pixel_weights():
    # One image, 2 classes, 3 valid pixels (the 4th ignored). Eq. 7 weights W, times class weights (1, 3)
    # of the pixels' labels, renormalised: the loss is Σ W·w·CE / Σ W·w.
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 2, 2, generator=generator)
    labels = torch.tensor([[[0, 1], [1, 255]]])
    class_weights = torch.tensor([1.0, 3.0])
    eq7 = pixel_weights(logits, labels)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    pixel_class_weight = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    expected = (eq7 * pixel_class_weight * per_pixel).sum() / (eq7 * pixel_class_weight).sum()
    torch.testing.assert_close(unbiased_supervised_loss(logits, labels, class_weights=class_weights), expected)
    # equal class weights leave Eq. 8 unchanged; without re-weighting it is the class-weighted mean CE
    torch.testing.assert_close(unbiased_supervised_loss(logits, labels, class_weights=torch.full((2,), 7.0)),
                               unbiased_supervised_loss(logits, labels))
    torch.testing.assert_close(unbiased_supervised_loss(logits, labels, reweight=False, class_weights=class_weights),
                               F.cross_entropy(logits, labels, weight=class_weights, ignore_index=255))
