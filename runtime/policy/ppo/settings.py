"""PPO settings, the run's result, and the seeded random streams every process derives.

`PPOSettings` holds everything that decides a PPO run's numbers; a resumed run must match its
checkpoint on `PPOSettings.comparable`. The streams (`prompt_indices`, `minibatch_order`, the
rollout seed) are derived from (seed, update, pass, rank) with no generator state to carry, so
a resumed run draws exactly what an unbroken one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlhfspec.common.errors import RunError
from rlhfspec.compiler.schemas import default_of
from rlhfspec.runtime.policy.distributed import SINGLE, Group
from rlhfspec.runtime.train.common import threads

#: The fields of every metrics.jsonl row, in order.
METRIC_FIELDS = (
    "update",
    "episodes",
    "optimizer_steps",
    "score",
    "eos_penalty",
    "score_minus_kl",
    "kl",
    "kl_coef",
    "entropy",
    "policy_clipfrac",
    "value_clipfrac",
    "approx_kl",
    "policy_loss",
    "value_loss",
    "grad_norm",
    "explained_variance",
    "response_length",
    "eos_rate",
    "learning_rate",
    "seconds",
)

#: Settings that say where a run computes, not what: recorded, and free to change on resume.
RUNS_ON = ("threads", "cpu", "strategy", "cpu_offload")

#: Scores a batch instead of the reward model (tests, rule-based rewards). Called with the full
#: sequences ``[B, P + T]`` (left-padded prompt, then the truncated response, right-padded),
#: their attention mask, and the prompt width ``P``; response tokens are ``ids[:, P:]`` where
#: ``mask[:, P:] == 1``. Returns one float score per row, before the missing-EOS penalty.
RewardFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Settings and result


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """Everything that decides a PPO run's numbers: the spec's ``policy.kl`` and ``policy.ppo``
    blocks, the seed, the checkpoint interval and the thread count (CPU results change with it).

    ``mixed_precision`` (``compute.mixed_precision``) is autocast only: the policy and value
    model train in float32 (`rlhfspec.runtime.train.precision`).

    ``cpu=None`` means: on the CPU unless CUDA is available. It does not enter the comparison
    made on resume (`comparable`), and neither does ``threads``; both are recorded.
    """

    kl_coef: float
    # defaults are the schema's (the single source); a spec's resolved block sets them all
    kl_estimator: str = default_of("policy.kl.estimator")
    kl_mode: str = default_of("policy.kl.mode")
    kl_target: float | None = None
    kl_horizon: int = default_of("policy.kl.horizon")
    total_episodes: int = default_of("policy.ppo.total_episodes")
    rollout_batch_size: int = default_of("policy.ppo.rollout_batch_size")
    mini_batches: int = default_of("policy.ppo.mini_batches")
    ppo_epochs: int = default_of("policy.ppo.ppo_epochs")
    gradient_accumulation_steps: int = default_of("policy.ppo.gradient_accumulation_steps")
    learning_rate: float = default_of("policy.ppo.learning_rate")
    temperature: float = default_of("policy.ppo.temperature")
    max_new_tokens: int = default_of("policy.ppo.max_new_tokens")
    gamma: float = default_of("policy.ppo.gamma")
    lam: float = default_of("policy.ppo.lam")
    cliprange: float = default_of("policy.ppo.cliprange")
    cliprange_value: float = default_of("policy.ppo.cliprange_value")
    vf_coef: float = default_of("policy.ppo.vf_coef")
    whiten_rewards: bool = default_of("policy.ppo.whiten_rewards")
    whiten_advantages: bool = default_of("policy.ppo.whiten_advantages")
    missing_eos_penalty: float = default_of("policy.ppo.missing_eos_penalty")
    max_grad_norm: float = default_of("policy.ppo.max_grad_norm")
    checkpoint_every: int = default_of("policy.checkpoint_every")
    seed: int = 0
    threads: int = dataclasses.field(default_factory=threads)
    cpu: bool | None = None
    mixed_precision: str = "no"
    #: recompute activations in the backward pass (compute.gradient_checkpointing)
    gradient_checkpointing: bool = False
    #: LoRA adapters on the policy and value models (compute.lora: r, alpha, dropout,
    #: target_modules); the reference is then the policy with its adapters disabled
    lora: dict[str, Any] | None = None
    #: compute.strategy: with several processes, ``fsdp`` shards the policy and value model
    #: (`rlhfspec.runtime.policy.ppo.sharding`), ``ddp`` replicates them
    strategy: str = default_of("compute.strategy")
    #: compute.fsdp.cpu_offload: FSDP shards in host memory between uses (accelerators only)
    cpu_offload: bool = default_of("compute.fsdp.cpu_offload")

    def __post_init__(self) -> None:
        problems = []
        if self.kl_estimator not in ("k1", "k2", "k3"):
            problems.append(f"kl.estimator must be k1, k2 or k3, not {self.kl_estimator!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            problems.append(
                f"compute.mixed_precision must be no, bf16 or fp16, not {self.mixed_precision!r}"
            )
        if self.strategy not in ("ddp", "fsdp"):
            problems.append(f"compute.strategy must be ddp or fsdp, not {self.strategy!r}")
        if self.kl_mode not in ("fixed", "adaptive"):
            problems.append(f"kl.mode must be fixed or adaptive, not {self.kl_mode!r}")
        if self.kl_mode == "adaptive" and (self.kl_target is None or self.kl_target <= 0):
            problems.append("kl.mode adaptive needs a kl.target > 0")
        if self.kl_coef < 0:
            problems.append("kl.coef must be >= 0")
        if self.rollout_batch_size % self.mini_batches:
            problems.append(
                f"ppo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                f"ppo.mini_batches ({self.mini_batches})"
            )
        elif self.minibatch_size % self.gradient_accumulation_steps:
            problems.append(
                f"each minibatch ({self.minibatch_size} episodes) must split evenly into "
                f"ppo.gradient_accumulation_steps ({self.gradient_accumulation_steps}) "
                "micro-batches"
            )
        if self.total_episodes < self.rollout_batch_size:
            problems.append(
                f"ppo.total_episodes ({self.total_episodes}) is less than one rollout batch "
                f"({self.rollout_batch_size}); no update would run"
            )
        for name in ("temperature", "learning_rate", "cliprange", "cliprange_value"):
            if getattr(self, name) <= 0:
                problems.append(f"ppo.{name} must be > 0")
        if self.max_grad_norm <= 0:
            problems.append("ppo.max_grad_norm must be > 0")
        for name in ("ppo_epochs", "max_new_tokens", "checkpoint_every", "threads", "kl_horizon"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise RunError("invalid PPO settings: " + "; ".join(problems))

    @classmethod
    def from_spec(
        cls,
        policy_block: dict[str, Any],
        seed: int,
        *,
        threads: int | None = None,
        cpu: bool | None = None,
        mixed_precision: str = "no",
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        strategy: str | None = None,
        cpu_offload: bool | None = None,
    ) -> PPOSettings:
        """Settings from a spec's resolved ``policy`` block (every default written out by the
        compiler: nothing is filled in here)."""
        kl = policy_block["kl"]
        ppo = policy_block["ppo"]
        values: dict[str, Any] = {
            "kl_coef": float(kl["coef"]),
            "kl_estimator": kl["estimator"],
            "kl_mode": kl["mode"],
            "kl_target": None if kl.get("target") is None else float(kl["target"]),
            "kl_horizon": int(kl["horizon"]),
            "checkpoint_every": int(policy_block["checkpoint_every"]),
            "seed": int(seed),
            "cpu": cpu,
            "mixed_precision": mixed_precision,
            "gradient_checkpointing": gradient_checkpointing,
            "lora": lora,
        }
        for name in (
            "total_episodes",
            "rollout_batch_size",
            "mini_batches",
            "ppo_epochs",
            "gradient_accumulation_steps",
            "max_new_tokens",
        ):
            values[name] = int(ppo[name])
        for name in (
            "learning_rate",
            "temperature",
            "gamma",
            "lam",
            "cliprange",
            "cliprange_value",
            "vf_coef",
            "missing_eos_penalty",
            "max_grad_norm",
        ):
            values[name] = float(ppo[name])
        for name in ("whiten_rewards", "whiten_advantages"):
            values[name] = bool(ppo[name])
        if threads is not None:
            values["threads"] = int(threads)
        if strategy is not None:
            values["strategy"] = strategy
        if cpu_offload is not None:
            values["cpu_offload"] = bool(cpu_offload)
        return cls(**values)

    @property
    def num_updates(self) -> int:
        """Updates in the run: whole rollout batches only (``total_episodes // batch``)."""
        return self.total_episodes // self.rollout_batch_size

    @property
    def minibatch_size(self) -> int:
        return self.rollout_batch_size // self.mini_batches

    @property
    def micro_batch_size(self) -> int:
        return self.minibatch_size // self.gradient_accumulation_steps

    def per_process_batch(self, processes: int) -> int:
        """Episodes each of `processes` data-parallel processes rolls out and trains on per
        update; the global batch must split evenly down to equal micro-batches, because DDP
        averages gradients across processes and every process must step in lockstep."""
        unit = processes * self.mini_batches * self.gradient_accumulation_steps
        if processes < 1 or self.rollout_batch_size % unit:
            raise RunError(
                f"ppo.rollout_batch_size ({self.rollout_batch_size}) is the global batch and must "
                f"be a multiple of processes x ppo.mini_batches x "
                f"ppo.gradient_accumulation_steps ({processes} x {self.mini_batches} x "
                f"{self.gradient_accumulation_steps} = {unit}); change the batch or launch a "
                "different number of processes"
            )
        return self.rollout_batch_size // processes

    @property
    def steps_per_update(self) -> int:
        """Optimizer steps in one update: one per minibatch per PPO epoch, no exceptions."""
        return self.ppo_epochs * self.mini_batches

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def comparable(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint: all but where it runs
        (threads, cpu, strategy, cpu_offload: a checkpoint has one layout for every strategy,
        and they change the numbers only by floating-point reduction order)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNS_ON}


@dataclasses.dataclass
class PPOResult:
    """What a finished `train_ppo` hands back; `policy_dir` is loadable with `load_causal_lm`."""

    updates: int
    episodes: int
    optimizer_steps: int
    kl_coef: float
    final_checkpoint: Path
    policy_dir: Path
    metrics_path: Path
    metrics: list[dict[str, Any]]
    resumed_from: int | None
    #: how the trained models ran: ``single`` (one process), ``ddp`` or ``fsdp``
    strategy: str = "single"
    #: whether FSDP kept the shards in host memory (compute.fsdp.cpu_offload on an accelerator)
    cpu_offload: bool = False

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The last update's metrics row (what a stage summary reports)."""
        return self.metrics[-1] if self.metrics else {}


# ---------------------------------------------------------------------------------------------
# Seeded streams


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from its parts: independent streams per purpose, update and pass, with no
    generator state to carry, so a resumed run draws exactly what an unbroken one would."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def prompt_indices(n_prompts: int, seed: int, start: int, count: int) -> list[int]:
    """Indices of episodes ``start .. start + count - 1`` in the prompt stream.

    The stream cycles through the prompts, each pass in its own seeded shuffled order, so every
    prompt is used once per pass; ``start`` (episodes seen so far) is the whole cursor.
    """
    out: list[int] = []
    orders: dict[int, list[int]] = {}
    for episode in range(start, start + count):
        pass_index, position = divmod(episode, n_prompts)
        if pass_index not in orders:
            order = list(range(n_prompts))
            random.Random(derived_seed("ppo-prompts", seed, pass_index)).shuffle(order)
            orders[pass_index] = order
        out.append(orders[pass_index][position])
    return out


def rank_parts(group: Group) -> tuple[object, ...]:
    """Extra seed parts that give each process its own random stream; none for a single
    process, so that its seeds (and results) are exactly those of the single-process trainer."""
    return () if group.single else ("rank", group.rank)


def minibatch_order(
    batch: int, seed: int, update: int, epoch: int, group: Group = SINGLE
) -> torch.Tensor:
    """The seeded permutation of a (this process's) rollout batch for one PPO epoch."""
    generator = torch.Generator().manual_seed(
        derived_seed("ppo-minibatches", seed, update, epoch, *rank_parts(group))
    )
    return torch.randperm(batch, generator=generator)
