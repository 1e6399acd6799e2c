"""The store manifest (`actlab.json`): what was recorded, from what, and how far the harvest got.

It is replaced atomically (write, fsync, rename), and names the statistics snapshot that
matches its progress, so a harvest killed at any instant leaves a consistent store.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

MANIFEST = "actlab.json"
FORMAT = "actlab-store/1"


class Progress(BaseModel):
    windows_done: int = 0
    complete: bool = False
    stats_file: str | None = None


class Manifest(BaseModel):
    format: str = FORMAT
    actlab_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    model: str
    fingerprint: dict
    sites: dict[str, list[int]]
    codec: str
    compression: str | None
    seq_len: int
    n_windows: int
    chunk_windows: int
    batch_size: int
    covariance: bool
    corpus: dict
    progress: Progress = Field(default_factory=Progress)
    checksums: dict[str, dict[str, str]] = Field(default_factory=dict)  # array -> chunk index -> sha256

    @property
    def n_tokens(self) -> int:
        return self.n_windows * self.seq_len

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_windows * self.seq_len

    @property
    def n_chunks(self) -> int:
        return -(-self.n_windows // self.chunk_windows)

    @property
    def tokens_done(self) -> int:
        return self.progress.windows_done * self.seq_len


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(root / MANIFEST, manifest.model_dump_json(indent=2).encode())


def load_manifest(root: Path) -> Manifest:
    return Manifest.model_validate(json.loads((root / MANIFEST).read_text()))
