"""`PackedCache`: a transformers `Cache` that holds low-bit codes, not float tensors.

Each layer keeps, per cached tensor (keys, values, or XQuant's layer inputs), a `Stream`:
float16 attention sinks, a packed body (codes packed to `bits` bits, float16 ranges, sparse
float16 outliers) and a float16 window of the newest tokens. Attention reads the dequantized
stream, prefill included, so the model sees exactly what the cache holds (transformers'
`QuantizedCache` returns full precision on its first call instead). Memory is the sum of
`nbytes` of the tensors held, read back by `memory()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from actlab.compress.kv.codecs import Encoded, Sparse, TokenGroupCodec
from actlab.compress.kv.packing import pack_codes, unpack_codes
from actlab.compress.kv.rope import rotate
from actlab.errors import ActlabError


def capture_projected_keys(lab, i: int, layer: "KVLayer") -> list:
    """For pre-RoPE keys: hand `layer` the key projection's output (a forward hook on `k_proj`)
    and the key norm to re-apply, if the attention has one. Fused q/k/v projections have no
    separate output to hook: their keys are un-rotated instead (a key norm there is an error)."""
    attn = lab.model.get_submodule(f"{lab.adapter.layers}.{i}.{lab.adapter.attn}")
    k_norm = getattr(attn, "k_norm", None)
    if not layer.pre_rope:
        return []
    if lab.adapter.qkv_layout != "separate":
        if k_norm is not None:
            raise ActlabError(f"pre-RoPE keys behind a key norm need a separate k_proj ({lab.name})")
        return []
    layer.captures, layer.k_norm = True, k_norm

    def hook(module, args, output):
        layer.projected = output

    return [lab.model.get_submodule(f"{lab.adapter.layers}.{i}.{lab.adapter.k_proj}").register_forward_hook(hook)]


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _cat(a: torch.Tensor | None, b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], dim)


class Stream:
    """One cached tensor `[batch, tokens, channels]` of one layer; see the module docstring."""

    def __init__(self, codec, bits: int, sinks: int = 0, residual: int = 0):
        self.codec, self.bits, self.sinks, self.residual = codec, bits, sinks, residual
        self.float = torch.float32 if bits == 32 else torch.float16  # what the unquantized parts are held in
        self.group = codec.tokens if isinstance(codec, TokenGroupCodec) else 1
        self.sink = self.window = self.codes = self.ranges = None
        self.outliers: Sparse | None = None
        self.channels = 0

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Add tokens `x` [batch, new, channels]; the whole stream, dequantized, as float32."""
        self.channels = x.shape[-1]
        if self.codec is None:
            self.window = _cat(self.window, x.to(self.float))
            return self.window.float()
        held = 0 if self.sink is None else self.sink.shape[1]
        if held < self.sinks:
            take = min(self.sinks - held, x.shape[1])
            self.sink, x = _cat(self.sink, x[:, :take].half()), x[:, take:]
        pending = x if self.window is None else torch.cat([self.window.float(), x.float()], 1)
        flush = max(0, pending.shape[1] - self.residual) // self.group * self.group
        if flush:
            self._encode(pending[:, :flush])
        self.window = pending[:, flush:].half()
        parts = [p.float() for p in (self.sink,) if p is not None]
        if self.codes is not None:
            parts.append(self.decode_body())
        parts.append(self.window.float())
        return torch.cat(parts, 1)

    def _encode(self, chunk: torch.Tensor) -> None:
        enc = self.codec.encode(chunk)
        self.codes = _cat(self.codes, pack_codes(enc.codes, self.bits))
        if enc.ranges is not None:
            self.ranges = _cat(self.ranges, enc.ranges)
        if enc.outliers is not None:
            self.outliers = enc.outliers if self.outliers is None else Sparse.cat([self.outliers, enc.outliers])

    def decode_body(self) -> torch.Tensor:
        codes = unpack_codes(self.codes, self.bits, self.channels)
        return self.codec.decode(Encoded(codes, self.ranges, self.outliers))

    def nbytes(self) -> dict[str, int]:
        fixed = 0
        if self.codec is not None:  # per-layer constants: calibrated ranges, the datatype (float16)
            fixed = self.codec.nbytes() if hasattr(self.codec, "nbytes") else 0
            fixed += self.codec.levels.numel() * 2 * (1 if self.codec.decoded is None else 2)
        return {
            "codes": _nbytes(self.codes),
            "ranges": _nbytes(self.ranges) + fixed,
            "outliers": 0 if self.outliers is None else self.outliers.nbytes(),
            "float16": _nbytes(self.sink) + _nbytes(self.window),
        }


