"""The background writer: chunks go through a bounded queue to a thread that writes, checksums,
folds statistics and commits, so the forward pass does not wait for the disk."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from safetensors.torch import save as save_tensors

import zarr

from actlab.store.chunks import ChunkData, write_chunk
from actlab.store.manifest import Manifest, Progress, save_manifest, write_atomic
from actlab.store.stats import SiteStats


def commit(root: Path, m: Manifest, stats: dict[str, SiteStats], windows_done: int, complete: bool) -> None:
    """Persist statistics for `windows_done`, then point the manifest at them (atomically)."""
    name = f"stats-{windows_done:08d}.safetensors"
    tensors = {k: v for site, s in stats.items() for k, v in s.tensors(site).items()}
    write_atomic(root / name, save_tensors(tensors))
    m.progress = Progress(windows_done=windows_done, complete=complete, stats_file=name)
    save_manifest(root, m)
    for old in root.glob("stats-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def fold(m: Manifest, stats: dict[str, SiteStats], index: int, sums: dict[str, str],
         chunk_stats: dict[str, SiteStats]) -> None:
    """Add one written chunk's checksums and statistics to the running totals."""
    for name, digest in sums.items():
        m.checksums.setdefault(name, {})[str(index)] = digest
    for site, s in chunk_stats.items():
        stats[site].merge(s)


class BackgroundWriter:
    """Writes `ChunkData` in order on a thread; `put` blocks when `queue_size` chunks wait."""

    def __init__(self, root: Path, m: Manifest, stats: dict[str, SiteStats], queue_size: int = 2):
        self.root, self.manifest, self.stats = root, m, stats
        self.group = zarr.open_group(str(root), mode="r+", zarr_format=3)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="actlab-store-writer", daemon=True)
        self.thread.start()

    def put(self, chunk: ChunkData) -> None:
        self._raise()
        self.queue.put(chunk)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError("the store writer failed") from self.error

    def _run(self) -> None:
        try:  # a lower priority for this thread: on few cores the forward pass comes first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        m = self.manifest
        while (chunk := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that put() never blocks forever
            try:
                sums, chunk_stats = write_chunk(self.group, m, chunk)
                fold(m, self.stats, chunk.index, sums, chunk_stats)
                done = min((chunk.index + 1) * m.chunk_windows, m.n_windows)
                commit(self.root, m, self.stats, done, complete=done == m.n_windows)
            except BaseException as exc:  # reported to the harvesting thread
                self.error = exc
