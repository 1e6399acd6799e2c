"""Bit packing of low-bit codes into bytes: any width from 1 to 8 bits, rows packed independently.

A row of `n` codes of `bits` bits takes `ceil(n * bits / 8)` bytes, so 3-bit codes cost 3 bits
each (eight codes in three bytes), not a nibble.
"""

from __future__ import annotations

import torch

from actlab.errors import ActlabError


def packed_bytes(n: int, bits: int) -> int:
    """Bytes that one row of `n` codes of `bits` bits takes."""
    return -(-n * bits // 8)


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ActlabError(f"codes must be 1 to 8 bits wide, got {bits}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the last axis of `codes` (uint8, each < 2**bits) into bytes: [..., n] -> [..., ceil(n*bits/8)]."""
    _check(bits)
    if bits == 8:
        return codes.to(torch.uint8)
    *lead, n = codes.shape
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1).reshape(*lead, n * bits)
    pad = packed_bytes(n, bits) * 8 - n * bits
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    weights = (1 << torch.arange(8, dtype=torch.int32, device=codes.device)).to(torch.uint8)
    return (stream.reshape(*lead, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: [..., bytes] -> [..., n] uint8 codes."""
    _check(bits)
    if bits == 8:
        return packed[..., :n]
    *lead, _ = packed.shape
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(*lead, -1)[..., : n * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32, device=packed.device)).to(torch.uint8)
    return (stream.reshape(*lead, n, bits) * weights).sum(-1, dtype=torch.uint8)
