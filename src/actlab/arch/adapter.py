"""Architecture adapters: where each site's module lives in a family of HF models.

One small `Adapter` per `config.model_type`, kept in a registry; `register` adds one. Paths are
dotted module names; those under a block are relative to `layers.{i}`. Look at TransformerLens'
`supported_architectures/` and pyvene's model cards for the same idea.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from actlab.errors import ActlabError, did_you_mean


@dataclass(frozen=True)
class Adapter:
    """Where the components of one model family live.

    `qkv_layout` is "separate" (q_proj/k_proj/v_proj), "concat" (one projection whose output is
    [q | k | v], as GPT-2's c_attn and Phi-3's qkv_proj) or "per_head" (GPT-NeoX: per head
    [q_h | k_h | v_h]). `attn_branch` is the module whose output the block adds to the residual
    after attention (the attention module, or Gemma-3's post-attention norm). `parallel` says
    whether attention and MLP read the same residual (then `resid_mid` does not exist).
    """

    model_type: str
    layers: str
    embed: str
    final_norm: str
    lm_head: str = "lm_head"
    attn: str = "self_attn"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    qkv_proj: str | None = None
    qkv_layout: str = "separate"
    o_proj: str = "self_attn.o_proj"
    mlp: str = "mlp"
    down_proj: str = "mlp.down_proj"
    attn_branch: str = "self_attn"
    parallel: Callable[[object], bool] = field(default=lambda config: False)


_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter, *aliases: str) -> Adapter:
    """Add an adapter for `adapter.model_type` (and any aliases); replaces an existing one."""
    for key in (adapter.model_type, *aliases):
        _REGISTRY[key] = adapter
    return adapter


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter of a HF model, by `config.model_type`."""
    model_type = model.config.model_type
    if model_type not in _REGISTRY:
        raise ActlabError(
            f"no adapter for model_type {model_type!r}{did_you_mean(model_type, _REGISTRY)}; "
            f"supported: {', '.join(sorted(_REGISTRY))}; add one with actlab.arch.register(...)"
        )
    return _REGISTRY[model_type]


def supported() -> list[str]:
    return sorted(_REGISTRY)
