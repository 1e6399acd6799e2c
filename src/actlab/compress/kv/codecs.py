"""Low-bit codecs for cached tensors `[batch, tokens, channels]`: what KV-cache methods differ in.

Every codec maps a value to a position `u` in [-1, 1] inside a range (lo, hi), rounds `u` to
the nearest of `2**bits` levels (uniform, or a fitted non-uniform datatype), and keeps values
outside the range as sparse full-precision outliers when asked. The codecs differ in where the
range comes from:

- `TokenCodec`: per token, over groups of `group` channels, computed online (values in KIVI and
  KVQuant; keys and values in transformers' `QuantizedCache`).
- `ChannelCodec`: per channel, calibrated offline (KVQuant's keys).
- `TokenGroupCodec`: per channel over groups of `tokens` consecutive tokens, computed online
  (KIVI's keys).

Ranges are stored as float16 (mid, half-range) pairs and applied after that rounding, so that
`decode(encode(x))` is exactly what a cache holding those bytes returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actlab.errors import ActlabError

_TINY = 1e-6


def uniform_levels(bits: int) -> torch.Tensor:
    """The `2**bits` evenly spaced levels of [-1, 1] (asymmetric min/max RTN)."""
    return torch.linspace(-1.0, 1.0, 2 ** bits)


def nearest_level(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """uint8 index of the level nearest to each `u` (levels sorted ascending)."""
    edges = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(u.float().contiguous(), edges.to(u.device)).to(torch.uint8)


@dataclass
class Sparse:
    """Outliers kept in float16, token-major so that appending tokens keeps the order:
    `values` and channel `cols` (int16) in (token, batch, channel) order, `counts` [tokens, batch]."""

    values: torch.Tensor
    cols: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_mask(cls, x: torch.Tensor, mask: torch.Tensor) -> "Sparse":
        xt, mt = x.transpose(0, 1), mask.transpose(0, 1)  # [tokens, batch, channels]
        return cls(xt[mt].half(), mt.nonzero()[:, 2].to(torch.int16), mt.sum(-1).to(torch.int16))

    def scatter(self, out: torch.Tensor) -> torch.Tensor:
        """Write the outliers into `out` [batch, tokens, channels] (in place) and return it."""
        if self.values.numel():
            b, t = out.shape[0], out.shape[1]
            rows = torch.repeat_interleave(torch.arange(t * b, device=out.device), self.counts.flatten().long())
            out[rows % b, rows // b, self.cols.long()] = self.values.to(out.dtype)
        return out

    @staticmethod
    def cat(parts: list["Sparse"]) -> "Sparse":
        return Sparse(*(torch.cat([getattr(p, f) for p in parts]) for f in ("values", "cols", "counts")))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.cols, self.counts))


@dataclass
class Encoded:
    """One chunk of tokens: uint8 `codes` [batch, tokens, channels], float16 `ranges` (mid, half)
    whose layout the codec knows, and sparse `outliers` (or None)."""

    codes: torch.Tensor
    ranges: torch.Tensor | None
    outliers: Sparse | None


def _out_levels(codec, device) -> torch.Tensor:
    return (codec.levels if codec.decoded is None else codec.decoded).to(device)


def _round(x: torch.Tensor, mid: torch.Tensor, half: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return nearest_level(((x - mid) / half).clamp(-1, 1), levels)


def _ranges(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """float16 (mid, half) with half > 0, stacked on a last axis of 2."""
    return torch.stack([(hi + lo) / 2, ((hi - lo) / 2).clamp_min(_TINY)], -1).half()


def _outlier_mask(x: torch.Tensor, fraction: float) -> torch.Tensor | None:
    """Per token, the `fraction` of channels furthest out: half from the top, half from the bottom."""
    k = round(fraction * x.shape[-1] / 2)
    if fraction <= 0:
        return None
    k = max(1, k)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask.scatter_(-1, x.topk(k, -1).indices, True)
    mask.scatter_(-1, (-x).topk(k, -1).indices, True)
    return mask


@dataclass
class TokenCodec:
    """Per-token ranges over groups of `group` channels (online); `outliers` of each token's
    channels kept sparse (KVQuant's per-vector dense-and-sparse for values)."""

    bits: int
    group: int
    levels: torch.Tensor
    outliers: float = 0.0
    decoded: torch.Tensor | None = None  # levels to decode to (Q-Norm), else `levels`

    def frame(self, x: torch.Tensor):
        """(float32 x, ranges, mid, half, outlier mask or None) of a chunk [batch, tokens, channels]."""
        b, t, c = x.shape
        if c % self.group:
            raise ActlabError(f"{c} channels do not split into groups of {self.group}")
        x = x.float()
        mask = _outlier_mask(x, self.outliers)
        dense = x if mask is None else x.masked_fill(mask, float("nan"))
        g = dense.view(b, t, c // self.group, self.group)
        ranges = _ranges(g.nan_to_num(float("inf")).amin(-1), g.nan_to_num(float("-inf")).amax(-1))
        mid, half = (r.float().repeat_interleave(self.group, -1) for r in ranges.unbind(-1))
        return x, ranges, mid, half, mask

    def encode(self, x: torch.Tensor) -> Encoded:
        x, ranges, mid, half, mask = self.frame(x)
        return Encoded(_round(x, mid, half, self.levels), ranges, None if mask is None else Sparse.from_mask(x, mask))

    def decode(self, enc: Encoded) -> torch.Tensor:
        mid, half = (r.float().repeat_interleave(self.group, -1) for r in enc.ranges.unbind(-1))
        out = _out_levels(self, enc.codes.device)[enc.codes.long()] * half + mid
        return out if enc.outliers is None else enc.outliers.scatter(out)


@dataclass
class ChannelCodec:
    """Per-channel ranges calibrated offline (`lo`, `hi` [channels]); values outside them are
    kept as sparse outliers when `sparse` (KVQuant's per-channel key thresholds), else clipped."""

    bits: int
    levels: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    sparse: bool = False
    decoded: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.ranges = _ranges(self.lo.float(), self.hi.float())
        self.mid, self.half = (r.float() for r in self.ranges.unbind(-1))

    def frame(self, x: torch.Tensor):
        x = x.float()
        mid, half = self.mid.to(x.device), self.half.to(x.device)
        mask = ((x - mid).abs() > half) if self.sparse else None
        return x, None, mid, half, mask

    def encode(self, x: torch.Tensor) -> Encoded:
        x, _, mid, half, mask = self.frame(x)
        return Encoded(_round(x, mid, half, self.levels), None, None if mask is None else Sparse.from_mask(x, mask))

    def decode(self, enc: Encoded) -> torch.Tensor:
        dev = enc.codes.device
        out = _out_levels(self, dev)[enc.codes.long()] * self.half.to(dev) + self.mid.to(dev)
        return out if enc.outliers is None else enc.outliers.scatter(out)

    def nbytes(self) -> int:
        return self.ranges.numel() * 2


@dataclass
class TokenGroupCodec:
    """Per-channel ranges over groups of `tokens` consecutive tokens, online (KIVI's keys);
    a last partial group gets its own range."""

    bits: int
    tokens: int
    levels: torch.Tensor
    decoded: torch.Tensor | None = None

    def frame(self, x: torch.Tensor):
        x = x.float()
        b, t, c = x.shape
        n = -(-t // self.tokens)
        pad = n * self.tokens - t
        padded = torch.cat([x, x[:, -1:].expand(b, pad, c)], 1) if pad else x
        g = padded.view(b, n, self.tokens, c)
        ranges = _ranges(g.amin(2), g.amax(2))  # [batch, groups, channels, 2]
        mid, half = self._expand(ranges, t)
        return x, ranges, mid, half, None

    def encode(self, x: torch.Tensor) -> Encoded:
        x, ranges, mid, half, _ = self.frame(x)
        return Encoded(_round(x, mid, half, self.levels), ranges, None)

    def _expand(self, ranges: torch.Tensor, t: int):
        return (r.float().repeat_interleave(self.tokens, 1)[:, :t] for r in ranges.unbind(-1))

    def decode(self, enc: Encoded) -> torch.Tensor:
        mid, half = self._expand(enc.ranges, enc.codes.shape[1])
        return _out_levels(self, enc.codes.device)[enc.codes.long()] * half + mid


def positions(codec, x: torch.Tensor) -> torch.Tensor:
    """Normalized positions in [-1, 1] of the non-outlier values of `x` [batch, tokens, channels]
    under `codec`'s ranges (before rounding): what a non-uniform datatype is fitted to."""
    x, _, mid, half, mask = codec.frame(x)
    u = ((x - mid) / half).clamp(-1, 1)
    return u if mask is None else u.masked_fill(mask, float("nan"))


def fit_levels(u: torch.Tensor, weights: torch.Tensor | None, bits: int, qnorm: bool = False,
               iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-uniform datatype for normalized values `u` in [-1, 1] (NaN: left out): 1-D k-means with `2**bits`
    centroids weighted by `weights` (KVQuant's sensitivity-weighted k-means, with Fisher weights),
    initialised at quantiles. Returns (levels to round to, levels to decode to): equal, except
    with `qnorm`, where the decoded levels are shifted and scaled so that the dequantized values
    keep the mean and standard deviation of `u` (KVQuant's Q-Norm)."""
    u = u.flatten().double()
    w = torch.ones_like(u) if weights is None else weights.flatten().double().clamp_min(0) + 1e-12
    keep = ~u.isnan()
    u, w = u[keep], w[keep]
    n = 2 ** bits
    levels = torch.quantile(u[: 1 << 20], torch.linspace(0, 1, n + 2, dtype=torch.float64)[1:-1])
    for _ in range(iters):
        idx = torch.bucketize(u, (levels[1:] + levels[:-1]) / 2)
        mass = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, w)
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, w * u)
        levels = torch.where(mass > 0, total / mass.clamp_min(1e-30), levels).sort().values
    out = levels
    if qnorm:
        deq = levels[torch.bucketize(u, (levels[1:] + levels[:-1]) / 2)]
        out = (levels - deq.mean()) * (u.std() / deq.std().clamp_min(1e-12)) + u.mean()
    return levels.float(), out.float()
