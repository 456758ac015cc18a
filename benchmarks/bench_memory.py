"""Compile-time memory estimate against measured peak, per training step, on the CPU.

Run: python benchmarks/bench_memory.py [--batch 16 --length 192]

For builtin:tiny's shape (and a 4x wider variant), one SFT-style optimizer step (forward,
backward, AdamW) at the given micro-batch and length, measured with torch's MemTracker
(a TorchDispatchMode that accounts every tensor storage by kind: parameters, gradients,
optimizer state, activations), next to `rlhfspec.compiler.memory.stage_memory`'s estimate for
the same stage, with and without gradient checkpointing (LoRA: estimate only, since MemTracker
needs every parameter to take a gradient). The ratio estimate / measured is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(
    config: dict[str, Any], batch: int, length: int, checkpointing: bool, lora: bool
) -> int:
    """Peak bytes of tensors during one optimizer step (MemTracker)."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    if checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config["vocab_size"], (batch, length))
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        for _ in range(2):  # the second step has the optimizer state in place
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
    peak = tracker.get_tracker_snapshot("peak")
    return int(sum(v["Total"] for v in peak.values()))


def estimated(
    config: dict[str, Any], batch: int, length: int, checkpointing: bool, lora: bool
) -> int:
    from rlhfspec.compiler.memory import stage_memory

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
        spec = {"sft": {"base_model": "m", "train": {"batch_size": batch, "max_length": length}}}
        compute = {
            "device": "cpu",
            "mixed_precision": "no",
            "gradient_checkpointing": checkpointing,
            "strategy": "ddp",
            "fsdp": {"cpu_offload": False},
            "world_size": 1,
            "lora": {
                "enabled": lora,
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "target_modules": ["all-linear"],
                "quantize": "none",
            },
        }
        return int(stage_memory(spec, "sft", compute, Path(tmp))["estimate"]["total"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=192)
    args = parser.parse_args()
    from rlhfspec.common.model_shapes import TINY_CONFIG, TINY_VOCAB_SIZE

    tiny = {**TINY_CONFIG, "vocab_size": TINY_VOCAB_SIZE}
    wide = {**tiny, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4}
    print(f"micro-batch {args.batch} x {args.length} tokens, float32, CPU; MiB")
    print(
        f"{'model':<14}{'checkpointing':<15}{'lora':<6}{'estimate':>10}{'measured':>10}{'ratio':>8}"
    )
    for name, config in (("builtin:tiny", tiny), ("tiny x4 wide", wide)):
        for checkpointing, lora in ((False, False), (True, False), (False, True)):
            est = estimated(config, args.batch, args.length, checkpointing, lora)
            head = f"{name:<14}{str(checkpointing):<15}{str(lora):<6}{est / 2**20:>10.1f}"
            if lora:  # MemTracker hooks every parameter's gradient: frozen ones refuse it
                print(f"{head}{'n/a':>10}{'':>8}")
                continue
            got = measure(config, args.batch, args.length, checkpointing, lora)
            print(f"{head}{got / 2**20:>10.1f}{est / got:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
