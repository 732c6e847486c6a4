"""Resumable sharded batch streams: shards are disjoint, epochs advance, a restored stream continues exactly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from des4_hf.training.streams import BatchStream


class EpochEcho(Dataset):
    """Item = (epoch, index): shows which augmentation epoch each item was produced under."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([self.epoch, index])


def take(stream: BatchStream, n: int) -> list[list[list[int]]]:
    return [stream.next().tolist() for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_shards_and_exact_continuation(workers: int) -> None:
    rank0 = BatchStream(EpochEcho(11), 2, rank=0, world_size=2, seed=5, num_workers=workers)
    rank1 = BatchStream(EpochEcho(11), 2, rank=1, world_size=2, seed=5, num_workers=workers)
    assert rank0.batches_per_epoch == 2  # 5 images per shard → 2 full batches
    first0, first1 = take(rank0, 5), take(rank1, 5)
    epoch0_ids0 = {item[1] for batch in first0[:2] for item in batch}
    epoch0_ids1 = {item[1] for batch in first1[:2] for item in batch}
    assert not epoch0_ids0 & epoch0_ids1, "ranks must see disjoint images"
    assert [batch[0][0] for batch in first0] == [0, 0, 1, 1, 2], "items carry the epoch they belong to"
    assert rank0.state_dict()["epoch"] == 2 and rank0.state_dict()["batches_done"] == 1

    restored = BatchStream(EpochEcho(11), 2, rank=0, world_size=2, seed=5, num_workers=workers)
    state = BatchStream(EpochEcho(11), 2, rank=0, world_size=2, seed=5)
    take(state, 3)
    restored.load_state_dict(state.state_dict())
    assert take(restored, 2) == first0[3:5]


def test_resume_with_other_launch_settings_is_refused() -> None:
    stream = BatchStream(EpochEcho(8), 2, seed=0)
    other = BatchStream(EpochEcho(8), 2, rank=0, world_size=2, seed=0)
    with pytest.raises(ValueError, match="same launch settings"):
        other.load_state_dict(stream.state_dict())


def test_too_small_dataset_is_reported() -> None:
    with pytest.raises(ValueError, match="cannot fill one batch"):
        BatchStream(EpochEcho(3), 4, name="labeled")
