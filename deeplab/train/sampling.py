"""Training data in order: shuffled, sharded over processes, resumable mid-epoch.

Data augmentation is drawn from (seed, epoch, index) by the dataset, so it does not depend
on the RNG state, the number of workers or where a run was resumed; the batch order is a
permutation drawn from (seed + epoch). Together they make ``--resume`` exact.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from deeplab.config import ConfigError


class ShardedBatchSampler:
    """Shuffled batches of this process's shard of each epoch, resumable mid-epoch.

    Yields lists of ``batch_size`` indices. Epoch ``e`` is a permutation drawn from
    ``seed + e``; it is padded to a multiple of the process count (like
    ``DistributedSampler``) and process ``r`` takes every ``world_size``-th index from ``r``,
    so the processes' batches at one step together hold the same images as one process
    with the global batch. ``set_position(epoch, batch)`` skips the batches already used.
    """

    def __init__(
        self,
        num_items: int,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_items, self.batch_size, self.seed, self.shuffle = (
            num_items,
            batch_size,
            seed,
            shuffle,
        )
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start = epoch, batch

    def shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        padded = -(-self.num_items // self.world_size) * self.world_size
        order += order[: padded - len(order)]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return (-(-self.num_items // self.world_size)) // self.batch_size  # drops the last partial

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.shard()
        for b in range(self.start, len(self)):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]


class BatchStream:
    """An endless stream of training batches over epochs that remembers its position.

    ``state()`` is (epoch, batches consumed in it); ``load_state`` continues from there.
    Before each epoch the sampler and the dataset (``set_epoch``) learn the epoch number.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: ShardedBatchSampler,
        *,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
    ) -> None:
        if len(sampler) == 0:
            raise ConfigError(
                f"the training set has {len(dataset)} images, fewer than one batch per process "
                f"({sampler.batch_size}); lower train.batch_size or add images"
            )
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.collate_fn = num_workers, collate_fn
        self.epoch, self.batch = 0, 0
        self._it: Iterator | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        if self._it is None:
            self.sampler.set_position(self.epoch, self.batch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            # A new loader per epoch: workers start with the dataset's new epoch. Its own
            # generator keeps worker seeding away from the global torch RNG (exact resume).
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                generator=torch.Generator().manual_seed(self.sampler.seed + self.epoch),
                worker_init_fn=_ignore_sigint if self.num_workers else None,
            )
            self._it = iter(loader)
        try:
            item = next(self._it)
        except StopIteration:
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
            return next(self)
        self.batch += 1
        return item


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process saves and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
