"""verl rules for compute (processes, precision, nodes, FSDP, LoRA, memory), the prompt and
evaluation sets, the run's name, tracking, and what builtin:tiny's tokenizer reads."""

from __future__ import annotations

from typing import Any

from rlhfspec.compiler.targets.verl_rules.base import (
    JOB_DIR,
    PREFIX_RULES,
    Row,
    _exact,
    rule,
)


@rule("compute.num_processes")
def _num_processes(setting: str, value: Any, s: dict[str, Any]) -> Row:
    nodes = int(s["export"]["verl"]["nnodes"])
    return Row(
        setting,
        value,
        "difference",
        {"trainer.n_gpus_per_node": int(value), "trainer.nnodes": nodes},
        f"GPUs per node; the verl job has export.verl.nnodes ({nodes}) x this GPUs",
    )


@rule("compute.mixed_precision")
def _mixed_precision(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "actor_rollout_ref.actor.fsdp_config.dtype": "bfloat16",
        "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
    }
    if value == "bf16":
        return _exact(setting, value, keys, "bf16 compute, fp32 master weights (FSDP)")
    return Row(
        setting,
        value,
        "refused",
        keys,
        "verl's FSDP workers compute in bf16 with fp32 master weights. If acknowledged: bf16",
    )


@rule("compute.device")
def _device(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if value in ("auto", "cuda"):
        return _exact(setting, value, {"trainer.device": "cuda"}, "verl runs on GPUs")
    return Row(
        setting,
        value,
        "refused",
        {"trainer.device": "cuda"},
        "verl needs GPUs (vLLM/SGLang rollouts). If acknowledged: the job runs on cuda",
    )


@rule("compute.nodes.count", "compute.nodes.main_address", "compute.nodes.main_port")
def _nodes(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "unused",
        {},
        "a torchrun rendezvous for `rlhfspec` launches; the verl job's nodes are "
        "export.verl.nnodes on its Ray cluster",
    )


@rule("compute.strategy")
def _strategy(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {"actor_rollout_ref.actor.strategy": "fsdp2", "critic.strategy": "fsdp2"}
    if value == "fsdp":
        return _exact(setting, value, keys, "FSDP2 full sharding of actor and critic")
    return Row(setting, value, "difference", keys, "verl's workers always shard with FSDP2")


@rule("compute.fsdp.cpu_offload")
def _cpu_offload(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        f"{section}.{kind}_offload": bool(value)
        for section in ("actor_rollout_ref.actor.fsdp_config", "critic.fsdp")
        for kind in ("param", "optimizer")
    }
    return _exact(setting, value, keys, "parameters and optimizer state offloaded to CPU")


@rule("compute.gradient_checkpointing")
def _gradient_checkpointing(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "actor_rollout_ref.model.enable_gradient_checkpointing": bool(value),
        "critic.model.enable_gradient_checkpointing": bool(value),
    }
    return _exact(setting, value, keys, "activation recomputation in actor and critic")


@rule("compute.lora.enabled", "compute.lora.r", "compute.lora.alpha", "compute.lora.dropout")
@rule("compute.lora.target_modules", "compute.lora.quantize")
def _lora(setting: str, value: Any, s: dict[str, Any]) -> Row:
    lora = s["compute"]["lora"]
    if not lora["enabled"]:
        return Row(setting, value, "unused", {}, "LoRA is off")
    if setting == "compute.lora.enabled":
        return _exact(setting, value, {"actor_rollout_ref.model.lora_rank": lora["r"]}, "LoRA on")
    if setting == "compute.lora.r":
        return _exact(setting, value, {"actor_rollout_ref.model.lora_rank": value}, "adapter rank")
    if setting == "compute.lora.alpha":
        return _exact(setting, value, {"actor_rollout_ref.model.lora_alpha": value}, "scaling")
    if setting == "compute.lora.target_modules":
        modules = "all-linear" if "all-linear" in value else list(value)
        return _exact(
            setting, value, {"actor_rollout_ref.model.target_modules": modules}, "adapted layers"
        )
    if value in (0, 0.0, "none"):
        return _exact(setting, value, {}, "as verl (no adapter dropout, no quantisation)")
    return Row(setting, value, "refused", {}, "verl's LoRA has no dropout or 4-bit base")


@rule("compute.memory_per_device")
def _memory(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(setting, value, "unused", {}, "read by validate's memory check only")


def _stage_overrides(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if setting.startswith("compute.stages.policy."):
        return Row(
            setting,
            value,
            "refused",
            {},
            "per-stage overrides are not exported: put the policy's compute settings in the "
            "compute section. If acknowledged: the section's values are exported",
        )
    return Row(setting, value, "unused", {}, "the verl job runs the policy stage only")


PREFIX_RULES["compute.stages."] = _stage_overrides


@rule("prompts.sources")
def _sources(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        [source["id"] for source in value],
        {"data.train_files": f"{JOB_DIR}/data/train.parquet"},
        "the prompts our PPO would train on: these sources minus the production holdout and "
        "the evaluation sets (by id and by text), as chat messages",
    )


@rule("prompts.focus")
def _focus(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.train_files": f"{JOB_DIR}/data/train.parquet"},
        "narrow fine-tuning: the training prompts and the validation set are drawn from inside "
        "the focus, as for our PPO; rlhfspec evaluates the outside-focus slice after the import",
    )


@rule("prompts.chat_template")
def _chat_template(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.train_files": f"{JOB_DIR}/data/train.parquet"},
        "the job's policy and reward-model tokenizers carry the run's chat template (the "
        "plain User:/Assistant: one as a template when the run used none), so verl formats "
        "prompts and scores responses as every stage of the run did",
    )


@rule("evaluation.prompt_sets", "evaluation.prompts_per_set")
def _eval_sets(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.val_files": f"{JOB_DIR}/data/val.parquet"},
        "the evaluation sets are drawn as for our PPO, kept out of the training prompts and "
        "evaluated by rlhfspec after the import; verl gets the validation set as its val data",
    )


@rule("name")
def _name(setting: str, value: Any, s: dict[str, Any]) -> Row:
    run_name = s.get("tracking", {}).get("run_name")
    if run_name:
        return Row(setting, value, "unused", {}, "tracking.run_name names the verl run")
    return _exact(setting, value, {"trainer.experiment_name": value}, "names the verl run")


@rule("tracking.backend")
def _tracking_backend(setting: str, value: Any, s: dict[str, Any]) -> Row:
    loggers = ["console"] + ([] if value == "none" else [value])
    return _exact(
        setting,
        value,
        {"trainer.logger": loggers},
        "verl's logger list; the console as well (verl's default adds W&B, ours adds nothing)",
    )


@rule("tracking.project")
def _tracking_project(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"trainer.project_name": value}, "the tracking project")


@rule("tracking.run_name")
def _tracking_run_name(setting: str, value: Any, s: dict[str, Any]) -> Row:
    name = f"{value}-policy"
    return _exact(
        setting, value, {"trainer.experiment_name": name}, "as our stages: <run_name>-<stage>"
    )


@rule("tracking.mode")
def _tracking_mode(setting: str, value: Any, s: dict[str, Any]) -> Row:
    backend = s.get("tracking", {}).get("backend", "none")
    if backend in ("none", "tensorboard"):
        return Row(setting, value, "unused", {}, f"backend {backend}: nothing is sent anywhere")
    if value == "online":
        return _exact(setting, value, {}, "verl sends to the service the environment configures")
    return Row(
        setting,
        value,
        "refused",
        {},
        f"verl has no config key for offline {backend} tracking: the job's environment decides "
        "(e.g. WANDB_MODE=offline). If acknowledged: set it in the environment yourself",
    )


def _builtin_corpus(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "unused",
        {},
        "read only to build builtin:tiny's tokenizer; the job gets the built model in model/",
    )


PREFIX_RULES["annotation."] = _builtin_corpus
PREFIX_RULES["sft."] = _builtin_corpus
