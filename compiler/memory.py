"""Memory per device of each training stage, estimated at compile time from model configs.

Nothing is loaded: parameter counts come from ``config.json`` (a base model given as a folder
inside the spec's folder) or from builtin:tiny's known shape; a hub id has no config offline,
so its stage gets no estimate and says why. The estimate is the usual accounting of mixed
precision training with AdamW, per device:

* weights: trained weights in float32 (autocast computes in bf16/fp16), frozen ones in the
  checkpoint's 16-bit dtype when training in mixed precision on a GPU, else float32; a LoRA
  base is frozen (4-bit NF4 with QLoRA: half a byte per linear weight), its adapters float32;
* gradients: 4 bytes per trainable parameter; optimizer: 8 (AdamW's two moments);
* FSDP (full sharding) divides the trained models' weights, gradients and optimizer state by
  the number of processes; CPU offload moves them off the device, leaving one gathered layer;
  frozen models (PPO's reference and reward model) stay whole on every device, as our PPO
  keeps them replicated. PPO's rollouts keep the sharded models gathered while sampling
  (``runtime/policy/ppo/sharding.py``, not with CPU offload): ``rollout`` is that moment's
  bytes (every model's whole weights and the optimizer's shards, no gradients; the KV cache
  is not counted), and ``total`` the larger of it and the training step's sum;
* activations of one micro-batch at the configured length: per layer the saved inputs of
  every linear, norm and the SwiGLU product (``b*s*(8h + 4i)`` values), the attention
  probabilities on CPU (the math kernel keeps ``b*heads*s*s``; fused GPU kernels do not), and
  the float32 logits of a language-model head three times (logits, log-softmax, gradient).
  Gradient checkpointing keeps one ``b*s*h`` per layer plus one layer's worth.

A LoRA stage's reference model is the base with its adapters disabled, so it is not counted
twice. The figures are estimates: the benchmark `bench_memory.py` prints them next to the
peak measured with torch's MemTracker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlhfspec.common.model_shapes import BUILTIN_TINY, tiny_config_json

GIB = 1024**3
_UNITS = {"MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30, "TB": 10**12, "TiB": 2**40}
_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Largest config.json read (a real one is a few kB).
_MAX_CONFIG_BYTES = 1 << 20


def parse_size(text: str) -> int:
    """Bytes of a size like ``80GB`` or ``24 GiB`` (the schema's pattern)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)", text.strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


# ---------------------------------------------------------------------------------------------
# Model shapes


def model_config(ref: str, spec_dir: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The config of a model reference, or None and why not."""
    if ref == BUILTIN_TINY:
        return tiny_config_json(), "builtin:tiny (vocabulary at its upper bound)"
    if spec_dir is not None:
        path = (spec_dir / ref / "config.json").resolve()
        if path.is_relative_to(spec_dir.resolve()) and path.is_file():
            if path.stat().st_size > _MAX_CONFIG_BYTES:
                return None, f"{ref}/config.json is larger than 1 MiB"
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return None, f"{ref}/config.json is not readable JSON ({exc})"
            if isinstance(config, dict):
                return config, f"{ref}/config.json"
    return None, f"no config.json for {ref!r} at compile time (give a local model folder)"


def _shape(config: dict[str, Any]) -> dict[str, int | bool]:
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    return {
        "vocab": int(text["vocab_size"]),
        "hidden": hidden,
        "inter": int(text["intermediate_size"]),
        "layers": int(text["num_hidden_layers"]),
        "heads": heads,
        "kv": int(text.get("num_key_value_heads") or heads),
        "head_dim": int(text.get("head_dim") or hidden // heads),
        "qkv_bias": text.get("model_type") == "qwen2" or bool(text.get("attention_bias")),
        "o_bias": bool(text.get("attention_bias")) and text.get("model_type") != "qwen2",
        "mlp_bias": bool(text.get("mlp_bias")),
        "tied": bool(text.get("tie_word_embeddings", False)),
    }


def _linear_shapes(shape: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear layer of one decoder block."""
    h, i = shape["hidden"], shape["inter"]
    q, kv = shape["heads"] * shape["head_dim"], shape["kv"] * shape["head_dim"]
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def layer_parameters(config: dict[str, Any]) -> int:
    """Parameters of one decoder block of a Llama/Qwen2/Mistral-style model."""
    s = _shape(config)
    linears = _linear_shapes(s)
    weights = sum(a * b for a, b in linears.values())
    bias = 0
    if s["qkv_bias"]:
        bias += sum(linears[n][1] for n in ("q_proj", "k_proj", "v_proj"))
    if s["o_bias"]:
        bias += int(s["hidden"])
    if s["mlp_bias"]:
        bias += sum(linears[n][1] for n in ("gate_proj", "up_proj", "down_proj"))
    return weights + bias + 2 * int(s["hidden"])


def parameter_count(config: dict[str, Any], head: str = "lm") -> int:
    """Parameters of the model: embeddings, blocks, final norm, and the head (`lm`: the
    vocabulary projection unless tied to the embeddings; `score`: one reward output)."""
    s = _shape(config)
    body = s["vocab"] * s["hidden"] + s["layers"] * layer_parameters(config) + s["hidden"]
    if head == "score":
        return int(body + s["hidden"])
    return int(body + (0 if s["tied"] else s["vocab"] * s["hidden"]))


def lora_parameters(config: dict[str, Any], lora: dict[str, Any]) -> int:
    """Adapter parameters: ``r * (in + out)`` for every targeted linear of every block."""
    s = _shape(config)
    targets = lora["target_modules"]
    names = _LINEAR if "all-linear" in targets else [n for n in _LINEAR if n in targets]
    per_layer = sum(
        int(lora["r"]) * (a + b) for n, (a, b) in _linear_shapes(s).items() if n in names
    )
    return int(per_layer * s["layers"])


# ---------------------------------------------------------------------------------------------
# Stages


def _base(spec: dict[str, Any], section: str) -> str:
    """The model a stage starts from (SFT's base when it starts from SFT's output)."""
    block = spec[section]
    if block.get("start_from_sft"):
        return str(spec["sft"]["base_model"])
    return str(block["base_model"])


def stage_models(spec: dict[str, Any], stage: str, lora: bool) -> list[dict[str, Any]]:
    """The models a training stage holds: role, base reference, head, trained or frozen."""
    if stage == "sft":
        return [{"role": "policy", "ref": spec["sft"]["base_model"], "head": "lm", "trained": True}]
    reward_base = _base(spec, "reward_model")
    if stage == "reward_model":
        return [{"role": "reward_model", "ref": reward_base, "head": "score", "trained": True}]
    policy_base = _base(spec, "policy")
    models = [{"role": "policy", "ref": policy_base, "head": "lm", "trained": True}]
    if spec["policy"]["method"] == "ppo":
        models.append({"role": "value", "ref": reward_base, "head": "score", "trained": True})
    if not lora:  # with LoRA the reference is the policy's base with its adapters disabled
        models.append({"role": "reference", "ref": policy_base, "head": "lm", "trained": False})
    if spec["policy"]["method"] == "ppo":
        models.append(
            {"role": "reward_model", "ref": reward_base, "head": "score", "trained": False}
        )
    return models


def _workload(spec: dict[str, Any], stage: str, world: int) -> tuple[int, int]:
    """(sequences in one micro-batch on one device, their length in tokens). The training
    stages' ``batch_size`` is the global batch: each of the `world` processes takes its share
    (a pair is two sequences)."""
    if stage == "sft":
        train = spec["sft"]["train"]
        return max(1, int(train["batch_size"]) // max(1, world)), int(train["max_length"])
    if stage == "reward_model":
        train = spec["reward_model"]["train"]
        return 2 * max(1, int(train["batch_size"]) // max(1, world)), int(train["max_length"])
    policy = spec["policy"]
    if policy["method"] == "dpo":
        train = policy["dpo"]["train"]
        return 2 * max(1, int(train["batch_size"]) // max(1, world)), int(train["max_length"])
    ppo = policy["ppo"]
    per_device = int(ppo["rollout_batch_size"]) // max(1, world)
    micro = per_device // (int(ppo["mini_batches"]) * int(ppo["gradient_accumulation_steps"]))
    # prompt + response: the reward model reads at most its own max_length
    return max(1, micro), int(spec["reward_model"]["train"]["max_length"])


def _activations(config: dict[str, Any], head: str, batch: int, seq: int, c: dict[str, Any]) -> int:
    s = _shape(config)
    width = 2 if c["mixed_precision"] != "no" and c["device"] != "cpu" else 4
    h, tokens = int(s["hidden"]), batch * seq
    per_layer = tokens * (8 * h + 4 * int(s["inter"])) * width
    if c["device"] == "cpu":  # the math attention kernel keeps the probabilities
        per_layer += 2 * batch * int(s["heads"]) * seq * seq * width
    layers = int(s["layers"])
    if c["gradient_checkpointing"]:
        body = layers * tokens * h * width + per_layer
    else:
        body = layers * per_layer
    logits = 3 * tokens * int(s["vocab"]) * 4 if head == "lm" else tokens * 4
    return int(body + tokens * h * width + logits)


def _model_bytes(
    config: dict[str, Any], model: dict[str, Any], c: dict[str, Any]
) -> dict[str, int | str | bool]:
    params = parameter_count(config, model["head"])
    lora = c["lora"]
    gpu_half = c["mixed_precision"] != "no" and c["device"] != "cpu"
    frozen_width = 2 if gpu_half else 4
    if not model["trained"]:
        return {
            "parameters": params,
            "trainable": 0,
            "weights": params * frozen_width,
            "precision": "16-bit" if gpu_half else "float32",
            "lora": False,
        }
    if not lora["enabled"]:
        return {
            "parameters": params,
            "trainable": params,
            "weights": params * 4,
            "precision": "float32",
            "lora": False,
        }
    adapters = lora_parameters(config, lora) + (
        int(_shape(config)["hidden"]) if model["head"] == "score" else 0
    )
    if lora["quantize"] == "4bit":
        linear = layer_parameters(config) * int(_shape(config)["layers"])
        base = linear // 2 + (params - linear) * 2
        precision = "nf4 base + float32 adapters"
    else:
        base, precision = (
            params * frozen_width,
            f"{'16-bit' if gpu_half else 'float32'} base + float32 adapters",
        )
    return {
        "parameters": params,
        "trainable": adapters,
        "weights": base + adapters * 4,
        "precision": precision,
        "lora": True,
    }


def stage_memory(
    spec: dict[str, Any], stage: str, compute: dict[str, Any], spec_dir: Path | None
) -> dict[str, Any]:
    """The memory plan of one training stage (see the module docstring)."""
    world = int(compute["world_size"])
    batch, seq = _workload(spec, stage, world)
    models, totals = [], {"weights": 0, "gradients": 0, "optimizer": 0, "activations": 0}
    fsdp = compute["strategy"] == "fsdp" and world > 1
    offload = fsdp and compute["fsdp"]["cpu_offload"]
    gathered = 0  # what the sharded models add when gathered whole for a PPO rollout
    for model in stage_models(spec, stage, compute["lora"]["enabled"]):
        config, source = model_config(model["ref"], spec_dir)
        if config is None:
            return {"estimate": None, "reason": f"{model['role']}: {source}"}
        sizes = _model_bytes(config, model, compute)
        weights, trainable = int(sizes["weights"]), int(sizes["trainable"])
        grads, optim = trainable * 4, trainable * 8
        sharded = fsdp and model["trained"]
        if sharded:
            gathered += weights - weights // world
            weights, grads, optim = weights // world, grads // world, optim // world
            if offload:  # the shards live in CPU memory; one layer is gathered at a time
                weights, grads, optim = layer_parameters(config) * 4, 0, 0
        totals["weights"] += weights
        totals["gradients"] += grads
        totals["optimizer"] += optim
        if model["trained"]:
            totals["activations"] += _activations(config, model["head"], batch, seq, compute)
        models.append(
            {
                "role": model["role"],
                "base": model["ref"],
                "config": source,
                "parameters": sizes["parameters"],
                "trainable_parameters": trainable,
                "precision": sizes["precision"],
                "lora": sizes["lora"],
                "sharded": sharded,
            }
        )
    training = sum(totals.values())
    rollout = None
    if gathered and not offload and stage == "policy" and spec["policy"]["method"] == "ppo":
        rollout = totals["weights"] + gathered + totals["optimizer"]
    total = max(training, rollout or 0)
    return {
        "estimate": {
            **totals,
            "training": training,
            "rollout": rollout,
            "total": total,
            "total_gib": round(total / GIB, 3),
        },
        "devices": world,
        "micro_batch": {"sequences": batch, "tokens_per_sequence": seq},
        "models": models,
    }
