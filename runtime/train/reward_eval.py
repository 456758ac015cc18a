"""Reward-model evaluation on the holdout: accuracy, per dimension, and length bias.

A reward model is a proxy for human judgement and its best-known failure is
length bias: longer responses score higher whatever their quality. Accuracy
alone hides that, so the evaluation splits accuracy by whether the preferred
response is the shorter or the longer one, and correlates reward with
length. Plain numpy; checked against scipy in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank (scipy's 'average' method)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    first = np.concatenate(([True], sorted_values[1:] != sorted_values[:-1]))
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.concatenate((starts[1:], [len(values)]))
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r; None when either side is constant (the correlation is undefined)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denominator == 0:
        return None
    return float((dx * dy).sum() / denominator)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    return pearson(
        rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64))
    )


def _rate(hits: np.ndarray) -> dict[str, Any]:
    n = int(hits.size)
    return {"accuracy": round(float(hits.mean()), 6) if n else None, "pairs": n}


def evaluate_pairs(
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    chosen_lengths: Sequence[int],
    rejected_lengths: Sequence[int],
    dimensions: Sequence[dict[str, str | None]] = (),
    histogram_bins: int = 20,
) -> dict[str, Any]:
    """Holdout metrics of a reward model from its scores on preference pairs."""
    chosen = np.asarray(chosen_scores, dtype=np.float64)
    rejected = np.asarray(rejected_scores, dtype=np.float64)
    c_len = np.asarray(chosen_lengths, dtype=np.float64)
    r_len = np.asarray(rejected_lengths, dtype=np.float64)
    correct = chosen > rejected
    shorter = c_len < r_len
    longer = c_len > r_len
    rewards = np.concatenate((chosen, rejected))
    lengths = np.concatenate((c_len, r_len))
    per_dimension: dict[str, Any] = {}
    # in order of first appearance (a set's order would follow the process's hash seed)
    names = list(dict.fromkeys(name for d in dimensions for name in d))
    for name in names:
        verdicts = np.array([d.get(name) for d in dimensions], dtype=object)
        with_chosen = verdicts == "chosen"
        with_rejected = verdicts == "rejected"
        # the dimension's own preference: the chosen response, or on disagreement the rejected one
        hits = np.concatenate((correct[with_chosen], ~correct[with_rejected]))
        per_dimension[name] = _rate(hits)
    counts, edges = (
        np.histogram(rewards, bins=histogram_bins) if rewards.size else (np.array([]), np.array([]))
    )
    quantiles: list[float] = (
        [float(q) for q in np.quantile(rewards, [0.05, 0.25, 0.5, 0.75, 0.95])]
        if rewards.size
        else []
    )
    return {
        "pairs": int(chosen.size),
        "accuracy": round(float(correct.mean()), 6) if chosen.size else None,
        "margin_mean": round(float((chosen - rejected).mean()), 6) if chosen.size else None,
        "per_dimension": per_dimension,
        "length": {
            "preferred_shorter": _rate(correct[shorter]),
            "preferred_longer": _rate(correct[longer]),
            "same_length": _rate(correct[~shorter & ~longer]),
            "pearson_reward_length": _round(pearson(rewards, lengths)),
            "spearman_reward_length": _round(spearman(rewards, lengths)),
        },
        "reward_distribution": {
            "mean": _round(float(rewards.mean())) if rewards.size else None,
            "std": _round(float(rewards.std())) if rewards.size else None,
            "min": _round(float(rewards.min())) if rewards.size else None,
            "max": _round(float(rewards.max())) if rewards.size else None,
            "quantiles": {
                q: _round(float(v))
                for q, v in zip(("p05", "p25", "p50", "p75", "p95"), quantiles, strict=False)
            },
            "histogram": {
                "counts": [int(c) for c in counts],
                "edges": [_round(float(e)) for e in edges],
            },
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def check_gates(metrics: dict[str, Any], gates: dict[str, float]) -> list[dict[str, Any]]:
    """The spec's reward-model gates against the holdout metrics."""
    results = []
    accuracy = metrics["accuracy"]
    results.append(
        {
            "name": "min_validation_accuracy",
            "value": accuracy,
            "threshold": gates["min_validation_accuracy"],
            "passed": accuracy is not None and accuracy >= gates["min_validation_accuracy"],
            "message": f"holdout accuracy {accuracy} (needs >= {gates['min_validation_accuracy']})",
        }
    )
    corr = metrics["length"]["pearson_reward_length"]
    results.append(
        {
            "name": "max_length_correlation",
            "value": corr,
            "threshold": gates["max_length_correlation"],
            "passed": corr is None or corr <= gates["max_length_correlation"],
            "message": f"Pearson correlation of reward and length {corr} (needs <= {gates['max_length_correlation']}):"
            " a reward model that pays for length invites verbose policies",
        }
    )
    shorter = metrics["length"]["preferred_shorter"]["accuracy"]
    results.append(
        {
            "name": "min_shorter_preferred_accuracy",
            "value": shorter,
            "threshold": gates["min_shorter_preferred_accuracy"],
            "passed": shorter is None or shorter >= gates["min_shorter_preferred_accuracy"],
            "message": f"accuracy on pairs where the preferred response is the shorter one {shorter} "
            f"(needs >= {gates['min_shorter_preferred_accuracy']})",
        }
    )
    return results
