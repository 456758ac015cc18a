"""PPO for causal language models, on accelerate: rollouts, KL-shaped rewards, GAE, clipped losses.

TRL removed ``PPOTrainer``, and the version it had carried defects that bias training without
any error (several minibatches took half the optimizer steps and halved the averaged metrics;
gradient accumulation was switched off on the last batch of every pass; no adaptive KL; no
gradient clipping; numpy unseeded; with pad == eos the reward was read one token early and
EOS left the loss). This module is a small, explicit replacement; the arithmetic is in
`rlhfspec.runtime.policy.ppo_math`, tested against hand-computed values.

One PPO update (``rollout_batch_size`` episodes):

1. *Rollout.* Prompts (raw texts, formatted with `format_prompt`) are left-padded and sampled
   from the policy with ``do_sample=True`` at ``temperature`` and nothing else (``top_k=0``,
   ``top_p=1``), under a torch seed derived from (seed, update). Responses are cut after their
   first EOS; the EOS stays in the mask.
2. *Scoring.* The reward model reads the truncated sequence exactly as generated (token ids,
   not re-tokenised text) at its last real token: the EOS when there is one (that is where
   `score_texts` and the reward-model trainer read it: they append EOS), else the last
   generated token, in which case ``missing_eos_penalty`` is subtracted.
3. *Rewards.* Per-token ``-kl_coef * KL`` against the frozen reference (estimator k1/k2/k3),
   plus the score at the last real token; optionally whitened (scale only); GAE with the value
   model's estimates; advantages optionally whitened over the whole rollout batch.
4. *Optimisation.* ``ppo_epochs`` passes over the batch in a seeded order; each pass is split
   into ``mini_batches`` minibatches, each minibatch into ``gradient_accumulation_steps``
   micro-batches whose losses are scaled by ``1 / gradient_accumulation_steps``. Exactly one
   optimizer step per minibatch, always, so an update takes ``ppo_epochs * mini_batches``
   steps; gradients are clipped to ``max_grad_norm`` (policy and value together, one AdamW).
   Log-probabilities in training use the same ``logits / temperature`` as the rollout.
5. *KL coefficient.* Fixed, or the Ziegler et al. proportional controller, updated after each
   rollout with the mean per-response KL and ``n_steps = rollout_batch_size``.

The value model starts as a copy of the reward model (its score head read at every position)
and is trained; the reference and the reward model are frozen. Dropout is off in every model
(all are kept in eval mode): the PPO ratio must be exactly 1 on the first minibatch, and
dropout noise would make the old and new log-probabilities disagree.

Reproducibility: python, numpy and torch are seeded, the thread count is fixed, and every
random choice (prompt order, sampling, minibatch order) is derived from (seed, pass or update),
so a CPU run reproduces bit for bit, and a run resumed from a checkpoint ends with exactly
the weights of one that never stopped. Checkpoints (``checkpoints/update-NNNNNN``) are written
to a temporary folder and renamed, so a kill mid-save leaves no half checkpoint behind.

Several processes (``torchrun --nproc_per_node N`` or ``accelerate launch --num_processes N``):
data parallel, with `rlhfspec.runtime.policy.distributed` doing the bookkeeping. ``rollout_batch_size``
stays the *global* batch: each process takes a contiguous 1/N of the update's prompts (the
prompt stream and its cursor are global, so a resume is unaffected), samples them under its own
seed, and trains on its own episodes; DDP averages the gradients, so there are still exactly
``ppo_epochs * mini_batches`` optimizer steps per update, each over ``rollout_batch_size /
mini_batches`` episodes in all. Reward and advantage whitening use the mean and variance of the
whole global batch, the logged metrics are global means, and the KL controller sees the global
KL, so the numbers mean the same whatever N is. The batch must split evenly:
``rollout_batch_size`` divisible by ``N * mini_batches * gradient_accumulation_steps``. Every
process starts from the same weights (same seed, same files; DDP also broadcasts rank 0's), and
only the main process writes metrics, checkpoints and log lines. With one process nothing of
this runs and results are bit for bit those of the single-process trainer. CUDA (NCCL) goes
through the same code as CPU (gloo) but is only tested on CPU here.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.common.fileio import atomic_write_text  # noqa: E402
from rlhfspec.common.hashing import sha256_file  # noqa: E402
from rlhfspec.runtime.policy.distributed import (  # noqa: E402
    SINGLE,
    Group,
    global_explained_variance,
    global_masked_mean,
    global_masked_whiten,
)
from rlhfspec.runtime.policy.ppo_math import (  # noqa: E402
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    first_eos_truncation,
    gae,
    kl_per_token,
    masked_mean,
    place_rewards,
    policy_loss,
    position_ids_from_mask,
    response_logprobs,
    value_loss,
)
from rlhfspec.runtime.train.common import quiet_transformers, seed_everything, threads  # noqa: E402
from rlhfspec.runtime.train.formatting import format_prompt  # noqa: E402
from rlhfspec.runtime.train.models import (  # noqa: E402
    corpus_sha256,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_FORMAT = "rlhfspec-ppo-checkpoint"
CHECKPOINT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^update-(\d{6})$")

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

    ``cpu=None`` means: on the CPU unless CUDA is available. It does not enter the comparison
    made on resume (`comparable`), and neither does ``threads``; both are recorded.
    """

    kl_coef: float
    kl_estimator: str = "k1"
    kl_mode: str = "fixed"
    kl_target: float | None = None
    kl_horizon: int = 10000
    total_episodes: int = 512
    rollout_batch_size: int = 32
    mini_batches: int = 2
    ppo_epochs: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    temperature: float = 1.0
    max_new_tokens: int = 48
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    missing_eos_penalty: float = 1.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 4
    seed: int = 0
    threads: int = dataclasses.field(default_factory=threads)
    cpu: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kl_estimator not in ("k1", "k2", "k3"):
            problems.append(f"kl.estimator must be k1, k2 or k3, not {self.kl_estimator!r}")
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
    ) -> PPOSettings:
        """Settings from a spec's ``policy`` block (schema defaults for what it leaves out)."""
        kl = policy_block["kl"]
        ppo = policy_block.get("ppo", {})
        defaults = cls(kl_coef=float(kl["coef"]), threads=1)  # only read for its defaults
        values: dict[str, Any] = {
            "kl_coef": float(kl["coef"]),
            "kl_estimator": kl.get("estimator", "k1"),
            "kl_mode": kl.get("mode", "fixed"),
            "kl_target": None if kl.get("target") is None else float(kl["target"]),
            "kl_horizon": int(kl.get("horizon", defaults.kl_horizon)),
            "checkpoint_every": int(
                policy_block.get("checkpoint_every", defaults.checkpoint_every)
            ),
            "seed": int(seed),
            "cpu": cpu,
        }
        for name in (
            "total_episodes",
            "rollout_batch_size",
            "mini_batches",
            "ppo_epochs",
            "gradient_accumulation_steps",
            "max_new_tokens",
        ):
            values[name] = int(ppo.get(name, getattr(defaults, name)))
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
            values[name] = float(ppo.get(name, getattr(defaults, name)))
        for name in ("whiten_rewards", "whiten_advantages"):
            values[name] = bool(ppo.get(name, getattr(defaults, name)))
        if threads is not None:
            values["threads"] = int(threads)
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
        """The settings a resumed run must share with its checkpoint (all but threads/cpu)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("threads", "cpu")}


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


# ---------------------------------------------------------------------------------------------
# Models


class PolicyAndValue(nn.Module):
    """The two trained models as one module, so accelerate prepares (and, with several
    processes, DDP synchronises) them together and one optimizer covers both."""

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Response-aligned policy logits ``[B, T, V]`` and values ``[B, T]``."""
        logits = policy_logits(self.policy, input_ids, attention_mask, context_length)
        values = token_values(self.value_model, input_ids, attention_mask, context_length)
        return logits, values


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def policy_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """Logits aligned with the response: ``out[:, t]`` predicts response token ``t``.

    Those are the outputs at positions ``P - 1 .. P + T - 2``; when the model supports
    ``logits_to_keep``, the LM head is only applied to the last ``T + 1`` positions.
    """
    response_length = input_ids.shape[1] - context_length
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_length + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    logits: torch.Tensor = out.logits
    return logits[:, -(response_length + 1) : -1]


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = getattr(model, "score", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        raise RunError(
            f"{type(model).__name__} is not a sequence classifier with a `score` head on a "
            "backbone; the reward model must be an AutoModelForSequenceClassification"
        )
    return backbone, head


def _hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, nn.Module]:
    backbone, head = _backbone_and_head(model)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state, head


