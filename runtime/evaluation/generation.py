"""Evaluation samples: seeded per prompt, generated and scored exactly as PPO's rollouts are.

Sampling is `rlhfspec.runtime.train.sampling.sample` (exactly ``softmax(logits / T)``, the
model's generation_config.json never read) with one CPU generator per prompt, seeded from
(seed, prompt text, occurrence of that text). Results therefore never depend on the global
RNG, on the order of prompts, on the batch size or on the device (up to floating point), and
every checkpoint sees the *same* noise for the same prompt (common random numbers), which
lowers the variance of checkpoint-to-checkpoint comparisons such as the win rate.

Scoring is PPO's (`rlhfspec.runtime.policy.ppo.rollout.episode_scores`): the reward model reads
the sampled token ids, never re-tokenised text, at the EOS, or at the last generated token
with ``missing_eos_penalty`` subtracted when the response was cut at ``max_new_tokens``. So
the reward evaluation reports is the reward PPO optimises, and a checkpoint that rambles to
the limit pays for it here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.ppo.models import policy_logits
from rlhfspec.runtime.policy.ppo.rollout import Episodes, episode_scores
from rlhfspec.runtime.policy.ppo_math import response_logprobs
from rlhfspec.runtime.train.formatting import PromptInput, plain_prompt, prompt_key
from rlhfspec.runtime.train.precision import autocast
from rlhfspec.runtime.train.sampling import RowNoise, sample


@dataclasses.dataclass
class Batch:
    """One generated batch: left-padded prompt ids, response ids (pad after EOS) and masks."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # 1 for sampled tokens, EOS included
    ended: list[bool]  # sampled EOS within max_new_tokens
    lengths: list[int]  # response tokens before EOS
    sample_logprobs: torch.Tensor  # log-prob of each sampled token at the sampling temperature


def prompt_seed(seed: int, prompt: str, occurrence: int) -> int:
    material = f"rlhfspec-eval\x00{seed}\x00{occurrence}\x00{prompt}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1


def generators(prompts: Sequence[PromptInput], seed: int) -> list[torch.Generator]:
    """One CPU generator per prompt; a repeated prompt gets fresh noise per occurrence."""
    seen: Counter[str] = Counter()
    out = []
    for prompt in map(prompt_key, prompts):
        generator = torch.Generator(device="cpu")
        generator.manual_seed(prompt_seed(seed, prompt, seen[prompt]))
        seen[prompt] += 1
        out.append(generator)
    return out


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], limit: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids of formatted prompts (model text); a prompt too long for the context
    keeps its end."""
    old_side, old_trunc = tokenizer.padding_side, getattr(tokenizer, "truncation_side", "right")
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(
            list(prompts),
            return_tensors="pt",
            padding=True,
            truncation=limit is not None,
            max_length=limit,
            add_special_tokens=True,
        )
    finally:
        tokenizer.padding_side = old_side
        tokenizer.truncation_side = old_trunc
    return enc["input_ids"], enc["attention_mask"]


def prompt_limit(model: Any, max_new_tokens: int) -> int | None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if positions <= max_new_tokens:
        raise RunError(
            f"max_new_tokens {max_new_tokens} leaves no room for the prompt in a "
            f"context of {positions} positions"
        )
    return positions - max_new_tokens


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one set of samples is drawn (evaluation's temperature, or the KL's)."""

    seed: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    device: str
    mixed_precision: str = "no"


def _sample_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],  # formatted
    noise: Sequence[torch.Generator],
    how: Sampling,
) -> Batch:
    device = torch.device(how.device)
    prompt_ids, prompt_mask = encode_prompts(
        tokenizer, prompts, prompt_limit(model, how.max_new_tokens)
    )
    with autocast(how.mixed_precision, device):
        sampled = sample(
            model,
            prompt_ids.to(device),
            prompt_mask.to(device),
            max_new_tokens=how.max_new_tokens,
            temperature=how.temperature,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            noise=RowNoise(noise),
        )
    response = sampled.ids.cpu()
    is_eos = response == tokenizer.eos_token_id
    ended = is_eos.any(dim=1)
    width = response.shape[1]
    lengths = torch.where(ended, is_eos.long().argmax(dim=1), torch.full_like(ended.long(), width))
    # sampled tokens: those before EOS, and EOS itself where it was sampled
    response_mask = torch.arange(width).unsqueeze(0) < (lengths + ended.long()).unsqueeze(1)
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask.long(),
        ended=[bool(v) for v in ended],
        lengths=[int(v) for v in lengths],
        sample_logprobs=sampled.logprobs.float().cpu() * response_mask,
    )


def sample_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[PromptInput],
    how: Sampling,
    render: Callable[[PromptInput], str] = plain_prompt,
) -> list[Batch]:
    """Seeded samples for `prompts`, `how.batch_size` prompts at a time; `render` formats a
    prompt as PPO's rollouts do (the run's `ChatFormat.prompt`; plain by default)."""
    noise = generators(prompts, how.seed)
    texts = [render(p) for p in prompts]
    model.eval()
    batches = []
    with torch.inference_mode():
        for start in range(0, len(prompts), how.batch_size):
            end = start + how.batch_size
            batches.append(_sample_batch(model, tokenizer, texts[start:end], noise[start:end], how))
    return batches


def decode(tokenizer: Any, batch: Batch) -> list[str]:
    """Response text only: the tokens before EOS, special tokens dropped, outer space removed."""
    texts = []
    for row, length in enumerate(batch.lengths):
        ids = batch.response_ids[row, :length].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def response_logprobs_of(
    model: Any, batch: Batch, temperature: float, device: str, mixed_precision: str = "no"
) -> torch.Tensor:
    """Log-probabilities of the sampled response tokens (logits / temperature), masked to 0."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1).to(device)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1).to(device)
    with torch.inference_mode(), autocast(mixed_precision, torch.device(device)):
        logits = policy_logits(model, ids, mask, batch.prompt_ids.shape[1])
    taken, _ = response_logprobs(logits, batch.response_ids.to(device), temperature)
    return taken.cpu() * batch.response_mask


def batch_rewards(
    reward_model: Any,
    batch: Batch,
    tokenizer: Any,
    *,
    missing_eos_penalty: float,
    device: str,
    mixed_precision: str = "no",
) -> list[float]:
    """PPO's reward of each sampled response: the score of its token ids, minus the
    missing-EOS penalty where it was cut at the limit (`episode_scores`)."""
    target = torch.device(device)
    episodes = Episodes.of(
        batch.prompt_ids.to(target),
        batch.prompt_mask.to(target),
        batch.response_ids.to(target),
        tokenizer,
    )
    with torch.inference_mode(), autocast(mixed_precision, target):
        scores, penalty = episode_scores(
            reward_model, None, episodes, missing_eos_penalty, batch.prompt_ids.shape[0]
        )
    return [float(v) for v in (scores - penalty).double().cpu()]
