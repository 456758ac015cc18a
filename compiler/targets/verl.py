"""The verl export target: the policy stage as overrides of verl's `main_ppo` Hydra config.

verl's defaults differ from ours where it matters most: its PPO puts no KL in
the reward at all (`algorithm.use_kl_in_reward: false`), its GAE lambda is
1.0 (ours 0.95), it applies dual-clip PPO, weight decay 0.01 and logs to
W&B. A hand translation that forgets one of them trains a different policy
without any error. So every setting of the policy stage (and `seed`,
`compute`) goes through one rule here that says which verl keys it becomes
and whether the mapping is exact, differs in a stated way, or is refused:
a refused setting is an error unless the spec acknowledges it under
`export.verl.acknowledge` with a reason. A setting without a rule (one added
to the schema after this table) is refused the same way, never dropped.

Every verl key the export sets is listed with verl's own default
(`VERL_DEFAULTS`, checked against the installed verl by
tests/export/test_verl_compose.py), so MAPPING.md can show each default we
override on purpose. Paths in the overrides carry the placeholder
`{job_dir}`, which the launch scripts replace with the job folder's absolute
path, so the job can be moved or put on a shared filesystem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rlhfspec.compiler.diagnostics import Diagnostic, make
from rlhfspec.compiler.targets.verl_rules import JOB_DIR, Row, no_rule, ppo_block, rule_for

#: the verl release the composition test checked these keys and defaults against
VERL_VERSION = "0.9.1"
#: the releases the export is meant for (the launch scripts refuse others)
SUPPORTED_VERL = ">=0.9.1,<0.10"
EXPORT_FORMAT = "rlhfspec.verl_export/1"

Locate = Callable[[str], tuple[int, int]]

# verl 0.9.1's defaults (verl/trainer/config/_generated_ppo_trainer.yaml) for every key we set
VERL_DEFAULTS: dict[str, Any] = {
    "algorithm.adv_estimator": "gae",
    "algorithm.gamma": 1.0,
    "algorithm.lam": 1.0,
    "algorithm.use_kl_in_reward": False,
    "algorithm.kl_penalty": "kl",
    "algorithm.kl_ctrl.type": "fixed",
    "algorithm.kl_ctrl.kl_coef": 0.001,
    "algorithm.kl_ctrl.horizon": 10000,
    "algorithm.kl_ctrl.target_kl": 0.1,
    "actor_rollout_ref.model.path": "~/models/deepseek-llm-7b-chat",
    "actor_rollout_ref.model.trust_remote_code": False,
    "actor_rollout_ref.actor.use_kl_loss": False,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": None,
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.clip_ratio_low": 0.2,
    "actor_rollout_ref.actor.clip_ratio_high": 0.2,
    "actor_rollout_ref.actor.clip_ratio_c": 3.0,
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    "actor_rollout_ref.actor.entropy_coeff": 0,
    "actor_rollout_ref.actor.grad_clip": 1.0,
    "actor_rollout_ref.actor.optim.lr": 1.0e-06,
    "actor_rollout_ref.actor.optim.weight_decay": 0.01,
    "actor_rollout_ref.actor.optim.clip_grad": 1.0,
    "actor_rollout_ref.actor.data_loader_seed": 42,
    "actor_rollout_ref.actor.checkpoint.save_contents": ["model", "optimizer", "extra"],
    "actor_rollout_ref.actor.fsdp_config.dtype": "bfloat16",
    "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": None,
    "actor_rollout_ref.rollout.name": "???",
    "actor_rollout_ref.rollout.n": 1,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.rollout.top_p": 1,
    "actor_rollout_ref.rollout.do_sample": True,
    "actor_rollout_ref.rollout.seed": 42,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": None,
    "critic.model.path": "~/models/deepseek-llm-7b-chat",
    "critic.model.trust_remote_code": False,
    "critic.optim.lr": 1.0e-05,
    "critic.optim.weight_decay": 0.01,
    "critic.optim.clip_grad": 1.0,
    "critic.grad_clip": 1.0,
    "critic.cliprange_value": 0.5,
    "critic.ppo_micro_batch_size_per_gpu": None,
    "critic.data_loader_seed": 42,
    "critic.checkpoint.save_contents": ["model", "optimizer", "extra"],
    "data.train_files": "~/data/rlhf/gsm8k/train.parquet",
    "data.val_files": "~/data/rlhf/gsm8k/test.parquet",
    "data.prompt_key": "prompt",
    "data.max_prompt_length": 512,
    "data.max_response_length": 512,
    "data.train_batch_size": 1024,
    "data.shuffle": True,
    "data.seed": None,
    "data.truncation": "error",
    "data.filter_overlong_prompts": False,
    "data.return_raw_chat": True,
    "data.trust_remote_code": False,
    "reward.reward_model.enable": False,
    "reward.reward_model.model_path": None,
    "reward.reward_model.nnodes": 0,
    "reward.reward_model.rollout.name": "???",
    "reward.reward_model.rollout.tensor_model_parallel_size": 2,
    "reward.reward_model.rollout.prompt_length": 2048,
    "reward.reward_model.rollout.response_length": 2048,
    "trainer.total_epochs": 30,
    "trainer.total_training_steps": None,
    "trainer.project_name": "verl_examples",
    "trainer.experiment_name": "gsm8k",
    "trainer.logger": ["console", "wandb"],
    "trainer.nnodes": 1,
    "trainer.n_gpus_per_node": 8,
    "trainer.save_freq": -1,
    "trainer.test_freq": -1,
    "trainer.val_before_train": True,
    "trainer.default_local_dir": "checkpoints/verl_examples/gsm8k",
    "trainer.device": "cuda",
    "actor_rollout_ref.actor.strategy": "fsdp",
    "critic.strategy": "fsdp",
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    "critic.fsdp.param_offload": False,
    "critic.fsdp.optimizer_offload": False,
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "critic.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.model.lora_rank": 0,
    "actor_rollout_ref.model.lora_alpha": 16,
    "actor_rollout_ref.model.target_modules": "all-linear",
}


@dataclass
class JobFacts:
    """What the runtime learned while preparing the job's data and models."""

    train_prompts: int
    val_prompts: int
    max_prompt_tokens: int
    start: str  # what the policy starts from, for MAPPING.md
    reward_model_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # job-relative path -> sha256


