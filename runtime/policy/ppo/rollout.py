"""One rollout batch: sample, truncate at the first EOS, score, shape rewards, GAE.

Sampling is `rlhfspec.runtime.train.sampling.sample`: exactly ``softmax(logits / T)``, nothing
of the model's generation_config.json but EOS and pad. Scoring (`episode_scores`) reads the
reward model at the last real token of the sampled ids, minus ``missing_eos_penalty`` when the
response has no EOS; evaluation scores its samples with the same function, so the reward it
reports is the one PPO optimises.

KL in the reward is always k1. The per-token reward ``-beta * k`` is treated by PPO as a
constant, so the policy gradient it yields is ``-beta * E[grad log pi * k]``; only with
``k = log pi - log ref`` (k1) is that ``-beta * grad KL(pi || ref)``. k2 and k3 are good
*estimators* of the KL's value (lower variance, never negative) but not of its gradient: with
k3 the gradient is ``-grad KL(pi||ref) + grad KL(ref||pi)`` and pushes the policy away from the
reference. So ``kl.estimator`` chooses the estimator that is logged (``kl``), fed to the
adaptive controller, evaluated and guarded; the reward uses k1 whatever it says.

With several processes each one rolls out its shard of the global batch under its own seed;
whitening and the statistics returned cover every process's episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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
from rlhfspec.runtime.policy.ppo.models import policy_logits, sequence_scores, token_values
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
from rlhfspec.runtime.train.formatting import PromptInput, plain_prompt
from rlhfspec.runtime.train.precision import autocast
from rlhfspec.runtime.train.sampling import BatchNoise, sample

#: The estimator the per-token reward uses, whatever ``kl.estimator`` says (see the docstring).
REWARD_KL_ESTIMATOR = "k1"


@dataclasses.dataclass
class Episodes:
    """Prompts and their sampled responses as PPO reads them."""

    input_ids: torch.Tensor  # [B, P + T]: left-padded prompt, response cut after its first EOS
    attention_mask: torch.Tensor  # [B, P + T]
    context_length: int  # P
    response_ids: torch.Tensor  # [B, T], pad after the first EOS
    response_mask: torch.Tensor  # [B, T], 1 up to and including the first EOS
    has_eos: torch.Tensor  # [B] bool
    last_index: torch.Tensor  # [B] the EOS, or the last generated token

    @classmethod
    def of(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generated: torch.Tensor,
        tokenizer: Any,
    ) -> Episodes:
        response_ids, response_mask, has_eos, last_index = first_eos_truncation(
            generated, tokenizer.eos_token_id, tokenizer.pad_token_id
        )
        return cls(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1),
            context_length=prompt_ids.shape[1],
            response_ids=response_ids,
            response_mask=response_mask,
            has_eos=has_eos,
            last_index=last_index,
        )


def episode_scores(
    reward_model: nn.Module | None,
    reward_fn: RewardFn | None,
    episodes: Episodes,
    missing_eos_penalty: float,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, penalty) per episode; the reward PPO optimises is ``score - penalty``.

    The reward model reads the sampled token ids exactly (never re-tokenised text) at the last
    real token: the EOS when there is one, else the last generated token, and then
    ``missing_eos_penalty`` is due. `reward_fn` replaces the reward model (see `RewardFn`).
    """
    ctx = episodes.context_length
    parts = []
    for rows in _chunks(episodes.input_ids.shape[0], batch_size):
        ids, mask = episodes.input_ids[rows], episodes.attention_mask[rows]
        if reward_fn is None:
            assert reward_model is not None
            index = ctx + episodes.last_index[rows]
            parts.append(sequence_scores(reward_model, ids, mask, index))
        else:
            scored = torch.as_tensor(reward_fn(ids, mask, ctx), dtype=torch.float32)
            parts.append(scored.to(ids.device).reshape(-1))
    scores = torch.cat(parts).float()
    penalty = (~episodes.has_eos).float() * missing_eos_penalty
    return scores, penalty


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
    #: [B, T] the sampler's own log-probabilities of the same tokens (equal to `logp` up to
    #: floating point, since sampling is exactly softmax(logits / T)); None when not sampled
    sample_logp: torch.Tensor | None = None


