"""Resumable, sharded, endless batch streams for the labeled and unlabeled sides.

Each stream walks seeded per-epoch permutations of its dataset, takes this process's shard
(``rank::world_size``) and remembers how many batches of the epoch it has produced, so a resumed run
continues with exactly the next batch (and, through ``dataset.set_epoch``, the same augmentations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class _EpochIndexed(Dataset):
    """``dataset[(epoch, index)]``: sets the epoch (cheap, per item) so augmentation seeds follow it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _Endless:
    """A batch sampler made from a generator factory (DataLoader needs an iterable it can iterate once)."""

    def __init__(self, factory: Callable[[], Iterator[list[tuple[int, int]]]]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.factory()


class BatchStream:
    """Endless batches from ``dataset``; ``state_dict``/``load_state_dict`` make it resumable.

    Args:
        dataset: a map-style dataset; if it has ``set_epoch(epoch)`` it is called at each epoch start.
        batch_size: per process. Batches are always full (the tail of an epoch's shard is dropped).
        rank, world_size: this process's shard of each permutation.
        seed: permutations are ``torch.randperm(len, generator=seed + epoch)``: identical on all ranks.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None,
                 name: str = "stream") -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.name = name
        self.epoch = 0
        self.batches_done = 0  # batches already produced in the current epoch
        self._iterator: Iterator[Any] | None = None
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{name}: {len(dataset)} images cannot fill one batch of {batch_size} on each of {world_size} "
                "process(es); lower batch_size or use fewer processes."
            )

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.dataset) // self.world_size) // self.batch_size  # type: ignore[arg-type]

    def _epoch_indices(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        shard = order[self.rank :: self.world_size]
        return shard[: self.batches_per_epoch * self.batch_size]

    def _batches(self, epoch: int, skip: int) -> Iterator[list[tuple[int, int]]]:
        """Endless (epoch, index) batches from ``epoch``, skipping its first ``skip`` batches."""
        while True:
            indices = self._epoch_indices(epoch)
            for start in range(skip * self.batch_size, len(indices), self.batch_size):
                yield [(epoch, index) for index in indices[start : start + self.batch_size]]
            epoch, skip = epoch + 1, 0

    def _start(self) -> None:
        # One loader for the whole run: workers start once, and each item carries its epoch so the
        # dataset's per-(epoch, index) augmentation seed is right whatever worker decodes it.
        loader = DataLoader(
            _EpochIndexed(self.dataset), batch_sampler=_Endless(lambda: self._batches(self.epoch, self.batches_done)),
            num_workers=self.num_workers, collate_fn=self.collate_fn, persistent_workers=False,
            # Its own generator: creating an iterator must not draw from the global RNG, or a resumed run
            # (which creates its iterator at a different step) would see different dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
        )
        self._iterator = iter(loader)

    def next(self) -> Any:
        if self._iterator is None:
            self._start()
        assert self._iterator is not None
        batch = next(self._iterator)
        self.batches_done += 1
        if self.batches_done == self.batches_per_epoch:
            self.epoch, self.batches_done = self.epoch + 1, 0
        return batch

    # Accelerate's `register_for_checkpointing` saves and restores these with the run.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("world_size", self.world_size) != self.world_size or state.get("batch_size") != self.batch_size:
            raise ValueError(
                f"{self.name}: the checkpoint was written with {state.get('world_size')} process(es) × batch "
                f"{state.get('batch_size')}, this run has {self.world_size} × {self.batch_size}; resume with the "
                "same launch settings for an exact continuation."
            )
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.seed = int(state["seed"])
        self._iterator = None