@dataclass
class Check:
    """The mapping of one plan: rows for every setting, and the problems found."""

    rows: list[Row]
    diagnostics: list[Diagnostic]
    settings: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def counts(self) -> dict[str, int]:
        out = {"exact": 0, "difference": 0, "refused": 0, "unused": 0}
        for row in self.rows:
            out[row.status] += 1
        return out


# ---------------------------------------------------------------------------------------------
# Reading the plan


def spec_settings(plan: dict[str, Any]) -> dict[str, Any]:
    """The resolved settings the export reads: seed, policy, compute and export.

    From the policy stage's own plan entry when it carries them, else from the resolved spec.
    """
    resolved: dict[str, Any] = dict(plan["resolved"])
    for stage in plan.get("stages", []):
        if stage.get("name") == "policy" and isinstance(stage.get("settings"), dict):
            resolved.update(stage["settings"])
    return resolved


def leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Every setting under `prefix` as (dotted path, value); lists and scalars are leaves."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from leaves(value[key], f"{prefix}.{key}")
    else:
        yield prefix, value


def mapped_settings(settings: dict[str, Any], plan: dict[str, Any]) -> list[tuple[str, Any]]:
    """The settings the table must account for: every setting the policy stage's plan entry
    reads (seed, policy, compute, and what decides its prompts), and at least seed, policy and
    compute."""
    sections: dict[str, Any] = {"seed": settings["seed"]}
    for section in ("policy", "compute"):
        sections[section] = settings.get(section, {})
    for stage in plan.get("stages", []):
        if stage.get("name") == "policy" and isinstance(stage.get("settings"), dict):
            sections = {**stage["settings"], **sections}
    out: list[tuple[str, Any]] = []
    for key in (
        "seed",
        "policy",
        "compute",
        *sorted(set(sections) - {"seed", "policy", "compute"}),
    ):
        out.extend(leaves(sections[key], key))
    return out


