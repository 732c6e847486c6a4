"""Resumable batch streams over Accelerate-sharded loaders: disjoint shards, epochs, exact continuation."""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import Dataset

from des4_hf.training.streams import BatchStream, stream_loader


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


class Ranks:
    """What a stream needs of an Accelerator, for one of ``num_processes`` simulated processes."""

    skip_first_batches = staticmethod(skip_first_batches)

    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes


def make_stream(size: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 5,
                workers: int = 0) -> BatchStream:
    loader = prepare_data_loader(stream_loader(EpochEcho(size), batch_size, seed, workers), num_processes=world_size,
                                 process_index=rank, put_on_device=False)
    return BatchStream(loader, Ranks(world_size), batch_size, "labeled")


def take(stream: BatchStream, n: int) -> list[list[list[int]]]:
    return [stream.next().tolist() for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_shards_and_exact_continuation(workers: int) -> None:
    rank0, rank1 = make_stream(11, 2, 0, 2, workers=workers), make_stream(11, 2, 1, 2, workers=workers)
    assert rank0.batches_per_epoch == 2  # 5 full batches of 2 in 11 images, shared out → 2 per process
    first0, first1 = take(rank0, 5), take(rank1, 5)
    epoch0_ids0 = {item[1] for batch in first0[:2] for item in batch}
    epoch0_ids1 = {item[1] for batch in first1[:2] for item in batch}
    assert not epoch0_ids0 & epoch0_ids1, "processes must see disjoint images"
    assert epoch0_ids0 == set(rank0.epoch_indices(0)) and epoch0_ids1 == set(rank1.epoch_indices(0))
    assert [batch[0][0] for batch in first0] == [0, 0, 1, 1, 2], "items carry the epoch they belong to"
    assert {item[1] for batch in first0[2:4] for item in batch} != epoch0_ids0, "each epoch is a new permutation"

    state = make_stream(11, 2, 0, 2)
    take(state, 3)
    restored = make_stream(11, 2, 0, 2, workers=workers)
    restored.load_state_dict(state.state_dict())
    assert take(restored, 2) == first0[3:5]


def test_one_process_reads_the_seeded_permutation_in_batches() -> None:
    stream = make_stream(8, 3, seed=2)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(2 * 100_003)).tolist()
    assert [item[1] for batch in take(stream, 2) for item in batch] == order[:6]  # the tail of 2 is dropped
    assert stream.next()[0][0] == 1  # then epoch 1


def test_resume_with_other_launch_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="same launch settings"):
        make_stream(8, 2, 0, 2).load_state_dict(make_stream(8, 2).state_dict())


def test_too_small_dataset_is_reported() -> None:
    with pytest.raises(ValueError, match="cannot fill one batch"):
        make_stream(3, 4)
