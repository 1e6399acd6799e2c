"""Reading a store: lazy slices, statistics, seeded shuffled batches, a torch dataset, verification.

`open_store(path, lab=None)`; `store[site][a:b]` reads only the chunks it needs and decodes to
a float tensor; `store.batches(site, 4096, shuffle=True, seed=0)` reads whole chunks and mixes
rows across a buffer of chunks, so it runs at disk speed and is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from safetensors.torch import load_file

from actlab.errors import ActlabError, did_you_mean
from actlab.store.chunks import INDEX_ARRAYS, scale_name, sha256
from actlab.store.codecs import decode
from actlab.store.manifest import MANIFEST, Manifest, load_manifest
from actlab.store.stats import SiteStats


def load_stats(root: Path, m: Manifest) -> dict[str, SiteStats]:
    """The statistics snapshot the manifest points at (empty statistics before the first commit)."""
    if m.progress.stats_file is None:
        return {s: SiteStats(int(np.prod(shape)), m.covariance) for s, shape in m.sites.items()}
    tensors = load_file(str(root / m.progress.stats_file))
    return {s: SiteStats.from_tensors(tensors, s) for s in m.sites}


class SiteArray:
    """One site's activations on disk: `[n_tokens_done, *shape]`, sliced lazily, decoded on read."""

    def __init__(self, group: zarr.Group, site: str, m: Manifest):
        self.site, self.codec = site, m.codec
        self._values = group[site]
        self._scales = group[scale_name(site)] if m.codec == "int8" else None
        self.shape = (m.tokens_done, *m.sites[site])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            key = slice(*key.indices(len(self)))
        elif isinstance(key, int):
            key = key + len(self) if key < 0 else key
            if not 0 <= key < len(self):
                raise IndexError(f"token {key} out of range for {len(self)} tokens")
        else:  # index array: read in sorted order, return in the order asked
            key = np.asarray(key)
            if key.size and (key.min() < -len(self) or key.max() >= len(self)):
                raise IndexError(f"index out of range for {len(self)} tokens")
            key = np.where(key < 0, key + len(self), key)
            return self._read(np.sort(key))[torch.from_numpy(np.argsort(np.argsort(key)))]
        return self._read(key)

    def _read(self, key) -> torch.Tensor:
        if isinstance(key, np.ndarray):
            get = lambda array: np.asarray(array.get_orthogonal_selection((key,)))  # noqa: E731
        else:
            get = lambda array: np.asarray(array[key])  # noqa: E731
        return decode(get(self._values), None if self._scales is None else get(self._scales), self.codec)

    def numpy(self) -> np.ndarray:
        return self[:].float().numpy()

    def __repr__(self) -> str:
        return f"SiteArray({self.site!r}, shape={self.shape}, codec={self.codec})"


@dataclass
class VerifyReport:
    complete: bool
    chunks: int
    damaged: list[tuple[str, int]] = field(default_factory=list)  # (array, chunk)
    missing: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and not self.damaged and not self.missing


