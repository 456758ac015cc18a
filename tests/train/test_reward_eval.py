"""Reward-model holdout metrics against scipy and hand computations."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfspec.runtime.train.reward_eval import (
    check_gates,
    evaluate_pairs,
    pearson,
    rankdata,
    spearman,
)

stats = pytest.importorskip("scipy.stats")

floats = st.lists(st.integers(-5, 5), min_size=3, max_size=40)


@settings(max_examples=80, deadline=None)
@given(floats)
def test_rankdata_matches_scipy(values: list[int]) -> None:
    x = np.array(values, dtype=float)
    assert np.allclose(rankdata(x), stats.rankdata(x, method="average"))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_correlations_match_scipy(data: st.DataObject) -> None:
    x = np.array(data.draw(floats), dtype=float)
    y = np.array(
        data.draw(st.lists(st.integers(-5, 5), min_size=len(x), max_size=len(x))), dtype=float
    )
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert pearson(x, y) is None and spearman(x, y) is None
        return
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)


def test_hand_computed_example() -> None:
    # pair 1: chosen shorter and scored higher; pair 2: chosen longer, scored lower; pair 3: chosen longer, higher
    metrics = evaluate_pairs(
        [2.0, 0.0, 3.0],
        [1.0, 1.0, 0.5],
        [10, 30, 40],
        [20, 20, 10],
        [{"tone": "chosen"}, {"tone": "rejected"}, {"tone": None}],
    )
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["length"]["preferred_shorter"] == {"accuracy": 1.0, "pairs": 1}
    assert metrics["length"]["preferred_longer"] == {"accuracy": 0.5, "pairs": 2}
    # tone prefers chosen in pair 1 (model right) and rejected in pair 2 (model scored rejected higher: right)
    assert metrics["per_dimension"]["tone"] == {"accuracy": 1.0, "pairs": 2}
    rewards = [2.0, 0.0, 3.0, 1.0, 1.0, 0.5]
    lengths = [10, 30, 40, 20, 20, 10]
    assert metrics["length"]["pearson_reward_length"] == pytest.approx(
        stats.pearsonr(rewards, lengths).statistic, abs=1e-6
    )
    assert sum(metrics["reward_distribution"]["histogram"]["counts"]) == 6


def test_length_gate_trips_on_a_length_loving_model() -> None:
    rng = np.random.default_rng(0)
    lengths_c = rng.integers(20, 80, 200)
    lengths_r = rng.integers(20, 80, 200)
    metrics = evaluate_pairs(lengths_c / 10.0, lengths_r / 10.0, lengths_c, lengths_r)
    gates = {
        g["name"]: g
        for g in check_gates(
            metrics,
            {
                "min_validation_accuracy": 0.4,
                "max_length_correlation": 0.3,
                "min_shorter_preferred_accuracy": 0.5,
            },
        )
    }
    assert not gates["max_length_correlation"]["passed"]
    assert not gates["min_shorter_preferred_accuracy"]["passed"]
    assert gates["max_length_correlation"]["value"] == pytest.approx(1.0)


def test_per_dimension_order_is_first_appearance_whatever_the_hash_seed() -> None:
    names = ["tone", "accuracy", "safety", "helpfulness", "concision", "format"]
    dims = [{n: "chosen" for n in names[3:]}, {n: "rejected" for n in names}]
    code = (
        "from rlhfspec.runtime.train.reward_eval import evaluate_pairs\n"
        f"print(list(evaluate_pairs([1, 2], [0, 3], [1, 1], [2, 2], {dims!r})['per_dimension']))"
    )
    for seed in ("0", "1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert done.stdout.strip() == repr(names[3:] + names[:3]), seed
