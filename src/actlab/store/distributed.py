"""The Ray engine of `harvest`: model actors record disjoint chunks and write them to the same store.

Ray Data maps chunk indices over a pool of actors (one model each, fractional CPUs so that a
2-core machine does not deadlock); each actor writes its chunks directly into the Zarr store and
returns their checksums and statistics; the driver folds them in chunk order and commits, so
statistics, progress and resume behave exactly as in a single process.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from safetensors.torch import load as load_tensors, save as save_tensors

from actlab.errors import ActlabError
from actlab.store.manifest import Manifest
from actlab.store.stats import SiteStats
from actlab.store.writer import commit, fold


class ChunkRecorder:
    """A Ray actor: loads the model once, then records and writes the chunks it is given."""

    def __init__(self, reference: dict, root: str, manifest_json: str, arrays: tuple):
        import zarr

        import actlab as al

        torch.set_num_threads(1)
        self.lab = al.load(reference["model"], dtype=reference["dtype"])
        self.manifest = Manifest.model_validate_json(manifest_json)
        self.input_ids, self.documents, self.positions = arrays
        self.group = zarr.open_group(root, mode="r+", zarr_format=3)

    def __call__(self, batch: dict) -> dict:
        from actlab.store.chunks import write_chunk
        from actlab.store.harvest import record_chunk

        out = {"index": [], "sums": [], "stats": []}
        for index in batch["id"]:
            chunk = record_chunk(self.lab, self.manifest, int(index), self.input_ids, self.documents,
                                 self.positions)
            sums, stats = write_chunk(self.group, self.manifest, chunk)
            tensors = {k: v for site, s in stats.items() for k, v in s.tensors(site).items()}
            out["index"].append(int(index))
            out["sums"].append(json.dumps(sums))
            out["stats"].append(save_tensors(tensors))
        return {"index": np.array(out["index"]), "sums": np.array(out["sums"], dtype=object),
                "stats": np.array(out["stats"], dtype=object)}


def harvest_ray(lab, root, m: Manifest, stats: dict[str, SiteStats], windows, documents, positions,
                workers: int = 2, progress: bool = True, address: str | None = None) -> None:
    """Record the chunks not yet committed on `workers` Ray actors; fold and commit in order."""
    try:
        import ray
    except ImportError as exc:
        raise ActlabError("engine='ray' needs Ray: pip install 'ray[data]'") from exc
    if lab.reference is None:
        raise ActlabError("engine='ray' needs a model loaded with al.load(...) so that actors can load it too")
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else max(2, workers), include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    first = m.progress.windows_done // m.chunk_windows
    remaining = list(range(first, m.n_chunks))
    if not remaining:
        return
    shipped = (windows.input_ids, documents, positions)
    dataset = ray.data.from_items([{"id": i} for i in remaining], override_num_blocks=len(remaining))
    results = dataset.map_batches(
        ChunkRecorder, fn_constructor_args=(lab.reference, str(root), m.model_dump_json(), shipped),
        batch_size=1, concurrency=workers, num_cpus=0.5,
    )
    pending: dict[int, tuple[dict, dict]] = {}
    next_index = first
    with Progress(TextColumn("harvest (ray)"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
                  transient=True, disable=not progress) as bar:
        task = bar.add_task("harvest", total=m.n_chunks, completed=first)
        for row in results.iter_rows():
            tensors = load_tensors(bytes(row["stats"]))
            pending[int(row["index"])] = (json.loads(row["sums"]),
                                          {s: SiteStats.from_tensors(tensors, s) for s in m.sites})
            while next_index in pending:  # fold and commit strictly in chunk order
                chunk_sums, chunk_stats = pending.pop(next_index)
                fold(m, stats, next_index, chunk_sums, chunk_stats)
                done = min((next_index + 1) * m.chunk_windows, m.n_windows)
                commit(root, m, stats, done, complete=done == m.n_windows)
                next_index += 1
                bar.advance(task)
