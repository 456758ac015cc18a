"""Per-response values of an evaluation and their summary per prompt set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.train.reward_eval import pearson


def kl_per_response(
    policy_logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str,
) -> list[float]:
    """The per-token estimator summed over each response's sampled tokens: with ``log r =
    log p_ref(y_t) - log p_policy(y_t)``, k1 = ``-log r``, k2 = ``(log r)^2 / 2``, k3 =
    ``r - 1 - log r`` (Schulman 2020). NaN stays NaN (a diverged model must fail its guard)."""
    log_ratio = (reference_logprobs - policy_logprobs).double()
    if estimator == "k1":
        per_token = -log_ratio
    elif estimator == "k2":
        per_token = 0.5 * log_ratio**2
    elif estimator == "k3":
        per_token = torch.expm1(log_ratio) - log_ratio
    else:
        raise RunError(f"unknown KL estimator {estimator!r}")
    return [float(v) for v in (per_token * mask.double()).sum(dim=1)]


def clean(value: float | None, digits: int = 6) -> float | None:
    """Fixed precision for stable JSON; None stays None and -0.0 becomes 0.0."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits) + 0.0


def win_rate(
    responses: Sequence[str],
    scores: Sequence[float],
    start: Sequence[str],
    start_scores: Sequence[float | None],
) -> list[float]:
    """Per prompt: 1 if this response scores higher than the start's, 0.5 on a tie, else 0;
    NaN where either score is missing or not finite (the mean is then not a number, and the
    checkpoint is not ranked by it).

    Identical texts are a tie by definition, rather than by comparing two floats that were
    computed in differently padded batches and may differ in the last bit.
    """
    out = []
    for text, score, other, other_score in zip(responses, scores, start, start_scores, strict=True):
        if other_score is None or not (math.isfinite(score) and math.isfinite(other_score)):
            out.append(math.nan)
        elif text == other or score == other_score:
            out.append(0.5)
        else:
            out.append(1.0 if score > other_score else 0.0)
    return out


@dataclass
class Rows:
    """Per-response values of one prompt set (or of all sets pooled)."""

    rewards: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    wins: list[float] | None = None

    def extend(self, other: Rows) -> None:
        self.rewards += other.rewards
        self.kl += other.kl
        self.words += other.words
        self.tokens += other.tokens
        self.ended += other.ended
        self.flags += other.flags
        if other.wins is not None:
            self.wins = (self.wins or []) + other.wins


def metrics(rows: Rows, disqualifier_ids: Sequence[str], temperature: float) -> dict[str, Any]:
    """The summary of one prompt set (or all pooled). Non-finite values are written as null,
    and selection's guards fail on null (`rlhfspec.runtime.evaluation.selection`)."""
    n = len(rows.rewards)
    rewards = np.asarray(rows.rewards, dtype=np.float64)
    words = np.asarray(rows.words, dtype=np.float64)
    kl = np.asarray(rows.kl, dtype=np.float64)
    total_tokens = sum(rows.tokens) + sum(rows.ended)  # EOS counts as a sampled token
    correlation = pearson(words, rewards)
    finite_rewards = bool(np.isfinite(rewards).all())
    return {
        "n": n,
        "reward": {
            "mean": clean(float(rewards.mean())),
            "std": clean(float(rewards.std())),
            "p10": clean(float(np.quantile(rewards, 0.1))),
            "p50": clean(float(np.quantile(rewards, 0.5))),
            "p90": clean(float(np.quantile(rewards, 0.9))),
        },
        "kl": {
            "mean": clean(float(kl.mean())),
            "std": clean(float(kl.std())),
            "per_token": clean(float(kl.sum() / total_tokens)) if total_tokens else None,
            "temperature": temperature,
        },
        "length": {
            "words_mean": clean(float(words.mean()), 3),
            "tokens_mean": clean(float(np.mean(rows.tokens)), 3),
        },
        "length_reward_correlation": clean(correlation),
        # undefined (constant lengths or rewards) is not the same as non-finite (a NaN reward):
        # selection lets only the first pass its guard
        "length_reward_correlation_undefined": correlation is None and finite_rewards,
        "disqualifier_rate": clean(sum(1 for f in rows.flags if f) / n),
        "disqualifier_rates": {
            ident: clean(sum(1 for f in rows.flags if ident in f) / n) for ident in disqualifier_ids
        },
        "eos_rate": clean(sum(rows.ended) / n),
        "no_eos_rate": clean(1.0 - sum(rows.ended) / n),
        "win_rate_vs_start": None if rows.wins is None else clean(float(np.mean(rows.wins))),
    }
