"""Random-initialised models of real shapes, for throughput figures where weights cannot be downloaded.

Speed depends on the shapes, not on the weight values; the embedded tokenizer's ids
(< 49,152) are valid in every vocabulary here. Generated text is noise, so a random
model never stops early: batched and one-at-a-time generation both run to the limit.
"""

from __future__ import annotations

import torch

# Qwen3 configurations as published (hidden, intermediate, layers, heads, kv heads; head_dim 128)
QWEN3 = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # small, but with Qwen3's vocabulary, where the output head dominates
    "qwen3-vocab": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
}


def random_qwen3(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A random Qwen3 model with the named shape, in eval mode, built directly on ``device``."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    if name not in QWEN3:
        raise SystemExit(f"unknown shape {name!r}; choose one of {', '.join(QWEN3)}")
    config = Qwen3Config(vocab_size=151_936, max_position_embeddings=32_768, **QWEN3[name])
    config.eos_token_id, config.bos_token_id = 2, 1
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
