"""Rotary position embedding, undone and redone, for caches that hold pre-RoPE keys (KVQuant).

transformers rotates keys before it hands them to the cache, with `k*cos + rotate_half(k)*sin`
on the first `cos.shape[-1]` channels of each head (all of them unless the rotary is partial, as
in GPT-NeoX). The inverse rotation is `k*cos - rotate_half(k)*sin`.
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """RoPE (or its inverse) of `keys` [batch, heads, tokens, d_head] with `cos`, `sin` [batch, tokens, d_rot]."""
    d = cos.shape[-1]
    cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)
    part, rest = keys[..., :d], keys[..., d:]
    turned = part * cos + (-1 if inverse else 1) * _rotate_half(part) * sin
    return torch.cat([turned, rest], -1) if rest.shape[-1] else turned
