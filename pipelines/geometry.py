"""Model geometry read from a transformers config: the one place qeval derives sizes from it."""

from __future__ import annotations

from typing import Any


def estimate_params(config: Any) -> int:
    """Parameters of a decoder-only transformer from its config (attention, gated MLP, experts, embeddings)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", None) or 4 * h
    heads = getattr(config, "num_attention_heads", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 1
    mlp = 3 * h * inter * experts
    embeddings = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return layers * (attention + mlp) + embeddings