def token_values(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """The score head read at every position before a response token: ``V(state before t)``."""
    hidden, head = _hidden_states(model, input_ids, attention_mask)
    response_length = input_ids.shape[1] - context_length
    values: torch.Tensor = head(
        hidden[:, context_length - 1 : context_length - 1 + response_length]
    )
    return values.squeeze(-1).float()


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """The reward model's score of each row, read at full-sequence position ``index[i]``.

    Reading at an explicit index (the EOS, or the last generated token) rather than at "the
    last non-pad token" does not depend on pad differing from EOS or on the padding side.
    """
    hidden, head = _hidden_states(model, input_ids, attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    scores: torch.Tensor = head(hidden[rows, index])
    return scores.squeeze(-1).float()


def generation_config(settings: PPOSettings, tokenizer: Any) -> Any:
    """Pure sampling at ``settings.temperature``: no top-k, no top-p, no other processors, so
    the distribution sampled is exactly ``softmax(logits / temperature)``, the one trained."""
    from transformers import GenerationConfig

    return GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=True,
        temperature=settings.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def _same_tokenizer(a: Any, b: Any) -> bool:
    return bool(
        a.get_vocab() == b.get_vocab()
        and a.eos_token_id == b.eos_token_id
        and a.pad_token_id == b.pad_token_id
        and a.bos_token_id == b.bos_token_id
    )


# ---------------------------------------------------------------------------------------------
# Rollout


@dataclasses.dataclass
class Rollout:
    """One rollout batch: sequences, masks and everything PPO needs from the frozen pass."""

    input_ids: torch.Tensor  # [B, P + T]: left-padded prompt, truncated response
    attention_mask: torch.Tensor  # [B, P + T]
    context_length: int  # P
    response_mask: torch.Tensor  # [B, T]
    logp: torch.Tensor  # [B, T] old log-probabilities at the training temperature
    values: torch.Tensor  # [B, T] old values (0 on padding)
    advantages: torch.Tensor  # [B, T]
    returns: torch.Tensor  # [B, T]
    stats: dict[str, float]


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


@torch.no_grad()
def collect_rollout(
    *,
    policy: nn.Module,
    value_model: nn.Module,
    reference: nn.Module,
    reward_model: nn.Module | None,
    reward_fn: RewardFn | None,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: PPOSettings,
    kl_coef: float,
    update: int,
    device: torch.device,
    group: Group = SINGLE,
) -> Rollout:
    """Sample, truncate, score, shape rewards, and compute advantages for one batch.

    With several processes `prompts` is this process's shard: sampling uses a per-rank seed,
    while whitening and the returned statistics cover every process's episodes (`group`)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(
        [format_prompt(p) for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=True,
    )
    prompt_ids = enc["input_ids"].to(device)
    prompt_mask = enc["attention_mask"].to(device)
    context_length = prompt_ids.shape[1]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed("ppo-rollout", settings.seed, update, *rank_parts(group)))
        sequences = policy.generate(  # type: ignore[operator]
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=generation_config(settings, tokenizer),
        )
    response_ids, response_mask, has_eos, last_index = first_eos_truncation(
        sequences[:, context_length:], tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)

    batch = input_ids.shape[0]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "ent", "ref", "val", "score")}
    for rows in _chunks(batch, settings.micro_batch_size):
        ids, mask = input_ids[rows], attention_mask[rows]
        logits = policy_logits(policy, ids, mask, context_length)
        logp, entropy = response_logprobs(logits, response_ids[rows], settings.temperature)
        ref_logits = policy_logits(reference, ids, mask, context_length)
        ref_logp, _ = response_logprobs(ref_logits, response_ids[rows], settings.temperature)
        parts["logp"].append(logp)
        parts["ent"].append(entropy)
        parts["ref"].append(ref_logp)
        parts["val"].append(token_values(value_model, ids, mask, context_length))
        if reward_fn is None:
            assert reward_model is not None
            index = context_length + last_index[rows]
            parts["score"].append(sequence_scores(reward_model, ids, mask, index))
        else:
            scored = torch.as_tensor(reward_fn(ids, mask, context_length), dtype=torch.float32)
            parts["score"].append(scored.to(device).reshape(-1))
    logp, entropy, ref_logp, values, scores = (
        torch.cat(parts[k]) for k in ("logp", "ent", "ref", "val", "score")
    )

    mask_f = response_mask.float()
    values = values * mask_f
    penalty = (~has_eos).float() * settings.missing_eos_penalty
    penalised = scores - penalty
    kl = kl_per_token(logp, ref_logp, settings.kl_estimator) * mask_f
    rewards = place_rewards(penalised, kl, kl_coef, last_index, response_mask)
    if settings.whiten_rewards:
        rewards = global_masked_whiten(rewards, response_mask, group, shift_mean=False)
    advantages, returns = gae(rewards, values, response_mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        advantages = global_masked_whiten(advantages, response_mask, group, shift_mean=True)

    kl_per_response = kl.sum(dim=1)
    if not group.single:
        stats = _global_rollout_stats(
            scores=scores,
            penalty=penalty,
            score_minus_kl=penalised - kl_coef * kl_per_response,
            kl=kl_per_response,
            lengths=mask_f.sum(dim=1),
            has_eos=has_eos.float(),
            entropy=entropy,
            values=values,
            returns=returns,
            response_mask=response_mask,
            kl_coef=kl_coef,
            group=group,
        )
    else:
        stats = {
            "score": float(scores.mean()),
            "eos_penalty": float(penalty.mean()),
            "score_minus_kl": float((penalised - kl_coef * kl_per_response).mean()),
            "kl": float(kl_per_response.mean()),
            "kl_coef": float(kl_coef),
            "entropy": float(masked_mean(entropy, mask_f)),
            "explained_variance": explained_variance(values, returns, response_mask),
            "response_length": float(mask_f.sum(dim=1).mean()),
            "eos_rate": float(has_eos.float().mean()),
        }
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        context_length=context_length,
        response_mask=response_mask,
        logp=logp,
        values=values,
        advantages=advantages,
        returns=returns,
        stats=stats,
    )


def _global_rollout_stats(
    *,
    scores: torch.Tensor,
    penalty: torch.Tensor,
    score_minus_kl: torch.Tensor,
    kl: torch.Tensor,
    lengths: torch.Tensor,
    has_eos: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    group: Group,
) -> dict[str, float]:
    """The rollout statistics of `collect_rollout` over every process's episodes: per-episode
    quantities averaged over all episodes (one all-reduce of their sums), token quantities
    (entropy, explained variance) over all tokens. All processes get the same numbers, which
    matters for the KL controller: each process updates its own copy with ``stats["kl"]``."""
    per_episode = torch.stack(
        [t.float().sum() for t in (scores, penalty, score_minus_kl, kl, lengths, has_eos)]
        + [torch.tensor(float(scores.shape[0]), device=scores.device)]
    )
    totals = group.sum(per_episode.double())
    means = (totals[:-1] / totals[-1]).tolist()
    mask_f = response_mask.float()
    return {
        "score": means[0],
        "eos_penalty": means[1],
        "score_minus_kl": means[2],
        "kl": means[3],
        "kl_coef": float(kl_coef),
        "entropy": float(global_masked_mean(entropy, mask_f, group)),
        "explained_variance": global_explained_variance(values, returns, response_mask, group),
        "response_length": means[4],
        "eos_rate": means[5],
    }


# ---------------------------------------------------------------------------------------------
# Optimisation


def ppo_update(
    *,
    model: nn.Module,
    optimizer: Any,
    accelerator: Any,
    rollout: Rollout,
    settings: PPOSettings,
    update: int,
    group: Group = SINGLE,
) -> tuple[dict[str, float], int]:
    """``ppo_epochs`` passes of minibatch PPO over one rollout; returns (mean stats, steps).

    Each minibatch is ``gradient_accumulation_steps`` micro-batches of equal size; each
    micro-batch's loss (a token mean) is divided by the number of micro-batches, gradients are
    clipped, and the optimizer steps once. The statistics are plain means over every
    micro-batch of every minibatch and epoch (all are the same size), so nothing is
    overwritten or double-counted whatever the split.

    With several processes (`group`) the rollout is this process's shard: sizes are the
    shard's (``rollout_batch_size / N`` episodes, split the same way), the order is seeded per
    rank, gradients are synchronised only on the last micro-batch of each minibatch (DDP's
    ``no_sync``; they are averaged over processes), and the statistics returned are this
    process's (the caller averages them over processes).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    micro_count = 0
    grad_norms: list[float] = []
    steps = 0
    accumulation = settings.gradient_accumulation_steps
    batch = rollout.input_ids.shape[0]  # rollout_batch_size with one process
    minibatch_size = batch // settings.mini_batches
    micro_batch_size = minibatch_size // accumulation
    for epoch in range(settings.ppo_epochs):
        order = minibatch_order(batch, settings.seed, update, epoch, group)
        for start in range(0, batch, minibatch_size):
            minibatch = order[start : start + minibatch_size]
            for micro_start in range(0, minibatch_size, micro_batch_size):
                rows = minibatch[micro_start : micro_start + micro_batch_size]
                rows = rows.to(rollout.input_ids.device)
                mask = rollout.response_mask[rows]
                last_micro = micro_start + micro_batch_size >= minibatch_size
                sync = (
                    contextlib.nullcontext()
                    if group.single or last_micro
                    else accelerator.no_sync(model)
                )
                with sync:  # forward and backward both: DDP decides at forward time
                    logits, values = model(
                        rollout.input_ids[rows],
                        rollout.attention_mask[rows],
                        rollout.context_length,
                    )
                    response_ids = rollout.input_ids[rows][:, rollout.context_length :]
                    logp, _ = response_logprobs(logits, response_ids, settings.temperature)
                    pg_loss, pg_clipfrac, approx_kl = policy_loss(
                        logp,
                        rollout.logp[rows],
                        rollout.advantages[rows],
                        mask,
                        settings.cliprange,
                    )
                    vf_loss, vf_clipfrac = value_loss(
                        values,
                        rollout.values[rows],
                        rollout.returns[rows],
                        mask,
                        settings.cliprange_value,
                    )
                    loss = pg_loss + settings.vf_coef * vf_loss
                    accelerator.backward(loss / accumulation)
                for key, value in (
                    ("policy_loss", pg_loss),
                    ("value_loss", vf_loss),
                    ("policy_clipfrac", pg_clipfrac),
                    ("value_clipfrac", vf_clipfrac),
                    ("approx_kl", approx_kl),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                micro_count += 1
            norm = accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
            grad_norms.append(float(norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    stats = {key: total / micro_count for key, total in sums.items()}
    stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return stats, steps


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_name(update: int) -> str:
    return f"update-{update:06d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``checkpoint.json`` was written), if any."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if path.is_dir()
        and (match := _CHECKPOINT_RE.match(path.name))
        and (path / CHECKPOINT_META).is_file()
    ]
    return max(found)[1] if found else None


def _rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in plain types, loadable with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    out_dir: Path,
    update: int,
    *,
    policy: Any,
    value_model: Any,
    tokenizer: Any,
    optimizer: Any,
    info: dict[str, Any],
) -> Path:
    """Write a checkpoint into ``.update-NNNNNN.tmp`` and rename it into place.

    ``checkpoint.json`` is written last and the rename is atomic, so ``update-NNNNNN`` either
    does not exist or is complete; a leftover temporary folder is ignored and removed later.
    """
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(update)
    tmp = root / f".{checkpoint_name(update)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(tmp / "policy", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "policy")
    value_model.save_pretrained(tmp / "value", safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng_state.pt")
    atomic_write_text(tmp / CHECKPOINT_META, json.dumps(info, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _model_sha256(model_dir: Path) -> str | None:
    weights = Path(model_dir) / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else None


def _clean_float(value: float) -> float | None:
    """Round for the log; NaN/inf (e.g. explained variance of constant returns) become null."""
    return round(value, 6) if math.isfinite(value) else None


def _read_metrics(path: Path, up_to: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row for row in rows if int(row["update"]) <= up_to]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------
# The trainer


def train_ppo(
    policy_dir: Path,
    reference_dir: Path,
    reward_model_dir: Path,
    prompts: list[str],
    settings: PPOSettings,
    out_dir: Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    metadata: dict[str, Any] | None = None,
    reward_fn: RewardFn | None = None,
    trust_remote_code: bool = False,
) -> PPOResult:
    """Train the policy in `policy_dir` with PPO against the reward model in `reward_model_dir`.

    The policy and the frozen `reference_dir` are causal LMs sharing one tokenizer (the reward
    model must use it too, since it scores the policy's token ids and the value model starts as
    its copy). `prompts` are raw prompt texts. Writes ``out_dir/metrics.jsonl`` (one row per
    update, `METRIC_FIELDS`) and ``out_dir/checkpoints/update-NNNNNN`` every
    ``checkpoint_every`` updates and after the last one. `metadata` (e.g. the reward model's
    version and annotation batches) is copied into every ``checkpoint.json`` for lineage.

    With `resume`, training continues from the newest complete checkpoint (a fresh start when
    there is none) and ends with the same weights as an uninterrupted run; without it, any
    earlier checkpoints and metrics in `out_dir` are discarded. `reward_fn` replaces the reward
    model's scores (see `RewardFn`); the value model is still initialised from the reward model.

    Under torchrun / ``accelerate launch`` every process calls this with the same arguments
    and trains its shard of each rollout batch (see the module docstring); the main process
    decides where training starts (its choice is broadcast, so `resume` only matters there),
    and it alone writes `out_dir` and calls `log`. Every process returns the same
    `PPOResult` (the others' ``seconds`` are their own).
    """
    threads_before = torch.get_num_threads()
    try:
        return _train_ppo(
            Path(policy_dir),
            Path(reference_dir),
            Path(reward_model_dir),
            prompts,
            settings,
            Path(out_dir),
            resume=resume,
            log=log,
            metadata=metadata,
            reward_fn=reward_fn,
            trust_remote_code=trust_remote_code,
        )
    finally:
        # the thread count is process-wide; leave it as the caller had it
        torch.set_num_threads(threads_before)


def _train_ppo(
    policy_dir: Path,
    reference_dir: Path,
    reward_model_dir: Path,
    prompts: list[str],
    settings: PPOSettings,
    out_dir: Path,
    *,
    resume: bool,
    log: Callable[[str], None],
    metadata: dict[str, Any] | None,
    reward_fn: RewardFn | None,
    trust_remote_code: bool,
) -> PPOResult:
    if not prompts:
        raise RunError("PPO needs at least one prompt")
    from accelerate import Accelerator

    quiet_transformers()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.threads)
    cpu = settings.cpu if settings.cpu is not None else not torch.cuda.is_available()
    # with several processes this joins their process group (gloo on CPU, NCCL on CUDA)
    accelerator = Accelerator(cpu=cpu)
    # accelerate may pick its own CPU thread count for several processes; ours decides results
    torch.set_num_threads(settings.threads)
    group = Group.current() if accelerator.num_processes > 1 else SINGLE
    local_batch = settings.per_process_batch(group.world)
    if not group.is_main:
        log = _silent  # one process speaks for the run
    device = accelerator.device

    checkpoint_root = out_dir / CHECKPOINTS
    metrics_path = out_dir / METRICS_FILE
    start: Path | None = None
    if group.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint_root.is_dir():
            # a kill mid-save leaves only a temporary folder; anything incomplete is not one
            for leftover in checkpoint_root.iterdir():
                incomplete = leftover.name.startswith(".update-") or (
                    _CHECKPOINT_RE.match(leftover.name)
                    and not (leftover / CHECKPOINT_META).is_file()
                )
                if leftover.is_dir() and incomplete:
                    shutil.rmtree(leftover)
        start = latest_checkpoint(out_dir) if resume else None
        if not resume:
            if checkpoint_root.exists():
                shutil.rmtree(checkpoint_root)
            if metrics_path.exists():
                metrics_path.unlink()
    if not group.single:
        # the main process's choice, after its clean-up: every process starts from the same place
        chosen = group.broadcast(None if start is None else str(start))
        start = None if chosen is None else Path(chosen)

    sources = {
        "policy": str(policy_dir),
        "policy_sha256": _model_sha256(policy_dir),
        "reference": str(reference_dir),
        "reference_sha256": _model_sha256(reference_dir),
        "reward_model": str(reward_model_dir),
        "reward_model_sha256": _model_sha256(reward_model_dir),
        "reward_fn": None if reward_fn is None else getattr(reward_fn, "__name__", "custom"),
    }

    prompts_sha = corpus_sha256(prompts)
    group.agree(
        "the PPO run (settings, prompts, models or starting checkpoint)",
        [settings.comparable(), prompts_sha, sources, None if start is None else start.name],
    )
    start_info: dict[str, Any] | None = None
    if start is not None:
        start_info = json.loads((start / CHECKPOINT_META).read_text(encoding="utf-8"))
        saved = {k: v for k, v in start_info["settings"].items() if k not in ("threads", "cpu")}
        if saved != settings.comparable():
            changed = sorted(k for k in saved if saved[k] != settings.comparable().get(k))
            raise RunError(
                f"cannot resume from {start}: its PPO settings differ ({', '.join(changed)}); "
                "run without --resume to start over"
            )
        if start_info["prompts"]["sha256"] != prompts_sha:
            raise RunError(f"cannot resume from {start}: the prompts differ from the run's")
        moved = [
            name
            for name in ("policy_sha256", "reference_sha256", "reward_model_sha256", "reward_fn")
            if start_info["sources"].get(name) != sources[name]
        ]
        if moved:
            raise RunError(
                f"cannot resume from {start}: the starting models differ from the run's "
                f"({', '.join(moved)})"
            )
        if start_info["settings"].get("threads") != settings.threads:
            log(
                f"resuming with {settings.threads} thread(s) where the run used "
                f"{start_info['settings'].get('threads')}: results will not match bit for bit"
            )
        if int(start_info.get("processes", 1)) != group.world:
            # each process samples under its own seed, so the split changes the draws
            log(
                f"resuming with {group.world} process(es) where the run used "
                f"{start_info.get('processes', 1)}: results will not match bit for bit"
            )

    # Models. One tokenizer for all: the reward and value models read the policy's token ids.
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust_remote_code)
    for other, what in ((reference_dir, "reference"), (reward_model_dir, "reward model")):
        if other != policy_dir and not _same_tokenizer(
            tokenizer, load_tokenizer(other, trust_remote_code=trust_remote_code)
        ):
            raise RunError(
                f"the {what} in {other} uses a different tokenizer from the policy in "
                f"{policy_dir}; PPO needs them to share one (train them from the same base)"
            )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RunError("the policy's tokenizer needs an EOS token distinct from its pad token")
    remote = trust_remote_code
    policy = load_causal_lm(
        start / "policy" if start else policy_dir, tokenizer=tokenizer, trust_remote_code=remote
    )
    reference = load_causal_lm(reference_dir, tokenizer=tokenizer, trust_remote_code=remote)
    value_model = load_reward_model(
        start / "value" if start else reward_model_dir,
        tokenizer=tokenizer,
        trust_remote_code=remote,
    )
    reward_model = (
        load_reward_model(reward_model_dir, tokenizer=tokenizer, trust_remote_code=remote)
        if reward_fn is None
        else None
    )
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()  # type: ignore[no-untyped-call]
            frozen.to(device)
    # dropout off, also while training (see the module docstring)
    policy.eval()  # type: ignore[no-untyped-call]
    value_model.eval()  # type: ignore[no-untyped-call]

    # on the device before the optimizer exists, so that restored optimizer state lands there
    model = PolicyAndValue(policy, value_model).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=0.0,
    )
    if start is not None:
        optimizer.load_state_dict(torch.load(start / "optimizer.pt", weights_only=True))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()
    unwrapped = accelerator.unwrap_model(model)

    if settings.kl_mode == "adaptive":
        assert settings.kl_target is not None
        controller: FixedKLController | AdaptiveKLController = AdaptiveKLController(
            settings.kl_coef, settings.kl_target, settings.kl_horizon
        )
    else:
        controller = FixedKLController(settings.kl_coef)

    total_updates = settings.num_updates
    update, episodes, optimizer_steps = 0, 0, 0
    rows: list[dict[str, Any]] = []
    if start is not None and start_info is not None:
        update = int(start_info["update"])
        episodes = int(start_info["episodes"])
        optimizer_steps = int(start_info["optimizer_steps"])
        controller.load_state_dict(start_info["kl_controller"])
        _set_rng_state(torch.load(start / "rng_state.pt", weights_only=True))
        rows = _read_metrics(metrics_path, update)
        if group.is_main:
            _write_metrics(metrics_path, rows)
        log(f"resuming from {start.name} ({episodes} episodes, kl_coef {controller.value:.6g})")
    elif resume:
        log("no complete checkpoint to resume from; starting from the beginning")
    resumed_from = update if start is not None else None

    def save(at: int) -> Path:
        """Main process: write the checkpoint; every process: wait until it is complete, so
        that no process returns (or resumes) a path that is still being written."""
        path = out_dir / CHECKPOINTS / checkpoint_name(at)
        if group.is_main:
            path = write_checkpoint(at)
        group.barrier()
        return path

    def write_checkpoint(at: int) -> Path:
        info = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "update": at,
            "updates_total": total_updates,
            "episodes": episodes,
            "optimizer_steps": optimizer_steps,
            "prompt_cursor": episodes,
            "prompts": {"count": len(prompts), "sha256": prompts_sha},
            "kl_coef": controller.value,
            "kl_controller": controller.state_dict(),
            "settings": settings.to_dict(),
            "processes": group.world,
            "sources": sources,
            "metadata": metadata or {},
            "libraries": {"torch": torch.__version__, "transformers": _version("transformers")},
        }
        path = _save_checkpoint(
            out_dir,
            at,
            policy=unwrapped.policy,
            value_model=unwrapped.value_model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            info=info,
        )
        log(f"checkpoint {path.name}")
        return path

    final_checkpoint = start if start is not None and update == total_updates else None
    while update < total_updates:
        began = time.perf_counter()
        update += 1
        indices = prompt_indices(len(prompts), settings.seed, episodes, settings.rollout_batch_size)
        # this process's contiguous share of the global batch (all of it with one process)
        shard = indices[group.rank * local_batch : (group.rank + 1) * local_batch]
        batch_prompts = [prompts[i] for i in shard]
        rollout = collect_rollout(
            policy=unwrapped.policy,
            value_model=unwrapped.value_model,
            reference=reference,
            reward_model=reward_model,
            reward_fn=reward_fn,
            tokenizer=tokenizer,
            prompts=batch_prompts,
            settings=settings,
            kl_coef=controller.value,
            update=update,
            device=device,
            group=group,
        )
        train_stats, steps = ppo_update(
            model=model,
            optimizer=optimizer,
            accelerator=accelerator,
            rollout=rollout,
            settings=settings,
            update=update,
            group=group,
        )
        # every process ran as many micro-batches: the mean of the means is the global mean
        train_stats = group.mean_of(train_stats)
        optimizer_steps += steps
        episodes += settings.rollout_batch_size
        controller.update(rollout.stats["kl"], settings.rollout_batch_size)
        merged: dict[str, Any] = {
            **rollout.stats,
            **train_stats,
            "update": update,
            "episodes": episodes,
            "optimizer_steps": optimizer_steps,
            "learning_rate": settings.learning_rate,
            "seconds": time.perf_counter() - began,
        }
        row = {
            key: merged[key] if isinstance(merged[key], int) else _clean_float(merged[key])
            for key in METRIC_FIELDS
        }
        rows.append(row)
        if group.is_main:
            _write_metrics(metrics_path, rows)
        log(
            f"update {update}/{total_updates} score {row['score']:.4f} kl {row['kl']:.4f} "
            f"kl_coef {row['kl_coef']:.4g} len {row['response_length']:.1f} "
            f"eos {row['eos_rate']:.2f} ({row['seconds']:.1f}s)"
        )
        if update % settings.checkpoint_every == 0 or update == total_updates:
            final_checkpoint = save(update)

    assert final_checkpoint is not None
    return PPOResult(
        updates=update,
        episodes=episodes,
        optimizer_steps=optimizer_steps,
        kl_coef=controller.value,
        final_checkpoint=final_checkpoint,
        policy_dir=final_checkpoint / "policy",
        metrics_path=metrics_path,
        metrics=rows,
        resumed_from=resumed_from,
    )


def _silent(message: str) -> None:
    """The log of a process that is not the main one."""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