class Store:
    """An activation store on disk (Zarr v3 + `actlab.json`)."""

    def __init__(self, root: str | Path, lab=None):
        self.root = Path(root)
        if not (self.root / MANIFEST).exists():
            raise ActlabError(f"{self.root} is not an actlab store (no {MANIFEST})")
        self.manifest = load_manifest(self.root)
        if lab is not None and not lab.fingerprint.matches(self.manifest.fingerprint):
            raise ActlabError(f"store {self.root} was recorded from {self.manifest.model} "
                              f"(weights {self.manifest.fingerprint['weights_sha256']}), not from "
                              f"{lab.name} (weights {lab.fingerprint.weights_sha256})")
        self.group = zarr.open_group(str(self.root), mode="r", zarr_format=3)
        self._stats: dict[str, SiteStats] | None = None

    @property
    def sites(self) -> list[str]:
        return list(self.manifest.sites)

    @property
    def n_tokens(self) -> int:
        """Tokens committed so far (all of them once the harvest is complete)."""
        return self.manifest.tokens_done

    def __getitem__(self, site: str) -> SiteArray:
        if site not in self.manifest.sites:
            raise ActlabError(f"store has no site {site!r}{did_you_mean(site, self.sites)}; it has {len(self.sites)} "
                              f"sites: {', '.join(self.sites[:6])}{' …' if len(self.sites) > 6 else ''}")
        return SiteArray(self.group, site, self.manifest)

    def index(self, name: str) -> np.ndarray:
        """`tokens`, `documents` or `positions` of the committed tokens."""
        if name not in INDEX_ARRAYS:
            raise ActlabError(f"index arrays are {', '.join(INDEX_ARRAYS)}, not {name!r}")
        return np.asarray(self.group[name][: self.n_tokens])

    @property
    def stats(self) -> dict[str, SiteStats]:
        if self._stats is None:
            self._stats = load_stats(self.root, self.manifest)
        return self._stats

    def __repr__(self) -> str:
        m = self.manifest
        state = "complete" if m.progress.complete else f"{m.progress.windows_done}/{m.n_windows} windows"
        return f"Store({str(self.root)!r}, {m.model}, {len(self.sites)} sites, {self.n_tokens} tokens, {m.codec}, {state})"

    # -- training-time reading --------------------------------------------------------------------
    def batches(self, site: str, batch_size: int = 4096, shuffle: bool = False, seed: int = 0,
                buffer_chunks: int = 4, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Batches of `[batch_size, *shape]` rows. With `shuffle`, chunk order is permuted and rows
        are mixed across `buffer_chunks` chunks at a time (seeded: the same seed, the same batches)."""
        array = self[site]
        chunk = self.manifest.chunk_tokens
        starts = list(range(0, len(array), chunk))
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(starts)
        group = buffer_chunks if shuffle else 1
        carry = None
        for g in range(0, len(starts), group):
            rows = torch.cat([array[s:min(s + chunk, len(array))] for s in starts[g:g + group]])
            if shuffle:
                rows = rows[torch.from_numpy(rng.permutation(rows.shape[0]))]
            if carry is not None:
                rows = torch.cat([carry, rows])
            n_full = rows.shape[0] // batch_size * batch_size
            yield from rows[:n_full].split(batch_size)
            carry = rows[n_full:]
        if carry is not None and carry.shape[0] and not drop_last:
            yield carry

    def dataset(self, site: str, batch_size: int = 4096, shuffle: bool = True, seed: int = 0):
        """A torch `IterableDataset` of batches (use with `DataLoader(ds, batch_size=None)`)."""
        from actlab.store.readers import StoreDataset

        return StoreDataset(self.root, site, batch_size, shuffle, seed)

    # -- integrity --------------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Check completeness and every chunk's checksum; name damaged or missing chunks."""
        m = self.manifest
        done_chunks = -(-m.progress.windows_done // m.chunk_windows)
        report = VerifyReport(m.progress.complete, done_chunks)
        names = list(INDEX_ARRAYS) + [n for s in m.sites for n in ([s, scale_name(s)] if m.codec == "int8" else [s])]
        for name in names:
            array = self.group[name]
            for c in range(done_chunks):
                expected = m.checksums.get(name, {}).get(str(c))
                if expected is None:
                    report.missing.append((name, c))
                    continue
                lo = c * m.chunk_tokens
                try:
                    values = array[lo:min(lo + m.chunk_tokens, m.n_tokens)]
                except Exception:  # undecodable chunk file
                    report.damaged.append((name, c))
                    continue
                if sha256(np.asarray(values)) != expected:
                    report.damaged.append((name, c))
        return report


def open_store(path: str | Path, lab=None) -> Store:
    """Open a store; with `lab`, refuse it unless it was recorded from that model."""
    return Store(path, lab)
