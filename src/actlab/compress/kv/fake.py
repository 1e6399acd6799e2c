"""Fake KV quantization: quantize-dequantize edits at the key and value sites (teacher forced)."""

from __future__ import annotations

import torch


def fake_quant(codec, sinks: int = 0, bits: int = 16):
    """An edit that replaces each token's vector [batch, q, *shape] by what a packed cache with
    `codec` would return for it; `codec=None` rounds to float16 (`bits=32`: leaves it alone);
    tokens at positions < `sinks` are kept in float16."""

    def edit(x: torch.Tensor, ctx) -> torch.Tensor:
        if codec is None and bits == 32:
            return x
        b, t = x.shape[:2]
        flat = x.reshape(b, t, -1)
        half = flat.half().to(x.dtype)
        if codec is None:
            return half.view_as(x)
        y = codec.decode(codec.encode(flat)).to(x.dtype)
        if sinks:
            pos = ctx.positions
            y = torch.where(((pos >= 0) & (pos < sinks))[..., None], half, y)
        return y.view_as(x)

    return edit
