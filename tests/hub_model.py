"""A tiny model saved the way hub checkpoints are, for the tests of every stage.

builtin:tiny is float32 with an empty generation config and our own small chat template; real
checkpoints differ in exactly the ways that broke the runtime before: the config says
bfloat16 (transformers 5 loads it so by default), ``generation_config.json`` carries sampling
settings that ``generate`` would silently apply (repetition_penalty, min_p, top_k, top_p,
temperature), the tokenizer ships its own chat template (the assistant turn ends with EOS and
a newline, as ChatML-style templates do), and pad is a token distinct from EOS. The weights
are builtin:tiny's, cast to bfloat16; no rlhfspec manifest is left behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

#: A ChatML-like template: the assistant turn ends with EOS and a newline.
HUB_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: What generate() would apply unless told otherwise: every field moves the distribution.
HUB_GENERATION = {
    "do_sample": True,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.8,
    "min_p": 0.2,
    "repetition_penalty": 1.3,
}


def build_hub_like(
    out_dir: Path, texts: Sequence[str], *, seed: int = 0, vocab_size: int = 320
) -> Path:
    """Build builtin:tiny from `texts`, then save it as a hub checkpoint into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlhfspec.runtime.train.models import MANIFEST_NAME, build_tiny, load_tokenizer

    build_tiny(list(texts), seed=seed, out_dir=out_dir, vocab_size=vocab_size)
    tokenizer = load_tokenizer(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        **HUB_GENERATION,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.chat_template = HUB_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    (out_dir / MANIFEST_NAME).unlink()
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16", config
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return out_dir
