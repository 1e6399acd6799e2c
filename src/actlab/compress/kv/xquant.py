"""XQuant (Tomar et al., "XQuant: Breaking the Memory Wall for LLM Inference with KV Cache
Rematerialization", arXiv 2508.10395): cache the quantized layer input X (`attn.in`) and
rematerialize keys and values from it, `K = X̂ W_kᵀ + b`, `V = X̂ W_vᵀ + b`.

- `mode="x"`: cache X itself (d_model channels per layer: half the float KV of a multi-head
  model, but more than K and V together for grouped-query models such as SmolLM2, 576 vs 384).
- `mode="latent"`: the paper's approach for grouped-query attention: cache `X V_k` and `X V_v`,
  with `W = U Σ Vᵀ` the SVD of each projection, and rematerialize `K = (X V_k) Σ Uᵀ + b`; as many
  channels as K and V.
- `cross_layer=True` (XQuant-CL): cache the quantized difference between each layer's input
  (the residual stream before the norm) and the previous layer's reconstruction, accumulate,
  and apply the layer's norm before the projections.

X and the latents are quantized per token, asymmetric, in groups of `group` channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from actlab.compress.kv.cache import PackedCache, PackedLayer, Stream
from actlab.compress.kv.codecs import TokenCodec, uniform_levels
from actlab.compress.kv.methods import check_fitted, model_shape
from actlab.compress.kv.rope import rotate
from actlab.errors import ActlabError

_SCRATCH = "xquant"


@dataclass
class Rematerializer:
    """How one layer turns cached channels back into pre-RoPE keys and values.

    `down_k`, `down_v`: what is cached, `X @ down` (None: X itself); `up_k`, `up_v`: the matrices
    that map the cached channels to the projection outputs; `k_norm`: the key norm some
    architectures apply per head before RoPE (Qwen3, Gemma-3), else None."""

    down_k: torch.Tensor | None
    down_v: torch.Tensor | None
    up_k: torch.Tensor
    up_v: torch.Tensor
    bias_k: torch.Tensor | None
    bias_v: torch.Tensor | None
    k_norm: torch.nn.Module | None
    norm: torch.nn.Module | None  # the attention norm, for XQuant-CL
    heads: int
    head_dim: int

    def cached(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tensors a cache holds for inputs x [batch, tokens, d_model] (one, or two latents)."""
        if self.down_k is None:
            return [x]
        return [x @ self.down_k.to(x.dtype), x @ self.down_v.to(x.dtype)]

    def keys_values(self, held: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection outputs K [batch, tokens, kv_heads*d_head] (before k_norm) and V from what is held."""
        hk, hv = (held[0], held[0]) if len(held) == 1 else held
        k = F.linear(hk, self.up_k.to(hk.dtype), None if self.bias_k is None else self.bias_k.to(hk.dtype))
        v = F.linear(hv, self.up_v.to(hv.dtype), None if self.bias_v is None else self.bias_v.to(hv.dtype))
        return k, v


def _projection(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not hasattr(module, "weight") or module.weight.dim() != 2 or getattr(module, "ops", None):
        raise ActlabError("XQuant rematerializes from nn.Linear key/value projections without online ops")
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


@dataclass
class XQuant:
    """XQuant and XQuant-CL; see the module docstring."""

    bits: int = 4
    mode: str = "auto"
    cross_layer: bool = False
    group: int = 64
    name: str | None = None
    layers: dict = field(default_factory=dict, repr=False, compare=False)
    fitted_on: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ActlabError(f"XQuant bits must be 1-8, got {self.bits}")
        if self.mode not in ("auto", "x", "latent"):
            raise ActlabError(f"XQuant mode must be 'auto', 'x' or 'latent', got {self.mode!r}")
        if self.cross_layer and self.mode == "latent":
            raise ActlabError("XQuant-CL caches the residual stream; it has no latent mode")

    @property
    def label(self) -> str:
        return self.name or str(self)

    def __str__(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in (("mode", self.mode), ("cross_layer", self.cross_layer), ("group", self.group))
                        if v != {"mode": "auto", "cross_layer": False, "group": 64}[k])
        return f"xquant(bits={self.bits}{extra})"

    def resolved_mode(self, lab) -> str:
        c = lab.catalog
        if self.cross_layer or self.mode == "x":
            return "x"
        if self.mode == "latent":
            return "latent"
        return "latent" if 2 * c.n_kv_heads * c.head_dim < c.d_model else "x"

    # ------------------------------------------------------------------ set-up
    def calibrate(self, lab, corpus=None, samples: int = 0, seq_len: int = 0, progress: bool = True) -> "XQuant":
        """Build the per-layer rematerializers (SVD of the projections for the latent mode);
        XQuant needs no calibration data, the arguments are accepted for a uniform interface."""
        a = lab.adapter
        if a.qkv_layout != "separate":
            raise ActlabError(f"XQuant needs separate k_proj/v_proj; {lab.name} fuses them ({a.qkv_layout})")
        mode, c = self.resolved_mode(lab), lab.catalog
        self.fitted_on = model_shape(lab)
        self.layers = {}
        for i in range(c.n_layers):
            block = lab.model.get_submodule(f"{a.layers}.{i}")
            wk, bk = _projection(block.get_submodule(a.k_proj))
            wv, bv = _projection(block.get_submodule(a.v_proj))
            attn = block.get_submodule(a.attn)
            down_k = down_v = None
            up_k, up_v = wk, wv
            if mode == "latent":
                (down_k, up_k), (down_v, up_v) = _svd_split(wk), _svd_split(wv)
            self.layers[i] = Rematerializer(down_k, down_v, up_k, up_v, bk, bv, getattr(attn, "k_norm", None),
                                            block.get_submodule(a.attn_norm) if self.cross_layer else None,
                                            c.n_kv_heads, c.head_dim)
        return self

    def codec(self, width: int) -> TokenCodec:
        """The per-token codec of a cached tensor `width` channels wide (groups of `group`, at most `width`)."""
        group = min(self.group, width)
        if width % group:
            raise ActlabError(f"XQuant group {self.group} does not divide the {width} cached channels")
        return TokenCodec(self.bits, group, uniform_levels(self.bits))

    def check(self, lab) -> None:
        check_fitted(self, lab)

    # ------------------------------------------------------------------ fake quantization
    def edits(self, lab) -> dict:
        """Teacher-forced XQuant: the projections' outputs at `attn.k`/`attn.v` are recomputed from
        the quantized X (or latents; XQuant-CL: from the normed accumulated deltas)."""
        self.check(lab)
        def fq(t):
            codec = self.codec(t.shape[-1])
            return codec.decode(codec.encode(t))

        out = {}
        for i, r in self.layers.items():
            if self.cross_layer:
                out[f"blocks.{i}.resid_pre"] = self._stash_delta(i, r, fq)
            else:
                out[f"blocks.{i}.attn.in"] = self._stash(i, r, fq)
            out[f"blocks.{i}.attn.k"] = self._rebuild(i, 0)
            out[f"blocks.{i}.attn.v"] = self._rebuild(i, 1)
        return out

    @staticmethod
    def _stash(i, r, fq):
        def edit(x, ctx):
            ctx.state.scratch[(_SCRATCH, i)] = r.keys_values([fq(h) for h in r.cached(x)])
            return x
        return edit

    @staticmethod
    def _stash_delta(i, r, fq):
        def edit(x, ctx):
            previous = ctx.state.scratch.get((_SCRATCH, "accum", i - 1), 0.0)
            accum = previous + fq(x.float() - previous)
            ctx.state.scratch[(_SCRATCH, "accum", i)] = accum
            ctx.state.scratch[(_SCRATCH, i)] = r.keys_values([r.norm(accum.to(x.dtype))])
            return x
        return edit

    @staticmethod
    def _rebuild(i, which):
        def edit(x, ctx):
            return ctx.state.scratch[(_SCRATCH, i)][which].to(x.dtype).view_as(x)
        return edit

    # ------------------------------------------------------------------ packed cache
    def cache(self, lab) -> PackedCache:
        self.check(lab)
        mode = self.resolved_mode(lab)
        shared = {}  # XQuant-CL: the previous layer's accumulation, rebuilt on every step
        c = lab.catalog
        widths = [c.d_model] if mode == "x" else [c.n_kv_heads * c.head_dim] * 2
        layers = [XLayer(i, self.layers[i], [self.codec(w) for w in widths], self.bits, self.cross_layer, shared)
                  for i in range(c.n_layers)]
        return PackedCache(lab, layers, self.label, capture=_capture_inputs(self.cross_layer))


def _svd_split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [d_in, r], up [d_out, r]) with w = up @ downᵀ: down = V, up = U Σ."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return vh.T.float().contiguous(), (u * s).float().contiguous()


def _capture_inputs(cross_layer: bool):
    """Pre-hooks handing each XLayer its new inputs: the attention input X, or (XQuant-CL) the block input."""

    def install(lab, i, layer):
        a = lab.adapter
        path = f"{a.layers}.{i}" if cross_layer else f"{a.layers}.{i}.{a.attn}"

        def hook(module, args, kwargs):
            layer.pending = args[0] if args else kwargs["hidden_states"]

        return [lab.model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True)]

    return install


class XLayer(PackedLayer):
    """One layer of an XQuant cache: streams of X (or of the K/V latents, or of XQuant-CL deltas)."""

    def __init__(self, index: int, remat: Rematerializer, codecs: list, bits: int, cross_layer: bool, shared: dict):
        super().__init__()
        self.index, self.remat, self.cross_layer, self.shared = index, remat, cross_layer, shared
        self.held = [Stream(codec, bits) for codec in codecs]
        self.pending: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        x, t = self.pending.float(), key_states.shape[2]
        r = self.remat
        if self.cross_layer:  # layers run in order within a step: layer i reads layer i-1's accumulation
            previous = self.shared["accum"] if self.index else None
            delta = x if previous is None else x - previous[:, -t:]
            accum = self.held[0].append(delta)
            if previous is not None:
                accum = accum + previous
            self.shared["accum"] = accum
            held = [r.norm(accum.to(self.dtype)).float()]
        else:
            held = [s.append(h) for s, h in zip(self.held, r.cached(x))]
        self.length += t
        k, v = r.keys_values(held)
        b = k.shape[0]
        k = k.view(b, self.length, r.heads, r.head_dim)
        if r.k_norm is not None:
            k = r.k_norm(k.to(self.dtype)).float()
        k = k.transpose(1, 2)
        if self.rope is not None:
            k = rotate(k, *self.table())
        v = v.view(b, self.length, r.heads, -1).transpose(1, 2)
        return k.to(self.dtype), v.to(self.dtype)

    def streams(self) -> list[Stream]:
        return self.held
