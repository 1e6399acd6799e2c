"""TopK sparse autoencoder, trained streaming from a store or a tensor.

"Scaling and evaluating sparse autoencoders" (Gao et al., arXiv 2406.04093): z = TopK(W_enc(x −
b_pre) + b_enc) with a ReLU on the kept values, x̂ = W_dec z + b_pre; decoder rows kept at unit
norm (the gradient parallel to each row is removed before every Adam step, then rows are
renormalised); b_pre starts at the data mean; W_enc starts as W_decᵀ; latents that have not fired
for `dead_tokens` tokens are dead, and the AuxK loss (coefficient 1/32) asks the top `aux_k` dead
latents to reconstruct the residual error. Inputs are divided by one scalar so that their mean
squared norm per dimension is 1; the artifact stores it, so encode/decode take raw activations.

```python
sae = al.read.TopKSAE(n_latents=4096, k=32).fit(store, "blocks.12.resid_post")
sae.fve(store); sae.delta_ce(lab); sae.save("l12.sae")
```
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlab.artifacts import load_artifact, save_artifact
from actlab.errors import ActlabError
from actlab.eval.common import progress_bar
from actlab.read.splice import SparseCodes, SparseDictionary, activation_source

TENSORS = ("W_enc", "b_enc", "W_dec", "b_pre")


@dataclass
class TopKSAE:
    """Training configuration. `lr=None` is the paper's 2e-4 / sqrt(n_latents / 2**14).

    Training stops after `epochs` passes, `max_steps` steps, `max_seconds` of training, or as soon
    as the FVE on `eval_data` (default: the first `eval_tokens` training rows), checked every
    `eval_every` steps, reaches `target_fve`. `history` records each check; its `seconds` count
    training only, not the checks.
    """

    n_latents: int = 4096
    k: int = 32
    lr: float | None = None
    batch_size: int = 1024
    epochs: int = 10
    max_steps: int | None = None
    max_seconds: float | None = None
    max_tokens: int | None = None
    min_position: int = 0
    aux_k: int | None = None
    aux_coef: float = 1.0 / 32
    dead_tokens: int = 100_000
    target_fve: float | None = None
    eval_tokens: int = 8192
    eval_every: int = 50
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if min(self.n_latents, self.k, self.batch_size, self.epochs, self.eval_every) < 1:
            raise ActlabError("n_latents, k, batch_size, epochs and eval_every must be at least 1")
        if self.k > self.n_latents:
            raise ActlabError(f"k ({self.k}) cannot exceed n_latents ({self.n_latents})")

    def fit(self, data: Any, site: str | None = None, eval_data: Any = None) -> "SparseAutoencoder":
        """Train on a `Store` (and `site`) or a `[n, d]` tensor; returns the trained autoencoder."""
        src = activation_source(data, site, self.max_tokens, self.min_position)
        held = activation_source(eval_data, site, None, self.min_position) if eval_data is not None else None
        eval_x = (held or src).head(self.eval_tokens)
        torch.manual_seed(self.seed)
        sae = SparseAutoencoder.initial(src.head(max(self.eval_tokens, self.batch_size)), self.n_latents, self.k,
                                        src.site, src.fingerprint)
        params = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_pre]
        for p in params:
            p.requires_grad_(True)
        lr = self.lr or 2e-4 / math.sqrt(self.n_latents / 2**14)
        opt = torch.optim.Adam(params, lr=lr, eps=6.25e-10)
        aux_k = self.aux_k or src.width // 2
        idle = torch.zeros(self.n_latents, dtype=torch.long)  # tokens since each latent last fired
        steps_per_epoch = -(-src.n // self.batch_size)
        total = min(self.epochs * steps_per_epoch, self.max_steps or 10**12)
        trained, step, history = 0.0, 0, []
        with progress_bar(total, "TopK SAE", self.progress) as advance:
            for epoch in range(self.epochs):
                for x in src.shuffled(self.batch_size, self.seed + epoch):
                    tick = time.perf_counter()
                    loss, aux, fired = self._step(sae, x / sae.scale, opt, idle >= self.dead_tokens, aux_k)
                    idle += x.shape[0]
                    idle[fired] = 0
                    step += 1
                    trained += time.perf_counter() - tick
                    advance(1)
                    out_of_time = self.max_seconds is not None and trained >= self.max_seconds
                    if step == 1 or step % self.eval_every == 0 or step == total or out_of_time:
                        fve = sae.fve(eval_x)
                        history.append({"step": step, "tokens": step * self.batch_size, "loss": loss, "aux": aux,
                                        "fve": fve, "dead": int((idle >= self.dead_tokens).sum()),
                                        "seconds": trained})
                        if self.target_fve is not None and fve >= self.target_fve:
                            break
                    if step >= total or out_of_time:
                        break
                else:
                    continue
                break
        for p in params:
            p.requires_grad_(False)
        sae.params = {"n_latents": self.n_latents, "k": self.k, "lr": lr, "batch_size": self.batch_size,
                      "aux_k": aux_k, "aux_coef": self.aux_coef, "dead_tokens": self.dead_tokens, "seed": self.seed,
                      "epochs": self.epochs, "target_fve": self.target_fve, "max_seconds": self.max_seconds,
                      "min_position": self.min_position}
        sae.data = {**src.data, "steps": step, "seconds": trained}
        sae.history = history
        return sae

    def _step(self, sae: "SparseAutoencoder", x: torch.Tensor, opt: torch.optim.Optimizer, dead: torch.Tensor,
              aux_k: int) -> tuple[float, float, torch.Tensor]:
        """One Adam step on normalised rows `x`; returns (loss, aux loss, latents that fired)."""
        pre = sae.preactivations(x)
        values, indices = pre.topk(sae.k, dim=-1)
        values = values.relu()
        error = x - (torch.einsum("nk,nkd->nd", values, sae.W_dec[indices]) + sae.b_pre)
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = error.pow(2).sum(-1).mean() / variance
        aux = torch.zeros(())
        if bool(dead.any()):  # AuxK: the top dead latents reconstruct the residual error
            av, ai = pre.masked_fill(~dead, -math.inf).topk(min(aux_k, int(dead.sum())), dim=-1)
            aux_hat = torch.einsum("nk,nkd->nd", av.relu(), sae.W_dec[ai])
            target = error.detach()
            aux = (target - aux_hat).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        (loss + self.aux_coef * aux).backward()
        with torch.no_grad():
            g, w = sae.W_dec.grad, sae.W_dec
            g -= (g * w).sum(-1, keepdim=True) * w
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        fired = torch.unique(indices[values > 0])
        return float(loss.detach()), float(aux.detach()), fired


@dataclass(repr=False)
class SparseAutoencoder(SparseDictionary):
    """A trained TopK SAE: `W_enc` [d, n], `b_enc` [n], `W_dec` [n, d] (unit rows), `b_pre` [d], `scale`."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_pre: torch.Tensor
    scale: float
    k: int
    site: str | None
    fingerprint: dict | None
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    kind = "topk_sae"

    @classmethod
    def initial(cls, sample: torch.Tensor, n_latents: int, k: int, site: str | None,
                fingerprint: dict | None) -> "SparseAutoencoder":
        """Random unit decoder rows, W_enc = W_decᵀ, b_pre = mean of `sample`, scale from `sample`."""
        scale = float(sample.pow(2).sum(-1).mean().div(sample.shape[1]).sqrt().clamp_min(1e-12))
        W_dec = torch.randn(n_latents, sample.shape[1])
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        return cls(W_dec.T.clone(), torch.zeros(n_latents), W_dec, sample.mean(0) / scale, scale, k, site,
                   fingerprint)

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def width(self) -> int:
        return self.W_dec.shape[1]

    def __repr__(self) -> str:
        model = (self.fingerprint or {}).get("name", "any model")
        return f"SparseAutoencoder({self.n_latents} latents, width {self.width}, k {self.k}, {self.site}, {model})"

    def preactivations(self, x_normalised: torch.Tensor) -> torch.Tensor:
        return (x_normalised - self.b_pre) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> SparseCodes:
        self._check_width(x.shape[-1])
        values, indices = self.preactivations(x.float() / self.scale).topk(self.k, dim=-1)
        return SparseCodes(indices, values.relu())

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        return (torch.einsum("nk,nkd->nd", codes.values, self.W_dec[codes.indices]) + self.b_pre) * self.scale

    def save(self, path: str | Path) -> Path:
        """Write `tensors.safetensors` (weights) and `artifact.json` (scale, k, site, training record)."""
        meta = {"fingerprint": self.fingerprint, "site": self.site, "k": self.k, "scale": self.scale,
                "method": "topk_sae", "params": self.params, "data": self.data, "history": self.history}
        return save_artifact(path, self.kind, {n: getattr(self, n) for n in TENSORS}, meta)

    @classmethod
    def load(cls, path: str | Path) -> "SparseAutoencoder":
        tensors, meta = load_artifact(path, cls.kind)
        missing = [n for n in TENSORS if n not in tensors]
        if missing:
            raise ActlabError(f"'{path}' lacks the tensors {missing}")
        return cls(*(tensors[n].float() for n in TENSORS), float(meta["scale"]), int(meta["k"]), meta.get("site"),
                   meta.get("fingerprint"), meta.get("params", {}), meta.get("data", {}), meta.get("history", []))