# ---------------------------------------------------------------------------------------------
# Checking a plan


def check(plan: dict[str, Any], locate: Locate, file: str) -> Check:
    """Map every setting; refusals without acknowledgement and stale acknowledgements are
    errors located at the setting in the spec."""
    settings = spec_settings(plan)
    acks: dict[str, str] = dict(settings["export"]["verl"]["acknowledge"])
    rows: list[Row] = []
    diags: list[Diagnostic] = []
    for setting, value in mapped_settings(settings, plan):
        func = rule_for(setting) or no_rule
        row = func(setting, value, settings)
        reason = acks.pop(setting, None)
        line, col = locate(setting)
        if row.status == "refused":
            if reason is not None and row.acknowledgeable:
                row.acknowledged = reason
            else:
                hint = (
                    f"add `{setting}: <why this is acceptable>` under export.verl.acknowledge"
                    if row.acknowledgeable
                    else "run this stage with `rlhfspec run` instead"
                )
                code = "X001" if row.acknowledgeable else "X003"
                diags.append(
                    make(
                        code,
                        f"{setting} = {_show(value)} cannot be exported to verl: {row.note}",
                        file=file,
                        line=line,
                        col=col,
                        path=setting,
                        hint=hint,
                    )
                )
        elif reason is not None:
            diags.append(
                make(
                    "X002",
                    f"export.verl.acknowledge lists {setting}, but it maps to verl "
                    f"({row.status}): nothing to acknowledge",
                    file=file,
                    line=line,
                    col=col,
                    path=f"export.verl.acknowledge.{setting}",
                    hint="remove the entry",
                )
            )
        rows.append(row)
    for setting in sorted(acks):
        line, col = locate(f"export.verl.acknowledge.{setting}")
        diags.append(
            make(
                "X002",
                f"export.verl.acknowledge lists {setting}, which is not a setting of the spec",
                file=file,
                line=line,
                col=col,
                path=f"export.verl.acknowledge.{setting}",
                hint="remove the entry or fix its name",
            )
        )
    return Check(rows, diags, settings)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------
# The job: overrides, MAPPING.md, launch scripts, manifest


