"""What a PPO run trains from and with: its inputs, and the models it loads and prepares.

The policy and value model train in float32, replicated by accelerate (DDP) or sharded by
FSDP2 (`rlhfspec.runtime.policy.ppo.sharding`); the reference and the reward model are frozen
and replicated in every process. `Models` is what the trainer's loop needs of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.ppo.checkpoint import model_sha256
from rlhfspec.runtime.policy.ppo.models import PolicyAndValue, same_tokenizer
from rlhfspec.runtime.policy.ppo.settings import PPOSettings, RewardFn
from rlhfspec.runtime.policy.ppo.sharding import Sharding, write_full
from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhfspec.runtime.train.precision import autocast_dtype


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a run trains from: the three model folders, the prompts and the reward."""

    policy_dir: Path
    reference_dir: Path
    reward_model_dir: Path
    prompts: list[str]
    reward_fn: RewardFn | None
    trust_remote_code: bool

    def sources(self) -> dict[str, Any]:
        """The models by path and weights hash: a resumed run must start from the same ones."""
        fn = self.reward_fn
        return {
            "policy": str(self.policy_dir),
            "policy_sha256": model_sha256(self.policy_dir),
            "reference": str(self.reference_dir),
            "reference_sha256": model_sha256(self.reference_dir),
            "reward_model": str(self.reward_model_dir),
            "reward_model_sha256": model_sha256(self.reward_model_dir),
            "reward_fn": None if fn is None else getattr(fn, "__name__", "custom"),
        }


@dataclasses.dataclass
class Models:
    tokenizer: Any
    model: nn.Module  # what trains: the pair, DDP-wrapped by accelerate or FSDP-sharded
    pair: PolicyAndValue  # the same models, unwrapped (sharded in place under FSDP)
    optimizer: Any
    steps: Any  # backward, no_sync, clip_grad_norm_: the Accelerator, or `Sharding` (FSDP)
    reference: nn.Module
    reward_model: nn.Module | None
    reward_fn: RewardFn | None
    strategy: str  # single, ddp or fsdp: how the trained pair actually runs
    scaler: Any = None  # torch.amp.GradScaler for fp16 autocast on CUDA, else None
    sharding: Sharding | None = None


def load_models(
    inputs: Inputs,
    start: Path | None,
    settings: PPOSettings,
    accelerator: Any,
    strategy: str,
) -> Models:
    """One tokenizer for all (the reward and value models read the policy's token ids); the
    trained pair on the device, sharded (`strategy` fsdp) or prepared by accelerate, before
    its optimizer state is restored."""
    tokenizer = _shared_tokenizer(inputs)
    policy, value_model, reference = _trained_models(inputs, start, settings, tokenizer)
    reward_model = None
    if inputs.reward_fn is None:
        reward_model = load_reward_model(
            inputs.reward_model_dir, tokenizer=tokenizer, trust_remote_code=inputs.trust_remote_code
        )
    device = accelerator.device
    for frozen in (reference, reward_model):  # replicated in every process, also under FSDP
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(device)
    if settings.gradient_checkpointing:
        from rlhfspec.runtime.train.scale import enable_checkpointing

        enable_checkpointing(policy)
        enable_checkpointing(value_model)
    # dropout off, also while training (see the package docstring)
    policy.eval()
    value_model.eval()
    pair = PolicyAndValue(policy, value_model).to(device)
    models = Models(
        tokenizer=tokenizer,
        model=pair,
        pair=pair,
        optimizer=None,
        steps=accelerator,
        reference=reference,
        reward_model=reward_model,
        reward_fn=inputs.reward_fn,
        strategy=strategy,
    )
    _prepare(models, start, settings, accelerator)
    return models


def _shared_tokenizer(inputs: Inputs) -> Any:
    """The policy's tokenizer, after checking the reference and reward model share it."""
    remote = inputs.trust_remote_code
    tokenizer = load_tokenizer(inputs.policy_dir, trust_remote_code=remote)
    for other, what in (
        (inputs.reference_dir, "reference"),
        (inputs.reward_model_dir, "reward model"),
    ):
        if other != inputs.policy_dir and not same_tokenizer(
            tokenizer, load_tokenizer(other, trust_remote_code=remote)
        ):
            raise RunError(
                f"the {what} in {other} uses a different tokenizer from the policy in "
                f"{inputs.policy_dir}; PPO needs them to share one (train them from the same base)"
            )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RunError("the policy's tokenizer needs an EOS token distinct from its pad token")
    return tokenizer


