"""Sampling responses exactly from ``softmax(logits / temperature)``: one loop for PPO and evaluation.

``model.generate`` fills every field its caller leaves unset from the model's own
``generation_config.json``, and hub checkpoints ship sampling settings there (Qwen2.5-Instruct:
``repetition_penalty 1.05``; others ``min_p``, ``no_repeat_ngram_size``, ``top_k``). Sampled
that way, the tokens PPO trains on come from a distribution other than the one whose
log-probabilities it computes: off-policy samples with no correction, and a KL estimated on the
wrong distribution. This module samples with its own loop instead, so nothing of the model's
generation config is read except what the caller passes (EOS and pad ids): each token is the
Gumbel-max draw ``argmax(logits / T + G)``, which is a draw from ``softmax(logits / T)``
exactly, with no top-k, top-p or any other processor. The log-probability of every sampled
token under that distribution is returned alongside, so callers can check that the
log-probabilities they train on are those of the distribution sampled.

The noise comes from `RowNoise` (one CPU generator per row: results do not depend on batch
composition or device, and every checkpoint sees the same noise for the same prompt, which is
what evaluation wants) or `BatchNoise` (one generator on the model's device, drawing the whole
``[rows, vocab]`` block at once: what PPO's rollouts want, fast on a GPU).

Prompts are left-padded, positions count real tokens only, a KV cache carries the context, and
a row's response ends at its first EOS (pad after it).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch


class RowNoise:
    """Uniform noise from one CPU generator per row (drawn on the CPU, then moved)."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def uniform(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        assert rows == len(self.generators), "one generator per row"
        draws = [torch.rand(vocab, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(device)


class BatchNoise:
    """Uniform noise for the whole batch from one generator on the model's device."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.device = device

    def uniform(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        draws = torch.rand(
            (rows, vocab), generator=self.generator, dtype=torch.float32, device=self.device
        )
        return draws.to(device)


Noise = RowNoise | BatchNoise


@dataclasses.dataclass
class Sampled:
    """Sampled responses: ``ids`` ``[B, T]`` (pad after the first EOS) and ``logprobs``
    ``[B, T]``, each sampled token's log-probability under ``softmax(logits / T)`` (0 after
    the first EOS)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: each row counts from 0 at its first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_argument(model: Any) -> str:
    """The KV-cache argument's name: ``cache`` in newer transformers 5 releases, where
    ``past_key_values`` is deprecated, and ``past_key_values`` before that."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def gumbel_argmax(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``argmax(logits + G)`` with ``G = -log(-log(U))``: a draw from ``softmax(logits)``."""
    # U in [0, 1): clamp away from 0 so that log(0) never makes a -inf/NaN draw
    tiny = torch.finfo(torch.float32).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
    return (logits + gumbel).argmax(dim=-1)


@torch.no_grad()
def sample(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    noise: Noise,
) -> Sampled:
    """Sample up to `max_new_tokens` per row from ``softmax(logits / temperature)``.

    `prompt_ids`/`prompt_mask` are left-padded and on the model's device. Stops early once
    every row has sampled EOS. Logits are taken in float32 whatever the model's dtype.
    """
    device = prompt_ids.device
    rows = prompt_ids.shape[0]
    mask = prompt_mask
    out = model(
        input_ids=prompt_ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache_name = cache_argument(model)
    cache = getattr(out, cache_name)
    next_positions = positions(mask)[:, -1:] + 1
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    taken: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float() / temperature
        chosen = gumbel_argmax(logits, noise.uniform(rows, logits.shape[-1], device))
        logprob = torch.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        tokens.append(torch.where(finished, torch.full_like(chosen, pad_id), chosen))
        taken.append(torch.where(finished, torch.zeros_like(logprob), logprob))
        finished |= chosen == eos_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tokens[-1].unsqueeze(1),
            attention_mask=mask,
            position_ids=next_positions,
            use_cache=True,
            **{cache_name: cache},
        )
        cache = getattr(out, cache_name)
        next_positions = next_positions + 1
    return Sampled(ids=torch.stack(tokens, dim=1), logprobs=torch.stack(taken, dim=1))
