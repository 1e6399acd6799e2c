"""Readers for training loops: a torch `IterableDataset` over a store, and a mixing buffer that
shuffles any stream of batches (for activations produced on the fly)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info


class StoreDataset(IterableDataset):
    """Batches of one site of a store; each epoch reshuffles with `seed + epoch` (`set_epoch`).

    With several DataLoader workers, each takes every n-th batch, so no batch is read twice.
    """

    def __init__(self, root: str | Path, site: str, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.root, self.site, self.batch_size, self.shuffle, self.seed = Path(root), site, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        from actlab.store.store import Store

        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        batches = Store(self.root).batches(self.site, self.batch_size, self.shuffle, self.seed + self.epoch)
        for i, batch in enumerate(batches):
            if i % n_workers == worker:
                yield batch


class MixingBuffer:
    """Shuffles a stream of row batches through a buffer of `capacity` rows (seeded).

    Rows leave in random order once the buffer is full, so consecutive outputs mix rows from
    many input batches; memory stays at `capacity` rows whatever the stream's length.
    """

    def __init__(self, stream: Iterable[torch.Tensor], capacity: int, batch_size: int, seed: int = 0):
        if capacity < batch_size:
            raise ValueError(f"capacity ({capacity}) must hold at least one batch ({batch_size})")
        self.stream, self.capacity, self.batch_size = stream, capacity, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        buffer: torch.Tensor | None = None
        for rows in self.stream:
            buffer = rows if buffer is None else torch.cat([buffer, rows])
            while buffer.shape[0] >= self.capacity:
                buffer = buffer[torch.randperm(buffer.shape[0], generator=self.generator)]
                out, buffer = buffer[: self.batch_size], buffer[self.batch_size:]
                yield out
        if buffer is not None and buffer.shape[0]:
            buffer = buffer[torch.randperm(buffer.shape[0], generator=self.generator)]
            yield from buffer.split(self.batch_size)
