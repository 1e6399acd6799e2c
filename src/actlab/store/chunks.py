"""Zarr v3 arrays of a store and chunk-wise writing: one chunk = `chunk_windows` whole windows.

A chunk is written whole (never read-modify-write), its checksums and statistics are computed
from what was written, and it is committed to the manifest only after every array has it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from actlab.store.codecs import STORAGE_DTYPE, decode, encode
from actlab.store.manifest import Manifest
from actlab.store.stats import SiteStats

INDEX_ARRAYS = {"tokens": "int32", "documents": "int32", "positions": "int32"}


def scale_name(site: str) -> str:
    return f"{site}.scale"


def create_arrays(root: Path, m: Manifest) -> zarr.Group:
    """Create every array of an empty store (index arrays, one per site, int8 scales)."""
    group = zarr.open_group(str(root), mode="a", zarr_format=3)
    compressors = [zarr.codecs.ZstdCodec(level=3)] if m.compression == "zstd" else None
    n, ct = m.n_tokens, m.chunk_tokens

    def make(name: str, shape: tuple[int, ...], dtype: str) -> None:
        group.create_array(name, shape=(n, *shape), chunks=(ct, *shape), dtype=dtype,
                           compressors=compressors, fill_value=0, overwrite=True)

    for name, dtype in INDEX_ARRAYS.items():
        make(name, (), dtype)
    for site, shape in m.sites.items():
        make(site, tuple(shape), STORAGE_DTYPE[m.codec])
        if m.codec == "int8":
            make(scale_name(site), (), "float32")
    return group


@dataclass
class ChunkData:
    """Everything recorded for the windows of one chunk."""

    index: int
    tokens: torch.Tensor  # [tokens]
    documents: torch.Tensor
    positions: torch.Tensor
    activations: dict[str, torch.Tensor]  # site -> [tokens, *shape], full precision


def sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:32]


def write_chunk(group: zarr.Group, m: Manifest, chunk: ChunkData) -> tuple[dict[str, str], dict[str, SiteStats]]:
    """Write one chunk to every array; return its checksums (array -> sha256) and site statistics."""
    start = chunk.index * m.chunk_tokens
    stop = start + chunk.tokens.shape[0]
    sums: dict[str, str] = {}

    def put(name: str, values: np.ndarray) -> None:
        group[name][start:stop] = values
        sums[name] = sha256(values)

    for name in INDEX_ARRAYS:
        put(name, getattr(chunk, name).numpy().astype(np.int32))
    stats = {}
    for site, x in chunk.activations.items():
        values, scales = encode(x, m.codec)
        put(site, values)
        if scales is not None:
            put(scale_name(site), scales)
        stats[site] = SiteStats.of(x, covariance=m.covariance)
        if m.codec != "float32":
            stats[site].codec_sq_error = float((decode(values, scales, m.codec).float() - x.float()).double().square().sum())
    return sums, stats
