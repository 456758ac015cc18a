"""The verl export's rules: one per spec setting, saying which verl keys it becomes.

Each rule returns a `Row`: the verl keys and values, and whether the mapping is
exact, differs in a stated way, is refused (an error unless the spec
acknowledges it) or is unused by the chosen method. The notes are what
MAPPING.md prints, so each states the difference or the reason in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["exact", "difference", "refused", "unused"]
JOB_DIR = "{job_dir}"


@dataclass
class Row:
    """One spec setting and what the export does with it."""

    setting: str
    value: Any
    status: Status
    keys: dict[str, Any]
    note: str
    acknowledged: str | None = None
    #: False for a refusal no acknowledgement can lift (the job would be another algorithm)
    acknowledgeable: bool = True


# ---------------------------------------------------------------------------------------------
# The rules: one per setting (or family), each returning its Row


Rule = Callable[[str, Any, dict[str, Any]], Row]
RULES: dict[str, Rule] = {}
PREFIX_RULES: dict[str, Rule] = {}


def rule(*settings: str) -> Callable[[Rule], Rule]:
    def register(func: Rule) -> Rule:
        for name in settings:
            RULES[name] = func
        return func

    return register


def _exact(setting: str, value: Any, keys: dict[str, Any], note: str) -> Row:
    return Row(setting, value, "exact", keys, note)


def ppo_block(s: dict[str, Any]) -> dict[str, Any]:
    ppo: dict[str, Any] = s["policy"].get("ppo", {})
    return ppo


def gpus(s: dict[str, Any]) -> int:
    return int(s["compute"]["num_processes"]) * int(s["export"]["verl"]["nnodes"])


@rule("seed")
def _seed(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "data.seed": value,
        "actor_rollout_ref.actor.data_loader_seed": value,
        "critic.data_loader_seed": value,
        "actor_rollout_ref.rollout.seed": value,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        "seeds verl's prompt shuffling, minibatch order and sampling; verl draws other random "
        "streams than rlhfspec, so the same seed does not reproduce a local run's samples",
    )


@rule("policy.method")
def _method(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if value == "ppo":
        return _exact(
            setting,
            value,
            {"algorithm.adv_estimator": "gae"},
            "PPO with a value model (critic) and GAE",
        )
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl's main_ppo runs PPO-family algorithms only; DPO stays on `rlhfspec run`",
        acknowledgeable=False,
    )


@rule("policy.base_model")
def _base_model(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["start_from_sft"]:
        return Row(setting, value, "unused", {}, "start_from_sft: the policy starts from SFT")
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.model.path": f"{JOB_DIR}/model"},
        "copied into the job's model/ folder (with its chat template); also the KL reference",
    )


@rule("policy.start_from_sft")
def _start_from_sft(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if not value:
        return _exact(setting, value, {}, "the policy starts from policy.base_model")
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.model.path": f"{JOB_DIR}/model"},
        "the run's SFT model (models/sft) is copied into model/; verl's reference policy is the "
        "same starting model, as ours",
    )


@rule("policy.trust_remote_code")
def _trust(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "actor_rollout_ref.model.trust_remote_code": bool(value),
        "critic.model.trust_remote_code": bool(value),
        "data.trust_remote_code": bool(value),
    }
    return _exact(setting, value, keys, "for the policy, the critic and the data's tokenizer")


@rule("policy.checkpoint_every")
def _checkpoint_every(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"trainer.save_freq": int(value)},
        "one verl step is one PPO update (a rollout batch); verl also saves the last step",
    )


@rule("policy.kl.coef")
def _kl_coef(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"algorithm.use_kl_in_reward": True, "algorithm.kl_ctrl.kl_coef": float(value)},
        "KL in the reward, per token, `reward - coef * kl` as ours (verl's default has none)",
    )


@rule("policy.kl.estimator")
def _kl_estimator(setting: str, value: Any, s: dict[str, Any]) -> Row:
    # ours puts k1 in the reward whatever the estimator (only k1 has the KL's gradient; see
    # runtime/policy/ppo/rollout.py); the estimator is what is logged, evaluated, guarded and
    # fed to the adaptive controller. verl feeds its controller the reward's own estimate.
    keys = {"algorithm.kl_penalty": "kl"}
    if value == "k1":
        return _exact(setting, value, keys, "k1 = logp - ref_logp in the reward and the controller")
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(
            setting,
            value,
            "difference",
            keys,
            f"the reward uses k1 in both (verl's kl_penalty=kl; never {value} in the reward); "
            f"verl logs k1 where rlhfspec logs {value}; rlhfspec's evaluation of the imported "
            f"checkpoints measures and guards {value}",
        )
    return Row(
        setting,
        value,
        "refused",
        keys,
        f"ours feeds the adaptive controller the {value} estimate while the reward uses k1; "
        "verl's controller sees the reward's own estimate. If acknowledged: k1 in reward and "
        "controller (kl_penalty=kl)",
    )


@rule("policy.kl.mode")
def _kl_mode(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"algorithm.kl_ctrl.type": value},
        "fixed coefficient, or the Ziegler et al. controller (error clipped to +-0.2, "
        "n_steps = rollout batch), as ours",
    )


@rule("policy.kl.target")
def _kl_target(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(setting, value, "unused", {}, "kl.mode fixed: the target is not used")
    per_token = float(value) / int(ppo_block(s)["max_new_tokens"])
    return Row(
        setting,
        value,
        "refused",
        {"algorithm.kl_ctrl.target_kl": per_token},
        "our target is the KL per response (summed over its tokens); verl's controller "
        "compares the per-token mean KL. If acknowledged, the export sets target_kl = "
        f"target / max_new_tokens = {per_token:.6g}: the per-token KL of a full-length "
        "response at the target, so shorter responses are held tighter than ours",
    )


@rule("policy.kl.horizon")
def _kl_horizon(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(setting, value, "unused", {}, "kl.mode fixed: the horizon is not used")
    return _exact(
        setting,
        value,
        {"algorithm.kl_ctrl.horizon": int(value)},
        "in episodes (responses) in both",
    )


@rule("policy.ppo.total_episodes")
def _total_episodes(setting: str, value: Any, s: dict[str, Any]) -> Row:
    steps = int(value) // int(ppo_block(s)["rollout_batch_size"])
    return _exact(
        setting,
        value,
        {"trainer.total_training_steps": steps},
        f"{steps} updates = total_episodes // rollout_batch_size (whole batches, as ours)",
    )


@rule("policy.ppo.rollout_batch_size")
def _rollout_batch(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.train_batch_size": int(value), "actor_rollout_ref.rollout.n": 1},
        "prompts per update with one response each = episodes per update",
    )


@rule("policy.ppo.mini_batches")
def _mini_batches(setting: str, value: Any, s: dict[str, Any]) -> Row:
    size = int(ppo_block(s)["rollout_batch_size"]) // int(value)
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.actor.ppo_mini_batch_size": size},
        f"{size} episodes per minibatch, one optimizer step each (the critic inherits it)",
    )


@rule("policy.ppo.ppo_epochs")
def _ppo_epochs(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.actor.ppo_epochs": int(value)},
        "passes over each rollout batch (the critic inherits it)",
    )


@rule("policy.ppo.gradient_accumulation_steps")
def _accumulation(setting: str, value: Any, s: dict[str, Any]) -> Row:
    ppo = ppo_block(s)
    minibatch = int(ppo["rollout_batch_size"]) // int(ppo["mini_batches"])
    micro = max(1, minibatch // (gpus(s) * int(value)))
    keys = {
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "critic.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        f"verl splits each minibatch over {gpus(s)} GPU(s), then into micro-batches of "
        f"{micro} per GPU: memory only, the optimizer step is still one per minibatch",
    )


@rule("policy.ppo.learning_rate")
def _lr(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {"actor_rollout_ref.actor.optim.lr": float(value), "critic.optim.lr": float(value)}
    return _exact(setting, value, keys, "AdamW for policy and value, constant, no warmup")


@rule("policy.ppo.temperature")
def _temperature(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.rollout.temperature": float(value)},
        "sampling temperature; verl's actor divides the logits by it in training too",
    )


@rule("policy.ppo.top_k")
def _top_k(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {"actor_rollout_ref.rollout.top_k": int(value) if value else -1}
    return _exact(setting, value, keys, "0 (off) is -1 in verl")


@rule("policy.ppo.top_p")
def _top_p(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"actor_rollout_ref.rollout.top_p": float(value)}, "nucleus")


@rule("policy.ppo.max_new_tokens")
def _max_new_tokens(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.max_response_length": int(value)},
        "the rollout's response length follows it",
    )


@rule("policy.ppo.gamma")
def _gamma(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"algorithm.gamma": float(value)}, "GAE discount")


@rule("policy.ppo.lam")
def _lam(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"algorithm.lam": float(value)}, "GAE lambda (verl: 1.0)")


@rule("policy.ppo.cliprange")
def _cliprange(setting: str, value: Any, s: dict[str, Any]) -> Row:
    v = float(value)
    keys = {
        "actor_rollout_ref.actor.clip_ratio": v,
        "actor_rollout_ref.actor.clip_ratio_low": v,
        "actor_rollout_ref.actor.clip_ratio_high": v,
    }
    return _exact(setting, value, keys, "symmetric ratio clip; verl's dual clip is turned off")


@rule("policy.ppo.cliprange_value")
def _cliprange_value(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting, value, {"critic.cliprange_value": float(value)}, "value clip (verl: 0.5)"
    )


@rule("policy.ppo.vf_coef")
def _vf_coef(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl trains the critic as a separate model with its own optimizer and loss, so a "
        "value-loss weight has no counterpart (under Adam a constant loss weight mostly "
        "cancels, but ours also shares one gradient-norm clip). If acknowledged: not exported",
    )


def _flag_rule(verl_does: bool, what: str) -> Rule:
    def check(setting: str, value: Any, s: dict[str, Any]) -> Row:
        if bool(value) == verl_does:
            return _exact(setting, value, {}, f"verl's GAE {what} (no key to set)")
        return Row(
            setting,
            value,
            "refused",
            {},
            f"verl's GAE {what} and has no switch for it. If acknowledged: the job runs verl's way",
        )

    return check


RULES["policy.ppo.whiten_rewards"] = _flag_rule(False, "never whitens rewards")
RULES["policy.ppo.whiten_advantages"] = _flag_rule(True, "always whitens advantages")


@rule("policy.ppo.missing_eos_penalty")
def _missing_eos(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if float(value) == 0.0:
        return _exact(setting, value, {}, "no penalty, as verl")
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl scores a response with the reward model only (EOS stripped) and has no "
        "penalty for a response cut at max_new_tokens. If acknowledged: training runs without "
        "it; rlhfspec's evaluation of the imported checkpoints still applies it and guards "
        "the EOS rate",
    )


@rule("policy.ppo.max_grad_norm")
def _max_grad_norm(setting: str, value: Any, s: dict[str, Any]) -> Row:
    v = float(value)
    keys = {
        "actor_rollout_ref.actor.grad_clip": v,
        "actor_rollout_ref.actor.optim.clip_grad": v,
        "critic.grad_clip": v,
        "critic.optim.clip_grad": v,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        "verl clips the policy's and the critic's gradients separately, each to this norm; "
        "ours clips both together",
    )


def _dpo_unused(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["method"] == "dpo":
        return Row(setting, value, "refused", {}, "DPO is not exported", acknowledgeable=False)
    return Row(setting, value, "unused", {}, "method ppo: DPO settings are not read")


PREFIX_RULES["policy.dpo."] = _dpo_unused


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


def no_rule(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "refused",
        {},
        "this version of the verl export has no mapping for it (a setting newer than the "
        "table in compiler/targets/verl.py). If acknowledged: not exported",
    )


def rule_for(setting: str) -> Rule | None:
    if setting in RULES:
        return RULES[setting]
    for prefix, func in PREFIX_RULES.items():
        if setting.startswith(prefix):
            return func
    return None
