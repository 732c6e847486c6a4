"""Endless, resumable batch streams over DataLoaders prepared by Accelerate (which shards them over processes).

Each epoch is a seeded permutation, the same on every process. Items are keyed ``(epoch, index)``, so the
dataset's per-item augmentation seed follows the epoch even in persistent workers, and a resumed run continues
with exactly the next batch: its state is ``(epoch, batches_done)``, restored by ``skip_first_batches``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochIndexed(Dataset):
    """``dataset[(epoch, index)]``: sets the epoch (cheap, per item) so augmentation seeds follow it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class EpochSampler(Sampler):
    """``(epoch, index)`` keys in the order ``torch.randperm(n, generator=seed·100003 + epoch)``."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return iter([(self.epoch, index) for index in order.tolist()])


def stream_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int) -> DataLoader:
    """The DataLoader to ``accelerator.prepare`` for a :class:`BatchStream` (full batches only)."""
    # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run (which creates its
    # iterators at other steps) would see different dropout masks.
    return DataLoader(EpochIndexed(dataset), batch_size=batch_size, sampler=EpochSampler(len(dataset), seed),
                      drop_last=True, num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


class BatchStream:
    """Endless batches of a prepared :func:`stream_loader`, epoch after epoch; ``state_dict`` makes it resumable."""

    def __init__(self, loader: Any, accelerator: Any, batch_size: int, name: str) -> None:
        self.loader, self.accelerator, self.batch_size, self.name = loader, accelerator, batch_size, name
        self.epoch = 0
        self.batches_done = 0  # batches already produced in the current epoch
        self._iterator: Iterator[Any] | None = None
        if len(loader) == 0:
            raise ValueError(f"{name}: {len(loader.dataset)} images cannot fill one batch of {batch_size} on each of "
                             f"{accelerator.num_processes} process(es); lower the batch size or use fewer processes.")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.loader)

    def next(self) -> Any:
        if self._iterator is None:
            self.loader.set_epoch(self.epoch)
            skip = self.batches_done
            self._iterator = iter(self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader)
        batch = next(self._iterator, None)
        if batch is None:  # the epoch is over
            self.epoch, self.batches_done, self._iterator = self.epoch + 1, 0, None
            return self.next()
        self.batches_done += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "batch_size": self.batch_size,
                "num_processes": self.accelerator.num_processes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        launch = (state.get("num_processes"), state.get("batch_size"))
        if launch != (self.accelerator.num_processes, self.batch_size):
            raise ValueError(f"{self.name}: the checkpoint was written with {launch[0]} process(es) × batch "
                             f"{launch[1]}, this run has {self.accelerator.num_processes} × {self.batch_size}; resume "
                             "with the same launch settings for an exact continuation.")
        self.epoch, self.batches_done, self._iterator = int(state["epoch"]), int(state["batches_done"]), None

    def epoch_indices(self, epoch: int) -> list[int]:
        """The dataset indices this process reads in ``epoch`` (its shard), in order."""
        self.loader.set_epoch(epoch)
        indices = [index for batch in self.loader.batch_sampler for _, index in batch]
        self.loader.set_epoch(self.epoch)
        return indices
