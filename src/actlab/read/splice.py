"""What every sparse dictionary shares (ITDA, TopK SAE): sparse codes, activation sources,
fraction of variance explained, and splicing the dictionary into the model to measure ΔCE.

Splicing replaces a site's activation by its reconstruction and measures the change in
next-token cross-entropy, the downstream-loss metric of "Scaling and evaluating sparse
autoencoders" (Gao et al., arXiv 2406.04093) and of ITDA (Leask et al., arXiv 2505.17769).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actlab.artifacts import META
from actlab.engine.context import Positions
from actlab.engine.edits import Edit
from actlab.errors import ActlabError
from actlab.eval.perplexity import perplexity
from actlab.store.readers import MixingBuffer
from actlab.store.store import Store, open_store


@dataclass
class SparseCodes:
    """k (index, value) pairs per row: `indices`, `values` both `[n, k]` (an index may repeat in MP)."""

    indices: torch.Tensor
    values: torch.Tensor

    def dense(self, n_latents: int) -> torch.Tensor:
        """The `[n, n_latents]` code matrix (repeated indices summed)."""
        out = torch.zeros(self.values.shape[0], n_latents, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add_(1, self.indices, self.values)


@dataclass
class ActivationSource:
    """The rows `[n, d]` of one site that a dictionary reads, with their provenance.

    `ids` are the rows kept (store row numbers; with `min_position`, rows at earlier in-window
    positions, such as the attention-sink first token, are left out).
    """

    rows: Any                       # a store's SiteArray or a 2-D tensor: both slice to float tensors
    ids: np.ndarray
    width: int
    site: str | None
    fingerprint: dict | None = None
    seq_len: int | None = None      # window length of a store: row // seq_len is the window (prompt)
    index: dict[str, np.ndarray] = field(default_factory=dict)   # tokens, documents, positions by row
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    def _read(self, ids: np.ndarray) -> torch.Tensor:
        block = self.rows[int(ids[0]):int(ids[-1]) + 1].float()
        return block if len(ids) == block.shape[0] else block[torch.from_numpy(ids - ids[0])]

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(row ids, batch) in store order."""
        for start in range(0, self.n, batch_size):
            ids = self.ids[start:start + batch_size]
            yield torch.from_numpy(ids), self._read(ids)

    def shuffled(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """One seeded pass in random order: a whole store streams chunk-mixed batches (`Store.batches`);
        a capped or filtered store reads blocks of 4 batches in a seeded order through a `MixingBuffer`
        of 16 batches; a tensor is permuted."""
        if isinstance(self.rows, torch.Tensor):
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            for i in range(0, self.n, batch_size):
                yield self.rows[torch.from_numpy(self.ids)[order[i:i + batch_size]]].float()
        elif self.n == len(self.rows):
            for batch in open_store(self.data["store"]).batches(self.site, batch_size, shuffle=True, seed=seed):
                yield batch.float()
        else:
            span = 4 * batch_size
            blocks = np.random.default_rng(seed).permutation(-(-self.n // span))
            rows = (self._read(self.ids[b * span:(b + 1) * span]) for b in blocks)
            yield from MixingBuffer(rows, capacity=16 * batch_size, batch_size=batch_size, seed=seed)

    def head(self, n: int) -> torch.Tensor:
        return self._read(self.ids[:min(n, self.n)])


def activation_source(data: Any, site: str | None = None, max_tokens: int | None = None,
                      min_position: int = 0) -> ActivationSource:
    """An `ActivationSource` for a `Store` (with `site`) or a `[n, d]` tensor: the first `max_tokens`
    rows, without the rows at in-window positions below `min_position` (stores only)."""
    if max_tokens is not None and max_tokens < 1:
        raise ActlabError(f"max_tokens must be at least 1, got {max_tokens}")
    if min_position < 0:
        raise ActlabError(f"min_position must be ≥ 0, got {min_position}")
    if isinstance(data, (str, Path)):
        data = open_store(data)
    if isinstance(data, Store):
        if site is None:
            raise ActlabError(f"name the site to read from the store; it has {', '.join(data.sites[:6])}")
        array = data[site]
        if len(array.shape) != 2:
            raise ActlabError(f"{site} has per-token shape {tuple(array.shape[1:])}; a dictionary needs a vector site")
        n = len(array) if max_tokens is None else min(len(array), max_tokens)
        index = {name: data.index(name)[:n] for name in ("tokens", "documents", "positions")}
        ids = np.nonzero(index["positions"] >= min_position)[0]
        if len(ids) == 0:
            raise ActlabError(f"store {data.root} holds no tokens at positions ≥ {min_position} yet")
        m = data.manifest
        return ActivationSource(array, ids, array.shape[1], site, m.fingerprint, m.seq_len, index,
                                {"store": str(data.root), "corpus": m.corpus, "tokens": n,
                                 "min_position": min_position})
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.shape[0] == 0:
            raise ActlabError(f"activations must be a non-empty [n, d] tensor, got shape {tuple(data.shape)}")
        if min_position:
            raise ActlabError("min_position needs token positions: fit on a store, not a tensor")
        n = data.shape[0] if max_tokens is None else min(data.shape[0], max_tokens)
        return ActivationSource(data.detach().cpu(), np.arange(n), data.shape[1], site,
                                data={"tensor": list(data.shape), "tokens": n})
    raise ActlabError(f"fit a dictionary on a Store (al.open_store) or a [n, d] tensor, not {type(data).__name__}")


class SparseDictionary:
    """Shared interface: subclasses give `encode`, `decode`, `n_latents`, `width`, `site`, `fingerprint`."""

    site: str | None
    fingerprint: dict | None
    kind: str

    @property
    def n_latents(self) -> int:
        raise NotImplementedError

    @property
    def width(self) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> SparseCodes:
        raise NotImplementedError

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """decode(encode(x)) for `[n, d]` rows, in float32, `batch_size` rows at a time."""
        if x.dim() != 2 or x.shape[-1] != self.width:
            raise ActlabError(f"expected [n, {self.width}] activations, got shape {tuple(x.shape)}")
        x = x.float()
        return torch.cat([self.decode(self.encode(b)) for b in x.split(batch_size)]) if x.shape[0] else x.clone()

    @torch.no_grad()
    def fve(self, data: Any, site: str | None = None, max_tokens: int | None = None, min_position: int = 0,
            batch_size: int = 4096) -> float:
        """Fraction of variance explained, 1 − Σ‖x − x̂‖² / Σ‖x − mean‖², over a store or tensor."""
        src = activation_source(data, site or self.site, max_tokens, min_position)
        self._check_width(src.width)
        sse, total, sq = 0.0, torch.zeros(src.width, dtype=torch.float64), 0.0
        for _, x in src.sequential(batch_size):
            sse += float((x - self.reconstruct(x)).double().pow(2).sum())
            total += x.double().sum(0)
            sq += float(x.double().pow(2).sum())
        sst = sq - float(total.pow(2).sum()) / src.n
        return 1.0 - sse / sst if sst > 0 else float("nan")

    def _check_width(self, width: int) -> None:
        if width != self.width:
            raise ActlabError(f"this dictionary has width {self.width}; the activations have width {width}")

    def check(self, lab: Any) -> None:
        """Raise unless `lab` is the model this dictionary was fitted on and has its site and width."""
        if self.site is None:
            raise ActlabError("this dictionary was fitted on a tensor without a site: pass site= to splice()")
        if self.fingerprint is not None and not lab.fingerprint.matches(self.fingerprint):
            raise ActlabError(f"this dictionary was fitted on {self.fingerprint.get('name')}, not on {lab.name}")
        shape = tuple(lab.site(self.site).shape)
        if shape != (self.width,):
            raise ActlabError(f"{self.site} of {lab.name} has shape {shape}; this dictionary has width {self.width}")

    def splice(self, positions: Positions = "all", site: str | None = None) -> dict[str, "Splice"]:
        """Edits that replace the site's activation by its reconstruction (`lab.edit(dico.splice())`)."""
        site = site or self.site
        if site is None:
            raise ActlabError("this dictionary has no site: pass site=")
        return {site: Splice(self, positions=positions)}

    def delta_ce(self, lab: Any, corpus: Any = "austen:test", seq_len: int = 256, max_tokens: int = 2048,
                 batch_size: int = 4, positions: Positions = "all", progress: bool = False) -> "DeltaCE":
        """Next-token cross-entropy with the dictionary spliced in minus without (same windows)."""
        self.check(lab)
        clean = perplexity(lab, corpus, seq_len, max_tokens=max_tokens, batch_size=batch_size, progress=progress)
        spliced = perplexity(lab, corpus, seq_len, max_tokens=max_tokens, batch_size=batch_size,
                             edits=self.splice(positions), progress=progress)
        return DeltaCE(clean.nll_mean, spliced.nll_mean, spliced.nll_mean - clean.nll_mean,
                       clean.tokens_scored, clean.protocol)


@dataclass
class DeltaCE:
    """Mean next-token NLL (nats) clean and with a dictionary spliced in, and their difference."""

    nll_clean: float
    nll_spliced: float
    delta: float
    tokens_scored: int
    protocol: dict


@dataclass(repr=False)
class Splice(Edit):
    """Replaces the activation by `dictionary.reconstruct(activation)` on the selected tokens."""

    dictionary: SparseDictionary

    def apply(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return self.dictionary.reconstruct(flat).to(x.dtype).reshape(x.shape)

    def __repr__(self) -> str:
        return f"Splice({self.dictionary!r}, positions={self.positions!r})"


def load_dictionary(path: str | Path) -> SparseDictionary:
    """Load a saved ITDA dictionary or TopK sparse autoencoder, whichever the folder holds."""
    from actlab.read.itda import ITDADictionary
    from actlab.read.sae import SparseAutoencoder

    meta = Path(path).expanduser() / META
    try:
        kind = json.loads(meta.read_text()).get("kind") if meta.is_file() else None
    except json.JSONDecodeError:
        kind = None
    for cls in (ITDADictionary, SparseAutoencoder):
        if kind == cls.kind:
            return cls.load(path)
    raise ActlabError(f"'{path}' is not a saved dictionary (kind {kind!r}); expected "
                      f"{ITDADictionary.kind!r} or {SparseAutoencoder.kind!r}")
