"""The compute section: per-stage settings, launch commands, memory plan and their checks."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.compute import launch_command, stage_compute
from rlhfspec.compiler.memory import GIB, parse_size, stage_memory
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema, with_defaults
from rlhfspec.compiler.validate import validate_file
from rlhfspec.compiler.yaml_loader import load_yaml_file
from tests.conftest import SPECS


def resolved(extra: str = "") -> dict:
    """The example spec with `extra` YAML appended, defaults filled in."""
    text = (SPECS / "support-assistant.yaml").read_text() + extra
    import yaml

    return with_defaults(load_schema(SPEC_SCHEMA), yaml.safe_load(text))


def codes(project: Path, extra: str) -> list[tuple[str, str]]:
    project.write_text(project.read_text() + extra)
    return [(d.code, d.message) for d in validate_file(project).diagnostics]


def test_stage_overrides_replace_only_the_keys_they_give() -> None:
    spec = resolved(
        "compute:\n  num_processes: 4\n  strategy: fsdp\n  lora: {enabled: true, r: 8}\n"
        "  stages:\n    reward_model: {strategy: ddp, lora: {r: 4}, gradient_checkpointing: true}\n"
    )
    policy = stage_compute(spec, "policy")
    reward = stage_compute(spec, "reward_model")
    assert (policy["strategy"], policy["lora"]["r"], policy["gradient_checkpointing"]) == (
        "fsdp",
        8,
        False,
    )
    assert (reward["strategy"], reward["lora"]["r"], reward["gradient_checkpointing"]) == (
        "ddp",
        4,
        True,
    )
    assert reward["lora"]["enabled"] and reward["lora"]["alpha"] == 32  # merged key by key
    assert policy["world_size"] == 4


def test_launch_commands_for_one_node_and_many() -> None:
    one = stage_compute(resolved("compute: {num_processes: 2}\n"), "sft")
    assert launch_command("sft", one) == (
        "torchrun --standalone --nproc_per_node 2 -m rlhfspec.cli.launch plan.json --stage sft --resume"
    )
    many = stage_compute(
        resolved("compute:\n  num_processes: 8\n  nodes: {count: 2, main_address: 10.0.0.1}\n"),
        "policy",
    )
    command = launch_command("policy", many)
    assert command.startswith('torchrun --nnodes 2 --nproc_per_node 8 --node_rank "${NODE_RANK:?')
    assert "--master_addr 10.0.0.1 --master_port 29500 -m rlhfspec.cli.launch" in command
    assert many["world_size"] == 16


def test_plan_carries_compute_launch_and_memory(project: Path, tmp_path: Path) -> None:
    project.write_text(project.read_text() + "compute: {num_processes: 2, strategy: fsdp}\n")
    result = compile_spec(project, tmp_path / "out")
    assert result.plan is not None
    stages = {s["name"]: s for s in json.loads(result.files["plan.json"])["stages"]}
    assert stages["prompts"]["command"] == "rlhfspec run plan.json --stage prompts"
    assert stages["evaluate"]["command"].endswith("--stage evaluate --resume")
    for name in ("reward_model", "policy"):
        assert stages[name]["compute"]["strategy"] == "fsdp"
        assert stages[name]["memory"]["estimate"]["total"] > 0
        assert "--nproc_per_node 2" in stages[name]["launch"]
    assert "memory" not in stages["evaluate"]


def test_memory_shrinks_with_lora_checkpointing_and_sharding() -> None:
    def total(extra: str, stage: str = "policy") -> int:
        spec = resolved(extra)
        estimate = stage_memory(spec, stage, stage_compute(spec, stage), None)["estimate"]
        return int(estimate["total"])

    full = total("compute: {device: cuda}\n")
    assert total("compute: {device: cuda, lora: {enabled: true}}\n") < full
    assert total("compute: {device: cuda, gradient_checkpointing: true}\n") < full
    assert total("compute: {device: cuda, num_processes: 2, strategy: fsdp}\n") < total(
        "compute: {device: cuda, num_processes: 2}\n"
    )
    spec = resolved("compute: {device: cuda, lora: {enabled: true}}\n")
    roles = [
        m["role"]
        for m in stage_memory(spec, "policy", stage_compute(spec, "policy"), None)["models"]
    ]
    assert "reference" not in roles  # the base with adapters disabled serves as reference


def test_the_micro_batch_is_each_processs_share_of_the_global_batch() -> None:
    """SFT, reward model and DPO take batch_size / N per process (TRL stages, global batch)."""
    for stage, per_pair in (("sft", 1), ("reward_model", 2), ("policy", 2)):
        micro = []
        for n in (1, 2):
            spec = resolved(f"compute: {{num_processes: {n}}}\n")
            spec["policy"]["method"] = "dpo"
            memory = stage_memory(spec, stage, stage_compute(spec, stage), None)
            micro.append(memory["micro_batch"]["sequences"])
        train = spec["policy"]["dpo"]["train"] if stage == "policy" else spec[stage]["train"]
        assert micro == [per_pair * train["batch_size"], per_pair * train["batch_size"] // 2]


def test_memory_of_a_local_model_reads_its_config(project: Path) -> None:
    folder = project.parent / "models" / "qwen"
    folder.mkdir(parents=True)
    config = {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    spec = resolved("sft: {enabled: true, base_model: models/qwen, data: x.jsonl}\n")
    memory = stage_memory(spec, "sft", stage_compute(spec, "sft"), project.parent)
    # Qwen2.5-0.5B has 494,032,768 parameters (its model card says 0.49B)
    assert memory["models"][0]["parameters"] == 494032768
    unknown = stage_memory(
        resolved("sft: {enabled: true, base_model: org/model, data: x.jsonl}\n"),
        "sft",
        stage_compute(spec, "sft"),
        project.parent,
    )
    assert unknown["estimate"] is None and "org/model" in unknown["reason"]


def test_validate_warns_when_the_estimate_exceeds_the_device(project: Path) -> None:
    found = codes(project, "compute: {memory_per_device: 10MB}\n")
    assert [c for c, _ in found].count("M002") == 3  # SFT, reward model and policy
    assert all("exceeds compute.memory_per_device 10MB" in m for c, m in found if c == "M002")
    assert parse_size("80GB") == 80 * 10**9 and parse_size("1 GiB") == GIB


def test_validate_refuses_qlora_on_cpu_and_says_fsdp_on_cpu_runs_ddp(project: Path) -> None:
    found = codes(
        project,
        "compute:\n  device: cpu\n  strategy: fsdp\n  num_processes: 2\n"
        "  stages: {policy: {lora: {enabled: true, quantize: 4bit}}}\n",
    )
    assert (
        "M001",
        "policy: QLoRA (lora.quantize 4bit) needs a CUDA GPU, but compute.device is cpu",
    ) in found
    # SFT and the reward model run on TRL: DDP on CPU; PPO shards itself, so no warning for it
    assert sorted(m.split(":")[0] for c, m in found if c == "M003") == ["reward_model", "sft"]


def test_yaml_of_the_example_spec_loads() -> None:
    assert load_yaml_file(SPECS / "support-assistant.yaml") is not None


def test_ppo_memory_counts_the_rollout_gather_under_fsdp() -> None:
    """Our PPO shards the policy and value model, keeps the frozen models whole, and gathers
    the sharded models for rollouts (runtime/policy/ppo/sharding.py): the plan says so."""
    spec = resolved("compute: {device: cuda, num_processes: 8, strategy: fsdp}\n")
    memory = stage_memory(spec, "policy", stage_compute(spec, "policy"), None)
    sharded = {m["role"]: m["sharded"] for m in memory["models"]}
    assert sharded == {"policy": True, "value": True, "reference": False, "reward_model": False}
    estimate = memory["estimate"]
    whole = sum(4 * m["parameters"] for m in memory["models"])  # float32 (mixed_precision no)
    assert estimate["rollout"] == whole + estimate["optimizer"]
    assert estimate["total"] == max(estimate["rollout"], estimate["training"])
    assert estimate["training"] == sum(
        estimate[k] for k in ("weights", "gradients", "optimizer", "activations")
    )
    # the sharded step itself: the trained models' weights are an eighth of the whole
    frozen = sum(4 * m["parameters"] for m in memory["models"] if not m["sharded"])
    trained = whole - frozen
    assert estimate["weights"] == frozen + sum(
        4 * m["parameters"] // 8 for m in memory["models"] if m["sharded"]
    )
    assert trained > 0
    offload = resolved(
        "compute: {device: cuda, num_processes: 8, strategy: fsdp, fsdp: {cpu_offload: true}}\n"
    )
    no_gather = stage_memory(offload, "policy", stage_compute(offload, "policy"), None)
    assert no_gather["estimate"]["rollout"] is None  # offload gathers one block at a time
