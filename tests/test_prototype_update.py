"""Prototype EMA (Eq. 12, SPEC §3.7–3.8) through ``PrototypeHead.update``, alone and over 2 gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch

from des4_hf.method.prototypes import follow_prototypes_, orthonormal_prototypes_, update_prototypes_
from des4_hf.method.sampling import sample_class_features
from des4_hf.modeling_des4 import PrototypeHead


def make_head(num_classes: int = 4, dim: int = 2, seed: int = 0) -> PrototypeHead:
    torch.manual_seed(seed)
    return PrototypeHead(num_classes, dim, scale=10.0)


def test_first_time_init_then_ema_hand_computed():
    head = make_head()
    before = head.prototypes.clone()
    assert not head.initialized.any()
    sums = torch.zeros(4, 2)
    sums[0] = torch.tensor([6.0, 8.0])  # two samples, mean (3, 4)
    update_prototypes_(head, sums, torch.tensor([2, 0, 0, 0]), momentum=0.99)
    # First time: the prototype is the normalised mean (3, 4)/5, not a blend with the random start.
    assert torch.allclose(head.prototypes[0], torch.tensor([0.6, 0.8]))
    assert head.initialized.tolist() == [True, False, False, False]
    # Absent classes (count 0): prototype bit-identical, flag unchanged.
    assert torch.equal(head.prototypes[1:], before[1:])

    # EMA, τ2 = 0.5, mean (0, 1): 0.5·(0.6, 0.8) + 0.5·(0, 1) = (0.3, 0.9) → /√0.9 = (0.3162278, 0.9486833)
    sums = torch.zeros(4, 2)
    sums[0] = torch.tensor([0.0, 3.0])
    update_prototypes_(head, sums, torch.tensor([3, 0, 0, 0]), momentum=0.5)
    assert torch.allclose(head.prototypes[0], torch.tensor([0.3, 0.9]) / math.sqrt(0.9), atol=1e-6)
    # τ2 = 0.99, mean (1, 0): 0.99·p + 0.01·(1, 0) = (0.3230655, 0.9391965) → normalised.
    sums[0] = torch.tensor([1.0, 0.0])
    update_prototypes_(head, sums, torch.tensor([1, 0, 0, 0]), momentum=0.99)
    blend = 0.99 * torch.tensor([0.3, 0.9]) / math.sqrt(0.9) + torch.tensor([0.01, 0.0])
    assert torch.allclose(head.prototypes[0], blend / blend.norm(), atol=1e-6)
    assert torch.equal(head.prototypes[1:], before[1:])
    assert torch.allclose(head.prototypes.norm(dim=1), torch.ones(4), atol=1e-6)


def test_orthonormal_init_is_separated_and_blended_by_the_ema_from_the_first_sample():
    head = orthonormal_prototypes_(PrototypeHead(11, 16, scale=10.0), torch.Generator().manual_seed(0))
    # Separation: unit rows, cosine 0 between every two classes (first means measured 0.84–0.88).
    torch.testing.assert_close(head.prototypes @ head.prototypes.T, torch.eye(11), atol=1e-6, rtol=0)
    assert head.initialized.all()
    again = orthonormal_prototypes_(PrototypeHead(11, 16, scale=10.0), torch.Generator().manual_seed(0))
    assert torch.equal(head.prototypes, again.prototypes)  # the same start on every rank (seeded)
    # The first sample is blended, not copied: p0 ← normalise(0.9·p0 + 0.1·mean).
    start = head.prototypes[0].clone()
    sums = torch.zeros(11, 16)
    sums[0, 0] = 2.0  # one sample, mean e_0
    update_prototypes_(head, sums, torch.tensor([1] + [0] * 10), momentum=0.9)
    blend = 0.9 * start + 0.1 * torch.nn.functional.one_hot(torch.tensor(0), 16).float() * 2.0
    torch.testing.assert_close(head.prototypes[0], blend / blend.norm(), atol=1e-6, rtol=0)


def test_orthonormal_init_needs_as_many_dimensions_as_classes():
    with pytest.raises(ValueError, match="raise decoder_channels .* or use prototype_init='first-mean'"):
        orthonormal_prototypes_(PrototypeHead(21, 16, scale=10.0))


def test_a_mean_teacher_bank_follows_the_students_by_ema_hand_computed():
    teacher, student = make_head(num_classes=3), make_head(num_classes=3, seed=1)
    teacher.prototypes.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]))
    teacher.initialized.copy_(torch.tensor([True, False, False]))
    student.prototypes.copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    student.initialized.copy_(torch.tensor([True, True, False]))
    follow_prototypes_(teacher, student, momentum=0.5)
    # Class 0, both seen: normalise(0.5·(1, 0) + 0.5·(0, 1)) = (1, 1)/√2.
    torch.testing.assert_close(teacher.prototypes[0], torch.tensor([1.0, 1.0]) / math.sqrt(2.0))
    # Class 1, first seen by the student: copied. Class 2, seen by neither: unchanged.
    torch.testing.assert_close(teacher.prototypes[1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(teacher.prototypes[2], torch.tensor([0.6, 0.8]))
    assert teacher.initialized.tolist() == [True, True, False]
    follow_prototypes_(teacher, student, momentum=0.0)  # τ = 0 (the first EMA step): a copy of every seen class
    torch.testing.assert_close(teacher.prototypes[:2], student.prototypes[:2])


def test_no_gradient_flows():
    head = make_head()
    sums = torch.randn(4, 2, requires_grad=True)
    update_prototypes_(head, sums * 2, torch.tensor([1, 1, 0, 0]), momentum=0.99)
    assert head.prototypes.grad_fn is None and not head.prototypes.requires_grad


def test_sampled_class_with_one_pixel_initialises_to_that_pixel():
    head = make_head(num_classes=3, dim=2)
    before = head.prototypes.clone()
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [3.0, 4.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 0, 1, 255])
    entropy = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.3])
    ratio = torch.tensor([1.0, 0.01, 1.0])  # class 2 absent from the batch
    sums, counts = sample_class_features(
        emb, labels, entropy, ratio, generator=torch.Generator().manual_seed(0)
    )
    assert counts.tolist() == [3, 1, 0]
    update_prototypes_(head, sums, counts, momentum=0.99)
    assert torch.allclose(head.prototypes[0], torch.tensor([1.0, 2.0]) / math.sqrt(5.0))
    assert torch.allclose(head.prototypes[1], torch.tensor([0.6, 0.8]))  # the single pixel, normalised
    assert torch.equal(head.prototypes[2], before[2]) and not head.initialized[2]