def _trained_models(
    inputs: Inputs, start: Path | None, settings: PPOSettings, tokenizer: Any
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The policy and value model (from `start` when resuming), and the KL reference."""
    remote = inputs.trust_remote_code
    # the trained pair in float32 whatever the checkpoint's dtype (AdamW on bf16 weights rounds
    # most small updates away); mixed precision is autocast only. The frozen models keep theirs.
    lora = settings.lora
    # with LoRA a resumed run starts from the base weights plus the checkpoint's adapters
    resume_full = start is not None and lora is None
    policy = load_causal_lm(
        start / "policy" if resume_full and start else inputs.policy_dir,
        tokenizer=tokenizer,
        trust_remote_code=remote,
        dtype=torch.float32,
    )
    value_model = load_reward_model(
        start / "value" if resume_full and start else inputs.reward_model_dir,
        tokenizer=tokenizer,
        trust_remote_code=remote,
        dtype=torch.float32,
    )
    if lora is None:
        reference = load_causal_lm(
            inputs.reference_dir, tokenizer=tokenizer, trust_remote_code=remote
        )
        return policy, value_model, reference
    from rlhfspec.runtime.train.scale import AdaptersOff, with_lora

    if inputs.reference_dir != inputs.policy_dir:
        raise RunError(
            "with LoRA the KL reference is the policy's base with its adapters disabled; "
            "the reference must be the policy's starting model"
        )
    adapters = (None, None) if start is None else (start / "policy", start / "value")
    policy = with_lora(policy, lora, "CAUSAL_LM", adapters[0] and adapters[0] / "adapter")
    value_model = with_lora(value_model, lora, "SEQ_CLS", adapters[1] and adapters[1] / "adapter")
    return policy, value_model, AdaptersOff(policy)


def _prepare(models: Models, start: Path | None, settings: PPOSettings, accelerator: Any) -> None:
    """Shard the pair (FSDP) or let accelerate wrap it (DDP with several processes), then
    build the optimizer over the trained parameters and restore its state on resume."""
    pair = models.pair
    device = accelerator.device
    mixed = autocast_dtype(settings.mixed_precision, device)
    if models.strategy == "fsdp":
        if mixed == torch.float16:
            raise RunError(
                "PPO under FSDP takes compute.mixed_precision bf16 or no, not fp16 (its loss "
                "scaler would need every process to agree on overflows); use bf16"
            )
        from rlhfspec.runtime.policy.ppo.sharding import load_optimizer_state, shard_pair

        models.sharding = shard_pair(pair, accelerator.num_processes, device, settings.cpu_offload)
        models.steps = models.sharding
    models.optimizer = torch.optim.AdamW(
        [p for p in pair.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=0.0,
    )
    saved = None if start is None else torch.load(start / "optimizer.pt", weights_only=True)
    if models.sharding is not None:
        if saved is not None:
            load_optimizer_state(pair, models.optimizer, saved)
        return
    if saved is not None:
        models.optimizer.load_state_dict(saved)
    models.model, models.optimizer = accelerator.prepare(pair, models.optimizer)
    models.model.eval()
    models.pair = accelerator.unwrap_model(models.model)
    if mixed == torch.float16:
        models.scaler = torch.amp.GradScaler(device.type)  # fp16 gradients underflow without it


def write_sharded(
    models: Models,
    states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    inputs: Inputs,
    folder: Path,
) -> None:
    """`checkpoint.save_models` for the gathered state of a sharded pair (main process)."""
    tokenizer, remote = models.tokenizer, inputs.trust_remote_code

    def policy_base() -> nn.Module:
        return load_causal_lm(inputs.policy_dir, tokenizer=tokenizer, trust_remote_code=remote)

    def value_base() -> nn.Module:
        return load_reward_model(
            inputs.reward_model_dir, tokenizer=tokenizer, trust_remote_code=remote
        )

    write_full(models.pair.policy, states[0], folder / "policy", policy_base)
    tokenizer.save_pretrained(folder / "policy")
    write_full(models.pair.value_model, states[1], folder / "value", value_base)
