"""PPO with gradient checkpointing (same weights, layers recomputed) and per-update metrics to
TensorBoard, read back with tensorboard's own reader."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: E402

from rlhfspec.runtime.train.scale import MetricsTracker  # noqa: E402
from tests.policy.test_ppo import SETTINGS, assert_same_weights, dirs, run  # noqa: E402, F401


def test_gradient_checkpointing_recomputes_and_trains_the_same(
    dirs: dict[str, Path],  # noqa: F811
) -> None:
    settings = dataclasses.replace(SETTINGS, total_episodes=8, checkpoint_every=1)
    plain = run(dirs, "plain", settings=settings)
    calls = {"with_grad": 0}
    original = GradientCheckpointingLayer.__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            calls["with_grad"] += 1
        return original(self, *args, **kwargs)

    GradientCheckpointingLayer.__call__ = counting
    try:
        checkpointed = run(
            dirs,
            "checkpointed",
            settings=dataclasses.replace(settings, gradient_checkpointing=True),
        )
    finally:
        GradientCheckpointingLayer.__call__ = original
    assert_same_weights(plain.policy_dir, checkpointed.policy_dir)
    assert_same_weights(plain.final_checkpoint / "value", checkpointed.final_checkpoint / "value")
    assert calls["with_grad"] > 0


def test_ppo_metrics_reach_tensorboard(dirs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = dataclasses.replace(SETTINGS, total_episodes=8, checkpoint_every=2)
    info = {"backend": "tensorboard", "dir": "tracking/policy"}
    tracker = MetricsTracker(info, tmp_path, enabled=True)
    result = run(
        dirs, "tracked", settings=settings, on_update=lambda row: tracker.log(row["update"], row)
    )
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tracking" / "policy"))
    events.Reload()
    scores = events.Scalars("train/score")
    assert [e.step for e in scores] == [1, 2]
    assert [e.value for e in scores] == pytest.approx([r["score"] for r in result.metrics])
