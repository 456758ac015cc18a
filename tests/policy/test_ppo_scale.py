"""PPO with gradient checkpointing (same weights, layers recomputed) and per-update metrics to
TensorBoard, read back with tensorboard's own reader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: E402

from rlhfspec.runtime.train.scale import MetricsTracker  # noqa: E402
from tests.policy.test_ppo import (  # noqa: E402, F401
    SETTINGS,
    Killed,
    assert_same_weights,
    dirs,
    run,
    without_timing,
)


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


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"], "quantize": "none"}


def test_lora_ppo_trains_adapters_resumes_and_saves_merged_weights(
    dirs: dict[str, Path],  # noqa: F811
) -> None:
    from safetensors.torch import load_file

    from rlhfspec.runtime.train.models import load_causal_lm

    settings = dataclasses.replace(SETTINGS, total_episodes=12, checkpoint_every=1, lora=LORA)
    whole = run(dirs, "lora", settings=settings)
    final = whole.final_checkpoint
    for part in ("policy", "value"):
        adapter = json.loads((final / part / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    # the merged policy loads as an ordinary model and differs from the base it started from
    merged, base = (
        load_file(str(final / "policy" / "model.safetensors")),
        load_file(str(dirs["tiny"] / "model.safetensors")),
    )
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    load_causal_lm(final / "policy")

    # resumed after a kill from the adapters of update 1: the same result as unbroken
    def killer(line: str) -> None:
        if line.startswith("update 2/"):
            raise Killed

    with pytest.raises(Killed):
        run(dirs, "lora-resumed", settings=settings, log=killer)
    resumed = run(dirs, "lora-resumed", settings=settings, resume=True)
    assert resumed.resumed_from == 1
    assert_same_weights(whole.policy_dir, resumed.policy_dir)
    assert without_timing(resumed.metrics) == without_timing(whole.metrics)