@torch.no_grad()
def collect_rollout(
    *,
    policy: nn.Module,
    value_model: nn.Module,
    reference: nn.Module,
    reward_model: nn.Module | None,
    reward_fn: RewardFn | None,
    tokenizer: Any,
    prompts: Sequence[PromptInput],
    settings: PPOSettings,
    kl_coef: float,
    update: int,
    device: torch.device,
    group: Group = SINGLE,
    render: Callable[[PromptInput], str] = plain_prompt,
) -> Rollout:
    """Sample, truncate, score, shape rewards, and compute advantages for one batch.

    `render` turns a prompt into model text: the run's `ChatFormat.prompt` (the plain
    ``User:/Assistant:`` format by default). With several processes `prompts` is this
    process's shard: sampling uses a per-rank seed, while whitening and the returned
    statistics cover every process's episodes (`group`)."""
    with autocast(settings.mixed_precision, device):
        episodes, sample_logp = _sample_episodes(
            policy, tokenizer, [render(p) for p in prompts], settings, update, device, group
        )
        logp, entropy, ref_logp, values = _frozen_pass(
            policy, reference, value_model, episodes, settings
        )
        scores, penalty = episode_scores(
            reward_model,
            reward_fn,
            episodes,
            settings.missing_eos_penalty,
            settings.micro_batch_size,
        )
    mask = episodes.response_mask
    mask_f = mask.float()
    values = values * mask_f
    penalised = scores - penalty
    reward_kl = kl_per_token(logp, ref_logp, REWARD_KL_ESTIMATOR) * mask_f
    logged_kl = kl_per_token(logp, ref_logp, settings.kl_estimator) * mask_f
    rewards = place_rewards(penalised, reward_kl, kl_coef, episodes.last_index, mask)
    if settings.whiten_rewards:
        rewards = global_masked_whiten(rewards, mask, group, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        advantages = global_masked_whiten(advantages, mask, group, shift_mean=True)
    stats = _rollout_stats(
        scores=scores,
        penalty=penalty,
        score_minus_kl=penalised - kl_coef * logged_kl.sum(dim=1),
        kl=logged_kl.sum(dim=1),
        lengths=mask_f.sum(dim=1),
        has_eos=episodes.has_eos.float(),
        entropy=entropy,
        values=values,
        returns=returns,
        response_mask=mask,
        kl_coef=kl_coef,
        group=group,
    )
    return Rollout(
        input_ids=episodes.input_ids,
        attention_mask=episodes.attention_mask,
        context_length=episodes.context_length,
        response_mask=mask,
        logp=logp,
        sample_logp=sample_logp * mask_f,
        values=values,
        advantages=advantages,
        returns=returns,
        stats=stats,
    )


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Formatted prompts (model text), left-padded, on `device`."""
    tokenizer.padding_side = "left"
    enc = tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=True,
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _sample_episodes(
    policy: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: PPOSettings,
    update: int,
    device: torch.device,
    group: Group,
) -> tuple[Episodes, torch.Tensor]:
    """Sample this process's formatted prompts under the (seed, update, rank) stream; returns
    the episodes and the sampler's log-probabilities of the sampled tokens."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    seed = derived_seed("ppo-rollout", settings.seed, update, *rank_parts(group))
    sampled = sample(
        policy,
        prompt_ids,
        prompt_mask,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        noise=BatchNoise(seed, device),
    )
    return Episodes.of(prompt_ids, prompt_mask, sampled.ids, tokenizer), sampled.logprobs


def _frozen_pass(
    policy: nn.Module,
    reference: nn.Module,
    value_model: nn.Module,
    episodes: Episodes,
    settings: PPOSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Old log-probabilities and entropies, the reference's log-probabilities and the old
    values, in micro-batches, all at the sampling temperature."""
    ctx = episodes.context_length
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "ent", "ref", "val")}
    for rows in _chunks(episodes.input_ids.shape[0], settings.micro_batch_size):
        ids, mask = episodes.input_ids[rows], episodes.attention_mask[rows]
        response = episodes.response_ids[rows]
        logp, entropy = response_logprobs(
            policy_logits(policy, ids, mask, ctx), response, settings.temperature
        )
        ref_logp, _ = response_logprobs(
            policy_logits(reference, ids, mask, ctx), response, settings.temperature
        )
        parts["logp"].append(logp)
        parts["ent"].append(entropy)
        parts["ref"].append(ref_logp)
        parts["val"].append(token_values(value_model, ids, mask, ctx))
    logp, entropy, ref_logp, values = (torch.cat(parts[k]) for k in ("logp", "ent", "ref", "val"))
    return logp, entropy, ref_logp, values


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def _rollout_stats(
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
    matters for the KL controller: each process updates its own copy with ``stats["kl"]``.
    ``kl`` and ``score_minus_kl`` use the spec's estimator (it estimates the KL's value; k1
    only matters for the gradient, in the reward)."""
    mask_f = response_mask.float()
    if group.single:
        return {
            "score": float(scores.mean()),
            "eos_penalty": float(penalty.mean()),
            "score_minus_kl": float(score_minus_kl.mean()),
            "kl": float(kl.mean()),
            "kl_coef": float(kl_coef),
            "entropy": float(masked_mean(entropy, mask_f)),
            "explained_variance": explained_variance(values, returns, response_mask),
            "response_length": float(lengths.mean()),
            "eos_rate": float(has_eos.mean()),
        }
    per_episode = torch.stack(
        [t.float().sum() for t in (scores, penalty, score_minus_kl, kl, lengths, has_eos)]
        + [torch.tensor(float(scores.shape[0]), device=scores.device)]
    )
    totals = group.sum(per_episode.double())
    means = (totals[:-1] / totals[-1]).tolist()
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
