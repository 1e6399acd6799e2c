"""The built-in adapters: Llama-like, Gemma-3, GPT-2, GPT-NeoX, OPT and Phi-3."""

from __future__ import annotations

from actlab.arch.adapter import Adapter, register

LLAMA = register(Adapter("llama", layers="model.layers", embed="model.embed_tokens", final_norm="model.norm"),
                 "mistral", "qwen2", "qwen3")

GEMMA3 = register(
    Adapter("gemma3_text", layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
            mlp_norm="pre_feedforward_layernorm", attn_branch="post_attention_layernorm"),
)

GPT2 = register(
    Adapter("gpt2", layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
            attn="attn", attn_norm="ln_1", mlp_norm="ln_2", qkv_proj="attn.c_attn", qkv_layout="concat",
            o_proj="attn.c_proj", down_proj="mlp.c_proj", attn_branch="attn"),
)

GPT_NEOX = register(
    Adapter("gpt_neox", layers="gpt_neox.layers", embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm", attn="attention",
            qkv_proj="attention.query_key_value", qkv_layout="per_head", o_proj="attention.dense",
            down_proj="mlp.dense_4h_to_h", attn_branch="attention",
            parallel=lambda config: bool(getattr(config, "use_parallel_residual", True))),
)

OPT = register(
    Adapter("opt", layers="model.decoder.layers", embed="model.decoder.embed_tokens",
            final_norm="model.decoder.final_layer_norm", attn_norm="self_attn_layer_norm",
            mlp_norm="final_layer_norm", o_proj="self_attn.out_proj", mlp="fc2", down_proj="fc2"),
)

PHI3 = register(
    Adapter("phi3", layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
            qkv_proj="self_attn.qkv_proj", qkv_layout="concat"),
)
