"""ITDA: a dictionary of real activations, built greedily, decoded by matching pursuit.

"Inference-Time Decomposition of Activations (ITDA): A Scalable Approach to Interpreting Large
Language Models" (Leask, Nanda, Al Moubayed; ICML 2025, arXiv 2505.17769). Activations stream
by in batches; each is encoded by matching pursuit (k atoms) against the current dictionary; those
whose normalised reconstruction error ‖x/‖x‖ − x̂/‖x̂‖‖² exceeds `threshold` join the dictionary
(unit-normed, the worst reconstructed first) until it holds `size` atoms. Unlike the paper's code,
which adds every such token of a batch at once, a batch is consumed in rounds that at most double
the dictionary, re-encoding the rest after each round: the first batch does not simply fill the
dictionary with its leading tokens, and tokens that the new atoms explain stay out. Every atom keeps where it
came from (store row, window, position, token, document), so dictionaries of different layers or
models fitted on the same prompts compare by the Jaccard index of their (prompt, token position)
keys, as in the paper.

```python
dico = al.read.ITDA(size=4096, k=32).fit(al.open_store("austen.zarr"), "blocks.12.resid_post")
dico.fve(store); dico.delta_ce(lab); al.read.jaccard(dico, other)
```
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from actlab.artifacts import load_artifact, save_artifact
from actlab.errors import ActlabError
from actlab.eval.common import progress_bar
from actlab.read.splice import ActivationSource, SparseCodes, SparseDictionary, activation_source

PURSUITS = ("mp", "omp")
INDEX_NAMES = ("rows", "tokens", "documents", "positions")


def matching_pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int, orthogonal: bool = False) -> SparseCodes:
    """Batched (orthogonal) matching pursuit of rows `x` [n, d] on unit-norm `atoms` [m, d], k steps.

    Plain MP (the paper's encoder) adds the residual's projection on the best-correlated atom at
    each step (an atom may be chosen again). OMP refits all chosen atoms by least squares each
    step, so any combination of ≤ k linearly independent atoms it finds is reconstructed exactly.
    """
    n, m = x.shape[0], atoms.shape[0]
    if m == 0:
        raise ActlabError("the dictionary is empty")
    steps = min(k, m) if orthogonal else k
    indices = torch.zeros(n, steps, dtype=torch.long, device=x.device)
    values = torch.zeros(n, steps, dtype=x.dtype, device=x.device)
    residual = x.clone()
    rows = torch.arange(n, device=x.device)
    for s in range(steps):
        corr = residual @ atoms.T
        score = corr.abs()
        if orthogonal and s:
            score.scatter_(1, indices[:, :s], -1.0)  # never pick a chosen atom twice
        best = score.argmax(1)
        indices[:, s] = best
        if orthogonal:
            chosen = atoms[indices[:, :s + 1]]                                          # [n, s+1, d]
            coef = torch.linalg.lstsq(chosen.transpose(1, 2), x.unsqueeze(-1)).solution.squeeze(-1)
            values[:, :s + 1] = coef
            residual = x - torch.einsum("ns,nsd->nd", coef, chosen)
        else:
            values[:, s] = corr[rows, best]
            residual -= values[:, s, None] * atoms[best]
    return SparseCodes(indices, values)


def normalized_error(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """‖x/‖x‖ − x̂/‖x̂‖‖² per row (= 2 − 2 cos(x, x̂); the paper's selection criterion, summed over d)."""
    return (F.normalize(x, dim=-1) - F.normalize(reconstruction, dim=-1)).pow(2).sum(-1)


@dataclass
class ITDA:
    """ITDA estimator: `size` atoms at most, `k` pursuit steps, `threshold` on the normalised error.

    `pursuit="mp"` is the paper's matching pursuit; "omp" refits coefficients (slower, exact on
    k-sparse combinations). Streaming stops once the dictionary is full or after `max_tokens`.
    """

    size: int = 4096
    k: int = 32
    threshold: float = 0.1
    pursuit: str = "mp"
    batch_size: int = 1024
    max_tokens: int | None = None
    min_position: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.size < 1 or self.k < 1 or self.batch_size < 1:
            raise ActlabError(f"size, k and batch_size must be at least 1 (got {self.size}, {self.k}, "
                              f"{self.batch_size})")
        if self.pursuit not in PURSUITS:
            raise ActlabError(f"unknown pursuit {self.pursuit!r}: use {' or '.join(PURSUITS)}")
        if not 0.0 <= self.threshold < 4.0:
            raise ActlabError(f"threshold must lie in [0, 4) (the error is 2 − 2·cos), got {self.threshold}")

    def fit(self, data: Any, site: str | None = None) -> "ITDADictionary":
        """Build the dictionary from a `Store` (and `site`) or a `[n, d]` tensor, read in order."""
        src = activation_source(data, site, self.max_tokens, self.min_position)
        started = time.perf_counter()
        atoms = torch.zeros(0, src.width)
        chosen: list[torch.Tensor] = []
        seen = 0
        with progress_bar(src.n, "ITDA", self.progress) as advance:
            for ids, x in src.sequential(self.batch_size):
                atoms, take = self._grow(x, atoms, self.size - atoms.shape[0])
                chosen.append(ids[take])
                seen += x.shape[0]
                advance(x.shape[0])
                if atoms.shape[0] >= self.size:
                    break
        rows = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        params = {"size": self.size, "k": self.k, "threshold": self.threshold, "pursuit": self.pursuit,
                  "batch_size": self.batch_size, "min_position": self.min_position}
        data_info = {**src.data, "tokens_seen": seen, "seconds": time.perf_counter() - started}
        return ITDADictionary(atoms, self.k, self.pursuit, src.site, src.fingerprint, _keys(src, rows),
                              src.seq_len, params, data_info)

    def _grow(self, x: torch.Tensor, atoms: torch.Tensor, room: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Add rows of `x` whose error exceeds the threshold, worst first, in rounds: each round adds at
        most as many atoms as the dictionary holds, then re-encodes the rest, so tokens that the new
        atoms explain stay out. Exact duplicates count once. Returns (atoms, rows of `x` added)."""
        _, inverse = torch.unique(x, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), x.shape[0], dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(x.shape[0]), "amin").sort().values
        pending = first[x[first].norm(dim=-1) > 0]
        taken = []
        while room > 0 and len(pending):
            if atoms.shape[0]:
                codes = matching_pursuit(x[pending], atoms, self.k, self.pursuit == "omp")
                error = normalized_error(x[pending], decode(codes, atoms))
            else:
                error = torch.full((len(pending),), 4.0)
            over = error > self.threshold
            pending, error = pending[over], error[over]
            order = error.argsort(descending=True, stable=True)
            new = pending[order[:min(room, max(1, atoms.shape[0]))]]
            atoms = torch.cat([atoms, x[new] / x[new].norm(dim=-1, keepdim=True)])
            taken.append(new)
            room -= len(new)
            pending = pending[order[len(new):]]
        return atoms, torch.cat(taken) if taken else torch.zeros(0, dtype=torch.long)


def decode(codes: SparseCodes, atoms: torch.Tensor) -> torch.Tensor:
    """Σ values · atoms[indices] per row."""
    return torch.einsum("nk,nkd->nd", codes.values, atoms[codes.indices])


def _keys(src: ActivationSource, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Provenance of each atom: store row, token id, document id, in-window position (−1 if unknown)."""
    keys = {"rows": rows.long()}
    for name in INDEX_NAMES[1:]:
        keys[name] = torch.as_tensor(src.index[name][rows.numpy()]).long() if name in src.index \
            else torch.full_like(rows, -1)
    return keys


@dataclass(repr=False)
class ITDADictionary(SparseDictionary):
    """Unit-norm atoms `[size, d]` that are real activations, with where each came from."""

    atoms: torch.Tensor
    k: int
    pursuit: str
    site: str | None
    fingerprint: dict | None
    provenance: dict[str, torch.Tensor]
    seq_len: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    kind = "itda_dictionary"

    @property
    def n_latents(self) -> int:
        return self.atoms.shape[0]

    @property
    def width(self) -> int:
        return self.atoms.shape[1]

    def __repr__(self) -> str:
        model = (self.fingerprint or {}).get("name", "any model")
        return f"ITDADictionary({self.n_latents} atoms, width {self.width}, k {self.k}, {self.site}, {model})"

    def encode(self, x: torch.Tensor) -> SparseCodes:
        self._check_width(x.shape[-1])
        return matching_pursuit(x.float(), self.atoms, self.k, self.pursuit == "omp")

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        return decode(codes, self.atoms)

    def keys(self) -> set[tuple[int, int]]:
        """(prompt, token position) of every atom: (window, position) for a store, (row, 0) for a tensor."""
        rows, positions = self.provenance["rows"], self.provenance["positions"]
        windows = rows // self.seq_len if self.seq_len else rows
        positions = positions.clamp_min(0)
        return set(zip(windows.tolist(), positions.tolist()))

    def contexts(self, tokenizer: Any, store: Any, width: int = 8) -> list[str]:
        """Each atom's token in its prompt context: the `width` tokens before it and `[[token]]`."""
        if self.seq_len is None:
            raise ActlabError("this dictionary was fitted on a tensor: it has no token provenance")
        tokens = store.index("tokens")
        out = []
        for row, pos in zip(self.provenance["rows"].tolist(), self.provenance["positions"].tolist()):
            before = tokenizer.decode(tokens[max(row - min(width, pos), 0):row].tolist())
            out.append(f"{before}[[{tokenizer.decode([int(tokens[row])])}]]")
        return out

    def save(self, path: str | Path) -> Path:
        """Write `tensors.safetensors` (atoms, provenance) and `artifact.json`."""
        meta = {"fingerprint": self.fingerprint, "site": self.site, "k": self.k, "pursuit": self.pursuit,
                "seq_len": self.seq_len, "method": "itda", "params": self.params, "data": self.data}
        return save_artifact(path, self.kind, {"atoms": self.atoms, **self.provenance}, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ITDADictionary":
        tensors, meta = load_artifact(path, cls.kind)
        missing = [n for n in ("atoms", *INDEX_NAMES) if n not in tensors]
        if missing:
            raise ActlabError(f"'{path}' lacks the tensors {missing}")
        return cls(tensors["atoms"].float(), int(meta["k"]), meta["pursuit"], meta.get("site"), meta.get("fingerprint"),
                   {n: tensors[n] for n in INDEX_NAMES}, meta.get("seq_len"), meta.get("params", {}),
                   meta.get("data", {}))


def jaccard(a: ITDADictionary, b: ITDADictionary) -> float:
    """|keys(a) ∩ keys(b)| / |keys(a) ∪ keys(b)| over the atoms' (prompt, token position) keys.

    Keys align only when both dictionaries saw the same token stream cut the same way (same
    corpus, tokenizer and windows); otherwise this is an error, not a meaningless number.
    """
    for d in (a, b):
        if not isinstance(d, ITDADictionary):
            raise ActlabError(f"jaccard compares ITDA dictionaries, not {type(d).__name__}")
    ca, cb = a.data.get("corpus"), b.data.get("corpus")
    if (ca is None) != (cb is None) or (ca and (ca.get("tokens_sha256"), a.seq_len) != (cb.get("tokens_sha256"),
                                                                                         b.seq_len)):
        raise ActlabError("these dictionaries were fitted on different token streams (another corpus, tokenizer "
                          "or window length): their (prompt, position) keys do not correspond")
    ka, kb = a.keys(), b.keys()
    union = ka | kb
    return len(ka & kb) / len(union) if union else 1.0
