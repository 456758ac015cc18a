"""Semantic checks of the training stages: reward model, policy, evaluation and compute."""

from __future__ import annotations

from typing import Any

from rlhfspec.compiler.compute import TRAINING_STAGES, stage_compute
from rlhfspec.compiler.memory import GIB, parse_size, stage_memory
from rlhfspec.compiler.schemas import JsonPath
from rlhfspec.compiler.semantic_base import (
    LOOSE_CORRELATION,
    RECOMMENDED_VALIDATION_SHARE,
    CheckerBase,
)


class TrainingChecks(CheckerBase):
    """Reward-model gates, KL and PPO feasibility, evaluation guards, compute and memory."""

    # Stage 4 ---------------------------------------------------------------
    def reward_model(self) -> None:
        gates = self.spec["reward_model"]["gates"]
        gate_path: JsonPath = ("reward_model", "gates")
        if gates["min_validation_accuracy"] <= 0.5:
            self.emit(
                "R002",
                f"min_validation_accuracy {gates['min_validation_accuracy']} is at or below "
                "chance (0.5) for pairwise preferences: the gate cannot fail",
                gate_path + ("min_validation_accuracy",),
            )
        if gates["max_length_correlation"] >= LOOSE_CORRELATION:
            self.emit(
                "R002",
                f"max_length_correlation {gates['max_length_correlation']} never trips: a reward "
                "model that mostly rewards length passes",
                gate_path + ("max_length_correlation",),
                hint="the example uses 0.3",
            )
        if gates["min_shorter_preferred_accuracy"] <= 0:
            self.emit(
                "R002",
                "min_shorter_preferred_accuracy 0 cannot fail",
                gate_path + ("min_shorter_preferred_accuracy",),
            )
        share = self.spec["reward_model"]["validation_share"]
        low, high = RECOMMENDED_VALIDATION_SHARE
        if self.spec["policy"]["method"] == "ppo" and not low <= share <= high:
            self.emit(
                "R001",
                f"reward-model validation share {share} is outside the recommended 10-15%",
                ("reward_model", "validation_share"),
            )

    # Stage 5 ---------------------------------------------------------------
    def policy(self) -> None:
        policy = self.spec["policy"]
        if policy["kl"]["mode"] == "adaptive":
            self._adaptive_kl(policy)
        else:
            self._fixed_kl(policy)
        self._start_points_and_code(policy)
        if policy["method"] == "ppo":
            self._ppo_schedule(policy)

    def _adaptive_kl(self, policy: dict[str, Any]) -> None:
        """O002/O006: an adaptive KL controller needs a target, a start and a guard above it."""
        kl = policy["kl"]
        kl_path: JsonPath = ("policy", "kl")
        if "target" not in kl:
            self.emit(
                "O002",
                "adaptive KL needs a target",
                kl_path,
                key=True,
                hint="add target: (e.g. 6.0)",
            )
        if kl["coef"] == 0:
            self.emit(
                "O002",
                "adaptive KL cannot start from coef 0: the controller only scales it",
                kl_path + ("coef",),
            )
        if policy["method"] == "dpo":
            self.emit(
                "O002",
                "DPO has no adaptive KL controller; its constraint is dpo.beta",
                kl_path + ("mode",),
            )
        guard = self.spec["evaluation"]["select"]["guards"]["max_kl"]
        if "target" in kl and guard < kl["target"]:
            self.emit(
                "O006",
                f"guard max_kl {guard} is below the KL target {kl['target']}",
                ("evaluation", "select", "guards", "max_kl"),
            )

    def _fixed_kl(self, policy: dict[str, Any]) -> None:
        """O002/O003: a fixed KL has no target, and PPO with coef 0 has no tether at all."""
        kl = policy["kl"]
        kl_path: JsonPath = ("policy", "kl")
        if "target" in kl:
            self.emit(
                "O002",
                "kl.target only applies in adaptive mode",
                kl_path + ("target",),
                hint="set mode: adaptive or remove target",
            )
        if kl["coef"] == 0 and policy["method"] == "ppo":
            self.emit(
                "O003",
                "KL coefficient 0: nothing keeps the policy near its reference",
                kl_path + ("coef",),
                hint="start with a moderate penalty such as 0.05 and adjust at checkpoints",
            )

    def _start_points_and_code(self, policy: dict[str, Any]) -> None:
        """O005/O007/O008: start_from_sft without SFT, remote code, the other method's block."""
        for section in ("policy", "reward_model"):
            if self.spec[section]["start_from_sft"] and not self.spec["sft"]["enabled"]:
                self.emit(
                    "O005",
                    f"{section}.start_from_sft is set but sft.enabled is false",
                    (section, "start_from_sft"),
                )
        for section in ("sft", "reward_model", "policy"):
            if self.spec[section].get("trust_remote_code"):
                self.emit(
                    "O007",
                    f"{section} lets the model run code shipped with it",
                    (section, "trust_remote_code"),
                )
        other = "dpo" if policy["method"] == "ppo" else "ppo"
        if other in self.raw.get("policy", {}):
            self.emit(
                "O008",
                f"policy.{other} is ignored because method is {policy['method']}",
                ("policy", other),
                key=True,
            )

    def _ppo_schedule(self, policy: dict[str, Any]) -> None:
        """O004/O001: minibatches that split the rollout, and checkpoints the run will reach."""
        ppo = policy["ppo"]
        if ppo["rollout_batch_size"] % ppo["mini_batches"]:
            self.emit(
                "O004",
                f"rollout_batch_size {ppo['rollout_batch_size']} does not split into "
                f"{ppo['mini_batches']} equal minibatches",
                ("policy", "ppo", "mini_batches"),
            )
        updates = ppo["total_episodes"] // ppo["rollout_batch_size"]
        if updates < 1:
            self.emit(
                "O001",
                f"total_episodes {ppo['total_episodes']} is less than one rollout batch "
                f"({ppo['rollout_batch_size']})",
                ("policy", "ppo", "total_episodes"),
            )
        elif policy["checkpoint_every"] > updates:
            self.emit(
                "O001",
                f"checkpoint_every {policy['checkpoint_every']} exceeds the {updates} PPO updates "
                f"({ppo['total_episodes']} episodes / {ppo['rollout_batch_size']} per update)",
                ("policy", "checkpoint_every"),
                hint=f"use at most {updates}",
            )

    # Evaluation ------------------------------------------------------------
    def evaluation(self) -> None:
        kinds = {s["kind"] for s in self.spec["prompts"]["sources"]}
        sets = self.spec["evaluation"]["prompt_sets"]
        if "adversarial" in kinds and "adversarial" not in sets:
            self.emit(
                "E003",
                "an adversarial prompt source exists but evaluation.prompt_sets leaves "
                "'adversarial' out",
                ("evaluation", "prompt_sets"),
                hint="add adversarial to prompt_sets: reward hacking shows there first",
            )
        guards = self.spec["evaluation"]["select"]["guards"]
        guard_path: JsonPath = ("evaluation", "select", "guards")
        if guards["max_length_correlation"] >= LOOSE_CORRELATION:
            self.emit(
                "E002",
                f"guard max_length_correlation {guards['max_length_correlation']} never trips",
                guard_path + ("max_length_correlation",),
                hint="set it a little above the SFT model's own length-reward correlation",
            )
        if guards["max_disqualifier_rate"] >= 1:
            self.emit(
                "E002",
                "guard max_disqualifier_rate 1 passes a checkpoint whose every reply is disqualified",
                guard_path + ("max_disqualifier_rate",),
            )
        for i, name in enumerate(sets):
            if name == "adversarial" and "adversarial" not in kinds:
                self.emit(
                    "E001",
                    "prompt set 'adversarial' needs a source of kind adversarial",
                    ("evaluation", "prompt_sets", i),
                    hint="add adversarial prompts: reward hacking shows there first",
                )
            if name == "production_holdout" and (
                "usage_logs" not in kinds
                or self.spec["prompts"]["production_holdout"]["share"] <= 0
            ):
                self.emit(
                    "E001",
                    "prompt set 'production_holdout' is empty: no usage-log prompts are held out",
                    ("evaluation", "prompt_sets", i),
                )

    # Compute -----------------------------------------------------------------
    def compute(self) -> None:
        stages = [s for s in TRAINING_STAGES if s != "sft" or self.spec["sft"]["enabled"]]
        limit = self.spec["compute"].get("memory_per_device")
        spec_dir = self.spec_path.parent if self.spec_path is not None else None
        for stage in stages:
            compute = stage_compute(self.spec, stage)
            overrides = self.spec["compute"]["stages"].get(stage, {})
            where: JsonPath = ("compute", "stages", stage) if overrides else ("compute",)
            lora = compute["lora"]
            if lora["enabled"] and lora["quantize"] == "4bit" and compute["device"] == "cpu":
                self.emit(
                    "M001",
                    f"{stage}: QLoRA (lora.quantize 4bit) needs a CUDA GPU, but compute.device is cpu",
                    where,
                    key=True,
                    hint="use quantize: none on CPU, or device: cuda",
                )
            trl_stage = stage != "policy" or self.spec["policy"]["method"] == "dpo"
            if compute["strategy"] == "fsdp" and compute["device"] == "cpu" and trl_stage:
                self.emit(
                    "M003",
                    f"{stage}: strategy fsdp on CPU runs as DDP (accelerate shards only on "
                    "accelerators: on CPU it drops its FSDP plugin, accelerate/state.py:986-1016)",
                    where,
                    key=True,
                    hint="use device: cuda for FSDP of this stage, or strategy: ddp to say what "
                    "runs (docs/scale.md, FSDP on CPU)",
                )
            if limit is None:
                continue
            memory = stage_memory(self.spec, stage, compute, spec_dir)
            estimate = memory["estimate"]
            if estimate is not None and estimate["total"] > parse_size(limit):
                parts = ", ".join(
                    f"{k} {estimate[k] / GIB:.2f}"
                    for k in ("weights", "gradients", "optimizer", "activations", "rollout")
                    if estimate[k] is not None
                )
                self.emit(
                    "M002",
                    f"{stage}: about {estimate['total_gib']:.2f} GiB per device ({parts} GiB) "
                    f"exceeds compute.memory_per_device {limit}",
                    ("compute", "memory_per_device"),
                    hint="enable LoRA, gradient checkpointing or FSDP, add processes, or lower the batch size",
                )
