"""One rollout batch: sample, truncate at the first EOS, score, shape rewards, GAE.

With several processes each one rolls out its shard of the global batch under its own seed;
whitening and the statistics returned cover every process's episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhfspec.runtime.policy.distributed import (
    SINGLE,
    Group,
    global_explained_variance,
    global_masked_mean,
    global_masked_whiten,
)
from rlhfspec.runtime.policy.ppo.models import (
    generation_config,
    policy_logits,
    sequence_scores,
    token_values,
)
from rlhfspec.runtime.policy.ppo.settings import PPOSettings, RewardFn, derived_seed, rank_parts
from rlhfspec.runtime.policy.ppo_math import (
    explained_variance,
    first_eos_truncation,
    gae,
    kl_per_token,
    masked_mean,
    place_rewards,
    response_logprobs,
)
from rlhfspec.runtime.train.formatting import format_prompt


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