def job_keys(result: Check, facts: JobFacts) -> dict[str, tuple[Any, str]]:
    """Every verl key the job sets, with the reason; spec rows first, then the job's own."""
    s = result.settings
    keys: dict[str, tuple[Any, str]] = {}
    for row in result.rows:
        if row.status in ("exact", "difference") or row.acknowledged is not None:
            for key, value in row.keys.items():
                keys[key] = (value, row.setting)
    ppo = ppo_block(s)
    engine = s["export"]["verl"]["rollout_engine"]
    updates = int(ppo["total_episodes"]) // int(ppo["rollout_batch_size"])
    per_epoch = max(1, facts.train_prompts // int(ppo["rollout_batch_size"]))
    epochs = -(-updates // per_epoch)
    response = int(ppo["max_new_tokens"])
    prompt = facts.max_prompt_tokens
    own: dict[str, tuple[Any, str]] = {
        "actor_rollout_ref.actor.use_kl_loss": (False, "the KL is in the reward, not the loss"),
        "actor_rollout_ref.actor.clip_ratio_c": (
            1.0e9,
            "turns off dual-clip PPO, which ours does not have (verl asserts > 1)",
        ),
        "actor_rollout_ref.actor.loss_agg_mode": ("token-mean", "per-token mean, as ours"),
        "actor_rollout_ref.actor.entropy_coeff": (0, "no entropy bonus, as ours"),
        "actor_rollout_ref.actor.optim.weight_decay": (0.0, "AdamW without decay, as ours"),
        "critic.optim.weight_decay": (0.0, "AdamW without decay, as ours"),
        "actor_rollout_ref.actor.checkpoint.save_contents": (
            ["model", "optimizer", "extra", "hf_model"],
            "also save each checkpoint in Hugging Face layout, which rlhfspec imports",
        ),
        "actor_rollout_ref.rollout.name": (engine, "export.verl.rollout_engine"),
        "actor_rollout_ref.rollout.do_sample": (True, "sampled rollouts"),
        "actor_rollout_ref.rollout.top_k": (-1, "plain softmax(logits/T) sampling, as ours"),
        "actor_rollout_ref.rollout.top_p": (1.0, "plain softmax(logits/T) sampling, as ours"),
        "actor_rollout_ref.rollout.tensor_model_parallel_size": (
            1,
            "fits any GPU count; raise it for models that need it (append the override)",
        ),
        "critic.model.path": (
            f"{JOB_DIR}/reward_model",
            "the value model starts as a copy of the reward model, as ours",
        ),
        "reward.reward_model.enable": (True, "score responses with the run's reward model"),
        "reward.reward_model.model_path": (
            f"{JOB_DIR}/reward_model",
            f"the run's gated reward model (sha256 {facts.reward_model_sha256[:12]})",
        ),
        "reward.reward_model.rollout.name": (engine, "export.verl.rollout_engine"),
        "reward.reward_model.rollout.tensor_model_parallel_size": (1, "as the policy rollout"),
        "reward.reward_model.rollout.prompt_length": (prompt + response, "prompt + response"),
        "reward.reward_model.rollout.response_length": (1, "the reward model only scores"),
        "data.train_files": (f"{JOB_DIR}/data/train.parquet", "training prompts"),
        "data.val_files": (f"{JOB_DIR}/data/val.parquet", "the validation set (not trained on)"),
        "data.prompt_key": ("prompt", "chat messages"),
        "data.max_prompt_length": (prompt, "the longest training prompt, in tokens"),
        "data.truncation": ("error", "never cut a prompt silently"),
        "data.filter_overlong_prompts": (False, "no prompt is dropped"),
        "data.return_raw_chat": (True, "the reward model reads the chat"),
        "data.shuffle": (True, "prompts in a seeded shuffled order, as ours"),
        "trainer.total_epochs": (
            epochs,
            f"enough passes over {facts.train_prompts} prompts for {updates} updates",
        ),
        "trainer.project_name": (str(s["name"]), "the spec's name, as our tracking's default"),
        "trainer.experiment_name": (str(s["name"]), "the spec's name"),
        "trainer.logger": (["console"], "no W&B unless you add it"),
        "trainer.val_before_train": (False, "rlhfspec evaluates the checkpoints"),
        "trainer.test_freq": (-1, "rlhfspec evaluates the checkpoints"),
        "trainer.default_local_dir": (f"{JOB_DIR}/checkpoints", "what rlhfspec imports"),
    }
    for key, value in own.items():
        keys.setdefault(key, value)
    return keys


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text or "inf" in text) else text + ".0"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./{}:+-]+", text) and text not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(keys: dict[str, tuple[Any, str]]) -> list[str]:
    return [f"{key}={hydra_value(value)}" for key, (value, _) in sorted(keys.items())]


def overrides_text(lines: list[str], plan: dict[str, Any]) -> str:
    head = [
        f"# verl {SUPPORTED_VERL} (checked with {VERL_VERSION}): overrides of "
        "verl/trainer/config/ppo_trainer.yaml for `python -m verl.trainer.main_ppo`",
        f"# exported by rlhfspec from spec {plan['spec']['name']} (plan "
        f"{plan['fingerprint'][:12]}); {{job_dir}} is this folder. Explained in MAPPING.md",
    ]
    return "\n".join(head + lines) + "\n"


MANIFEST = "rlhfspec_export.json"
EXECUTABLE = ("run_single_node.sh", "run_ray_cluster.sh")


def render(
    plan: dict[str, Any], result: Check, facts: JobFacts, run: dict[str, Any]
) -> dict[str, bytes]:
    """The job's text files (overrides, MAPPING.md, launch scripts, manifest)."""
    from rlhfspec.compiler.targets import verl_files

    return verl_files.render(plan, result, facts, run)
