"""How activations are stored: float32, float16, bfloat16 (as raw 16-bit words) or int8 with one
float32 scale per token (symmetric absmax), half the size of float16."""

from __future__ import annotations

import numpy as np
import torch

from actlab.errors import ActlabError

CODECS = ("float32", "float16", "bfloat16", "int8")
STORAGE_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8"}


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ActlabError(f"unknown store dtype {codec!r}; use one of {', '.join(CODECS)}")
    return codec


def encode(x: torch.Tensor, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored values, per-token scales or None) for activations `[n, *shape]`."""
    x = x.detach().cpu()
    if codec == "float32":
        return x.float().numpy(), None
    if codec == "float16":
        return x.half().numpy(), None
    if codec == "bfloat16":
        return x.bfloat16().view(torch.int16).numpy().view(np.uint16), None
    flat = x.float().reshape(x.shape[0], -1)
    scale = flat.abs().amax(1).clamp(min=1e-30) / 127.0
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(x.shape).numpy(), scale.numpy()


def decode(values: np.ndarray, scales: np.ndarray | None, codec: str) -> torch.Tensor:
    """Activations as a float tensor (float32 for int8 and bfloat16 payloads, else the stored dtype)."""
    if codec == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(values).view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(np.ascontiguousarray(values))
    if codec == "int8":
        shape = (-1,) + (1,) * (t.dim() - 1)
        return t.float() * torch.from_numpy(np.ascontiguousarray(scales)).view(shape)
    return t
