"""The built-in tiny model's shape, shared by the runtime (which builds it) and the compiler
(which estimates memory from it without importing torch)."""

from __future__ import annotations

from typing import Any

BUILTIN_TINY = "builtin:tiny"

#: Upper bound of builtin:tiny's vocabulary (a small corpus trains fewer merges).
TINY_VOCAB_SIZE = 2048

#: The tiny model's shape. Small enough to train a few hundred steps on two CPU cores in
#: minutes, big enough to have every part of a real Llama block (GQA, RoPE, RMSNorm, SwiGLU).
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
}


def tiny_config_json() -> dict[str, Any]:
    """builtin:tiny's config.json as far as shapes go (vocabulary at its upper bound)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": TINY_VOCAB_SIZE,
        "dtype": "float32",
        **TINY_CONFIG,
    }
