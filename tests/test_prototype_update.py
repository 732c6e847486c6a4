"""Prototype EMA (Eq. 12, SPEC §3.7–3.8) through ``PrototypeHead.update``, alone and over 2 gloo ranks."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from des4_hf.modeling_des4 import PrototypeHead
from des4_hf.sampling import sample_class_features


def make_head(num_classes: int = 4, dim: int = 2, seed: int = 0) -> PrototypeHead:
    torch.manual_seed(seed)
    return PrototypeHead(num_classes, dim, scale=10.0)


def test_first_time_init_then_ema_hand_computed():
    head = make_head()
    before = head.prototypes.clone()
    assert not head.initialized.any()
    sums = torch.zeros(4, 2)
    sums[0] = torch.tensor([6.0, 8.0])  # two samples, mean (3, 4)
    head.update(sums, torch.tensor([2, 0, 0, 0]), momentum=0.99)
    # First time: the prototype is the normalised mean (3, 4)/5, not a blend with the random start.
    assert torch.allclose(head.prototypes[0], torch.tensor([0.6, 0.8]))
    assert head.initialized.tolist() == [True, False, False, False]
    # Absent classes (count 0): prototype bit-identical, flag unchanged.
    assert torch.equal(head.prototypes[1:], before[1:])

    # EMA, τ2 = 0.5, mean (0, 1): 0.5·(0.6, 0.8) + 0.5·(0, 1) = (0.3, 0.9) → /√0.9 = (0.3162278, 0.9486833)
    sums = torch.zeros(4, 2)
    sums[0] = torch.tensor([0.0, 3.0])
    head.update(sums, torch.tensor([3, 0, 0, 0]), momentum=0.5)
    assert torch.allclose(head.prototypes[0], torch.tensor([0.3, 0.9]) / math.sqrt(0.9), atol=1e-6)
    # τ2 = 0.99, mean (1, 0): 0.99·p + 0.01·(1, 0) = (0.3230655, 0.9391965) → normalised.
    sums[0] = torch.tensor([1.0, 0.0])
    head.update(sums, torch.tensor([1, 0, 0, 0]), momentum=0.99)
    blend = 0.99 * torch.tensor([0.3, 0.9]) / math.sqrt(0.9) + torch.tensor([0.01, 0.0])
    assert torch.allclose(head.prototypes[0], blend / blend.norm(), atol=1e-6)
    assert torch.equal(head.prototypes[1:], before[1:])
    assert torch.allclose(head.prototypes.norm(dim=1), torch.ones(4), atol=1e-6)


def test_orthonormal_init_is_separated_and_blended_by_the_ema_from_the_first_sample():
    head = PrototypeHead(11, 16, scale=10.0).reset_orthonormal_(torch.Generator().manual_seed(0))
    # Separation: unit rows, cosine 0 between every two classes (first means measured 0.84–0.88).
    torch.testing.assert_close(head.prototypes @ head.prototypes.T, torch.eye(11), atol=1e-6, rtol=0)
    assert head.initialized.all()
    again = PrototypeHead(11, 16, scale=10.0).reset_orthonormal_(torch.Generator().manual_seed(0))
    assert torch.equal(head.prototypes, again.prototypes)  # the same start on every rank (seeded)
    # The first sample is blended, not copied: p0 ← normalise(0.9·p0 + 0.1·mean).
    start = head.prototypes[0].clone()
    sums = torch.zeros(11, 16)
    sums[0, 0] = 2.0  # one sample, mean e_0
    head.update(sums, torch.tensor([1] + [0] * 10), momentum=0.9)
    blend = 0.9 * start + 0.1 * torch.nn.functional.one_hot(torch.tensor(0), 16).float() * 2.0
    torch.testing.assert_close(head.prototypes[0], blend / blend.norm(), atol=1e-6, rtol=0)


def test_orthonormal_init_needs_as_many_dimensions_as_classes():
    with pytest.raises(ValueError, match="raise decoder_channels .* or use prototype_init='first-mean'"):
        PrototypeHead(21, 16, scale=10.0).reset_orthonormal_()


def test_a_mean_teacher_bank_follows_the_students_by_ema_hand_computed():
    teacher, student = make_head(num_classes=3), make_head(num_classes=3, seed=1)
    teacher.prototypes.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]))
    teacher.initialized.copy_(torch.tensor([True, False, False]))
    student.prototypes.copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    student.initialized.copy_(torch.tensor([True, True, False]))
    teacher.follow_(student, momentum=0.5)
    # Class 0, both seen: normalise(0.5·(1, 0) + 0.5·(0, 1)) = (1, 1)/√2.
    torch.testing.assert_close(teacher.prototypes[0], torch.tensor([1.0, 1.0]) / math.sqrt(2.0))
    # Class 1, first seen by the student: copied. Class 2, seen by neither: unchanged.
    torch.testing.assert_close(teacher.prototypes[1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(teacher.prototypes[2], torch.tensor([0.6, 0.8]))
    assert teacher.initialized.tolist() == [True, True, False]
    teacher.follow_(student, momentum=0.0)  # τ = 0 (the first EMA step): a copy of every seen class
    torch.testing.assert_close(teacher.prototypes[:2], student.prototypes[:2])


def test_no_gradient_flows():
    head = make_head()
    sums = torch.randn(4, 2, requires_grad=True)
    head.update(sums * 2, torch.tensor([1, 1, 0, 0]), momentum=0.99)
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
    head.update(sums, counts, momentum=0.99)
    assert torch.allclose(head.prototypes[0], torch.tensor([1.0, 2.0]) / math.sqrt(5.0))
    assert torch.allclose(head.prototypes[1], torch.tensor([0.6, 0.8]))  # the single pixel, normalised
    assert torch.equal(head.prototypes[2], before[2]) and not head.initialized[2]


# ------------------------------------------------------------------------ 2-process gloo run ---

NUM_CLASSES, DIM = 5, 8


def rank_inputs(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different sums/counts per rank; class 4 is never sampled anywhere."""
    g = torch.Generator().manual_seed(100 * step + rank)
    counts = torch.randint(1, 20, (NUM_CLASSES,), generator=g)
    counts[4] = 0
    if step == 0:
        counts[3 - rank] = 0  # class 3 first seen on rank 1 only, class 2 on rank 0 only
    sums = torch.randn(NUM_CLASSES, DIM, generator=g) * counts[:, None]
    return sums, counts


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        head = make_head(NUM_CLASSES, DIM, seed=0)  # same start everywhere, as DDP would broadcast
        for step in range(3):
            sums, counts = rank_inputs(rank, step)
            head.update(sums, counts, momentum=0.9)
        torch.save(head.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_hold_identical_prototypes(tmp_path):
    # fork: the children inherit the imported packages instead of re-importing transformers
    # (~20 s per process on a busy 2-core box); spawn where fork does not exist.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method=method
    )
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(states[0]["prototypes"], states[1]["prototypes"])  # bit-identical
    assert torch.equal(states[0]["initialized"], states[1]["initialized"])

    # One process fed the two ranks' sums and counts added gives the same prototypes.
    single = make_head(NUM_CLASSES, DIM, seed=0)
    for step in range(3):
        (s0, c0), (s1, c1) = rank_inputs(0, step), rank_inputs(1, step)
        single.update(s0.double() + s1.double(), c0 + c1, momentum=0.9)
    assert torch.equal(states[0]["prototypes"], single.prototypes)
    assert states[0]["initialized"].tolist() == [True, True, True, True, False]
    untouched = make_head(NUM_CLASSES, DIM, seed=0).prototypes[4]
    assert torch.equal(states[0]["prototypes"][4], untouched)
