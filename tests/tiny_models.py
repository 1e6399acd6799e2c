"""Tiny random-weight models of every supported architecture, built from configs (no download)."""

from __future__ import annotations

import torch

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt2", "gpt_neox", "opt", "phi3"]

_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**_COMMON)
    if arch == "mistral":
        return tf.MistralConfig(**_COMMON, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON)
    if arch == "qwen3":
        return tf.Qwen3Config(**_COMMON, head_dim=16)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**{**_COMMON, "num_key_value_heads": 1}, head_dim=32, sliding_window=8,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_positions=256,
                             bos_token_id=1, eos_token_id=2)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.5)
    if arch == "opt":
        return tf.OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "phi3":
        return tf.Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise KeyError(arch)


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    for p in model.parameters():  # random init can leave norms at exactly 1: perturb everything
        p.data.add_(torch.randn_like(p) * 0.02)
    return model.eval()