class PackedLayer(CacheLayerMixin):
    """One decoder layer's cache; subclasses say what they store and how keys/values come back."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self):
        super().__init__()
        self.length = 0
        self.rope = None  # (cos, sin) of the new tokens, set by the cache's pre-hook
        self.table = None  # callable: (cos, sin) of every cached position
        self.dtype = torch.float32

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise NotImplementedError("a PackedCache is used once; make a new one with kv.cache(lab)")

    def streams(self) -> list[Stream]:
        raise NotImplementedError


class KVLayer(PackedLayer):
    """Keys and values, each a `Stream`; keys optionally held before RoPE (re-applied on read).

    Pre-RoPE keys are the key projection's output (the `attn.k` site, where fake quantization
    edits them), captured from the projection; a per-head key norm between projection and RoPE
    (Qwen3, Gemma-3) is re-applied on read. Fused q/k/v projections: the keys the model hands
    the cache are un-rotated (`rope.rotate(..., inverse=True)`) instead."""

    def __init__(self, key_codec, value_codec, bits: int, sinks: int, residual: int, pre_rope: bool):
        super().__init__()
        self.keys_stream = Stream(key_codec, bits, sinks, residual)
        self.values_stream = Stream(value_codec, bits, sinks, residual)
        self.pre_rope = pre_rope
        self.captures = False  # pre-RoPE keys come from the key projection (see capture_projected_keys)
        self.k_norm: torch.nn.Module | None = None
        self.projected: torch.Tensor | None = None  # the key projection's output for the new tokens

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, t, d = key_states.shape
        rotary = self.pre_rope and self.rope is not None
        if self.captures:
            new_keys = self.projected.reshape(b, t, h * d)
        else:
            if rotary:
                key_states = rotate(key_states, *self.rope, inverse=True)
            new_keys = key_states.transpose(1, 2).reshape(b, t, h * d)
        keys = self.keys_stream.append(new_keys)
        values = self.values_stream.append(value_states.transpose(1, 2).reshape(b, t, -1))
        self.length += t
        keys = keys.view(b, self.length, h, d)
        if self.k_norm is not None:
            keys = self.k_norm(keys.to(self.dtype)).float()
        keys = keys.transpose(1, 2)
        if rotary:
            keys = rotate(keys, *self.table())
        values = values.view(b, self.length, h, -1).transpose(1, 2)
        return keys.to(self.dtype), values.to(self.dtype)

    def streams(self) -> list[Stream]:
        return [self.keys_stream, self.values_stream]


@dataclass
class CacheMemory:
    """Bytes a cache holds, by kind, against a float16 KV cache of the same tokens."""

    method: str
    tokens: int  # cached tokens per sequence
    batch: int
    codes: int
    ranges: int
    outliers: int
    float16: int  # float parts: sinks, the newest-token window (float32 for the 32-bit cache)
    total: int
    fp16_kv: int
    rope_table: int  # cos/sin of cached positions kept to re-apply RoPE (recomputable; not in `total`)

    @property
    def bytes_per_token(self) -> float:
        return self.total / max(1, self.tokens * self.batch)

    @property
    def compression(self) -> float:
        return self.fp16_kv / max(1, self.total)

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token, "compression": self.compression}


class PackedCache(Cache):
    """A `Cache` of `PackedLayer`s for `lab`'s model. Pre-hooks on each attention module hand
    the layers what they need (the rotary cos/sin of new tokens; XQuant's layer inputs); use it
    as a context manager, or call `close()`, to remove them."""

    def __init__(self, lab, layers: list[PackedLayer], label: str, capture=None):
        super().__init__(layers=layers)
        self.label = label
        catalog = lab.catalog
        self.fp16_token_bytes = 2 * 2 * catalog.n_kv_heads * catalog.head_dim * catalog.n_layers
        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        types = getattr(lab.model.config, "layer_types", None)
        self._handles = []
        for i, layer in enumerate(layers):
            attn = lab.model.get_submodule(f"{lab.adapter.layers}.{i}.{lab.adapter.attn}")
            key = types[i] if types else "rope"
            self._handles.append(attn.register_forward_pre_hook(self._rope_hook(layer, key), with_kwargs=True))
            if capture is not None:
                self._handles += capture(lab, i, layer)

    def _rope_hook(self, layer: PackedLayer, key: str):
        def hook(module, args, kwargs):
            rope = kwargs.get("position_embeddings")
            layer.rope = rope
            if rope is None:
                return
            table = self.tables.get(key)
            if table is None or table[0].shape[1] < layer.length + rope[0].shape[1]:
                self.tables[key] = rope if table is None else tuple(torch.cat([a, b], 1) for a, b in zip(table, rope))
            layer.table = lambda: self.tables[key]

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "PackedCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def memory(self) -> CacheMemory:
        """Bytes held now, read from the tensors (codes, ranges and datatypes, outliers, float16 parts)."""
        parts = {"codes": 0, "ranges": 0, "outliers": 0, "float16": 0}
        for layer in self.layers:
            for stream in layer.streams():
                for k, v in stream.nbytes().items():
                    parts[k] += v
        first = self.layers[0]
        batch = 0
        for s in first.streams():
            for t in (s.codes, s.window, s.sink):
                if t is not None:
                    batch = t.shape[0]
        tokens = first.length
        rope = sum(_nbytes(t) for pair in self.tables.values() for t in pair)
        return CacheMemory(self.label, tokens, batch, **parts, total=sum(parts.values()),
                           fp16_kv=self.fp16_token_bytes * tokens * batch, rope_table=rope)
