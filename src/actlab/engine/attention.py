"""One attention function, registered with transformers' attention interface as "actlab".

With nothing hooked it calls the stock SDPA path unchanged (bit-identical logits). When a site
inside attention is recorded or edited (`attn.q_rot`, `attn.k_rot`, `attn.pattern`), the
engine puts a handler on the attention module and this function hands the call to it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "actlab"
HANDLER_ATTR = "_actlab_attention_handler"


def actlab_attention(module, query, key, value, attention_mask, **kwargs):
    handler = getattr(module, HANDLER_ATTR, None)
    if handler is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return handler(module, query, key, value, attention_mask, **kwargs)


def explicit_attention(query, key, value, attention_mask, scaling, softcap=None, edit_pattern=None):
    """softmax(QKᵀ·scale + mask)·V with the probabilities exposed to `edit_pattern`.

    Inputs `[batch, heads, seq, d_head]` (keys/values may have fewer heads: GQA). Returns the
    output `[batch, q_len, heads, d_head]` (the layout SDPA returns) and the probabilities.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    mask = attention_mask[..., :k_len]
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(query.dtype)  # fully masked rows: zeros
    if edit_pattern is not None:
        probs = edit_pattern(probs)
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


def register() -> str:
    """Register the "actlab" attention and its mask function (idempotent); returns the name."""
    AttentionInterface.register(IMPLEMENTATION, actlab_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION
