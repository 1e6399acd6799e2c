"""KV-cache quantization methods: one configurable `KVQuant` whose switches give KVQuant, KIVI,
per-token quantization (what transformers' `QuantizedCache` does) and the fp16 cache.

```python
kv = KVQuant(bits=3, keys="per_channel", pre_rope=True, nonuniform=True, outliers=0.01)
kv.calibrate(lab, "austen:train")
al.eval.perplexity(lab, "austen:test", kv=kv)          # fake quant, teacher forced
al.eval.cache_perplexity(lab, "austen:test", kv=kv)    # the packed cache in the loop
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from actlab.compress.kv.cache import KVLayer, PackedCache, capture_projected_keys
from actlab.compress.kv.calibration import collect, windows_of
from actlab.compress.kv.codecs import (
    ChannelCodec, TokenCodec, TokenGroupCodec, fit_levels, positions, uniform_levels,
)
from actlab.compress.kv.fake import fake_quant
from actlab.errors import ActlabError


def model_shape(lab) -> dict:
    """What a KV method's calibration depends on: the model and its attention geometry."""
    c = lab.catalog
    return {"model": lab.name, "layers": c.n_layers, "kv_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "d_model": c.d_model}


def check_fitted(method, lab) -> None:
    """A clear error when `method` was not calibrated, or was calibrated on another model."""
    if method.fitted_on is None:
        raise ActlabError(f"{method.label}: call .calibrate(lab, corpus) first")
    if method.fitted_on != model_shape(lab):
        raise ActlabError(f"{method.label} was calibrated on {method.fitted_on['model']}, not {lab.name}: "
                          "calibrate it on this model")


@dataclass
class KVQuant:
    """KVQuant (Hooper et al., "KVQuant: Towards 10 Million Context Length LLM Inference with KV
    Cache Quantization", arXiv 2401.18079), each feature a switch:

    - `keys`: "per_channel" (ranges calibrated offline per channel, or online over groups of
      `key_group` tokens when `key_group` is set, as KIVI) or "per_token".
    - `pre_rope`: quantize keys before the rotary embedding; RoPE is applied after dequantization.
    - `nonuniform`: per-layer datatypes from sensitivity-weighted k-means (Fisher weights when
      `fisher`) on the calibration activations; `qnorm` re-centres and re-scales them (Q-Norm).
    - `outliers`: fraction of values kept sparse in float16 (dense-and-sparse): per-channel
      thresholds calibrated offline for keys, per-token top/bottom values online for values.
    - `sinks`: the first tokens kept in float16 (attention sinks).
    - `residual`: the newest tokens kept in float16 by the packed cache (KIVI's window).
    - `value_group`: channels per value range (default: one range per head).

    `bits=16` is the float16 cache, `bits=32` a float32 one (nothing rounded). Values are always quantized per token.
    """

    bits: int = 4
    keys: str = "per_channel"
    key_group: int | None = None
    pre_rope: bool = True
    nonuniform: bool = False
    outliers: float = 0.0
    qnorm: bool = False
    sinks: int = 0
    residual: int = 0
    value_group: int | None = None
    fisher: bool = True
    name: str | None = None
    layers: dict = field(default_factory=dict, repr=False, compare=False)  # layer -> (key codec, value codec)
    fitted_on: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.bits not in (16, 32) and not 1 <= self.bits <= 8:
            raise ActlabError(f"KV bits must be 1-8 (16: the float16 cache, 32: float32), got {self.bits}")
        if self.keys not in ("per_channel", "per_token"):
            raise ActlabError(f"keys must be 'per_channel' or 'per_token', got {self.keys!r}")
        if not 0 <= self.outliers < 0.5:
            raise ActlabError(f"outliers is a fraction in [0, 0.5), got {self.outliers}")
        if self.key_group is not None and self.keys != "per_channel":
            raise ActlabError("key_group (online per-channel groups of tokens) needs keys='per_channel'")
        for name in ("sinks", "residual"):
            if getattr(self, name) < 0:
                raise ActlabError(f"{name} must be >= 0")

    # ------------------------------------------------------------------ description
    @property
    def label(self) -> str:
        return self.name or str(self)

    def __str__(self) -> str:
        args = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if f.name not in ("name", "layers", "fitted_on") and getattr(self, f.name) != f.default]
        return f"kvquant({','.join(args)})"

    @property
    def needs_calibration(self) -> bool:
        offline_keys = self.keys == "per_channel" and self.key_group is None
        return self.bits <= 8 and (offline_keys or self.nonuniform)

    @property
    def key_site(self) -> str:
        return "attn.k" if self.pre_rope else "attn.k_rot"

    # ------------------------------------------------------------------ calibration
    def calibrate(self, lab, corpus="austen:train", samples: int = 16, seq_len: int = 512,
                  progress: bool = True) -> "KVQuant":
        """Fit the per-layer codecs (offline key ranges, non-uniform datatypes) on `samples`
        windows of `seq_len` tokens of `corpus`; returns self."""
        self.fitted_on = model_shape(lab)
        n, head_dim = lab.catalog.n_layers, lab.catalog.head_dim
        vgroup = self.value_group or head_dim
        if not self.needs_calibration:
            self.layers = {i: self._codecs(None, None, head_dim, vgroup) for i in range(n)}
            return self
        ids = windows_of(lab, corpus, samples, seq_len)
        sites = [f"blocks.{i}.{c}" for i in range(n) for c in (self.key_site, "attn.v")]
        # Fisher weights for the datatypes; post-RoPE keys cannot be graph leaves, so values only there
        fisher = [s for s in sites if self.pre_rope or s.endswith("attn.v")] if self.fisher and self.nonuniform else []
        data = collect(lab, ids, sites, fisher, progress)
        self.layers = {}
        for i in range(n):
            k_site, v_site = f"blocks.{i}.{self.key_site}", f"blocks.{i}.attn.v"
            keys = (data.acts[k_site], data.fisher.get(k_site))
            values = (data.acts[v_site], data.fisher.get(v_site))
            self.layers[i] = self._codecs(keys, values, head_dim, vgroup)
        return self

    def _codecs(self, keys, values, head_dim: int, vgroup: int):
        if self.bits > 8:
            return None, None
        levels = uniform_levels(self.bits)
        value_codec = TokenCodec(self.bits, vgroup, levels, self.outliers)
        if self.keys == "per_token":
            key_codec = TokenCodec(self.bits, head_dim, levels, self.outliers)
        elif self.key_group is not None:
            key_codec = TokenGroupCodec(self.bits, self.key_group, levels)
        else:
            acts = keys[0]
            q = self.outliers / 2
            lo = torch.quantile(acts[: 1 << 14].T, q, dim=-1) if q else acts.amin(0)
            hi = torch.quantile(acts[: 1 << 14].T, 1 - q, dim=-1) if q else acts.amax(0)
            key_codec = ChannelCodec(self.bits, levels, lo, hi, sparse=self.outliers > 0)
        if self.nonuniform and keys is not None:
            key_codec.levels, key_codec.decoded = self._fit(key_codec, *keys)
            value_codec.levels, value_codec.decoded = self._fit(value_codec, *values)
        return key_codec, value_codec

    def _fit(self, codec, acts: torch.Tensor, fisher: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted k-means datatype of the calibration values' positions under `codec`."""
        return fit_levels(positions(codec, acts[None]), fisher, self.bits, self.qnorm)

    # ------------------------------------------------------------------ use
    def check(self, lab) -> None:
        check_fitted(self, lab)

    def edits(self, lab) -> dict:
        """Fake quantization (quantize-dequantize) of keys and values at their sites."""
        self.check(lab)
        out = {}
        for i, (kc, vc) in self.layers.items():
            out[f"blocks.{i}.{self.key_site}"] = fake_quant(kc, self.sinks, self.bits)
            out[f"blocks.{i}.attn.v"] = fake_quant(vc, self.sinks, self.bits)
        return out

    def cache(self, lab):
        """A packed cache (`actlab.compress.kv.cache.PackedCache`) holding this method's codes."""
        self.check(lab)
        layers = [KVLayer(kc, vc, self.bits, self.sinks, self.residual, self.pre_rope)
                  for kc, vc in (self.layers[i] for i in range(lab.catalog.n_layers))]
        return PackedCache(lab, layers, self.label, capture=capture_projected_keys)
