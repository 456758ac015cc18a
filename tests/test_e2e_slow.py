"""End-to-end runs that train for minutes: run with `pytest -m slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

from tests.train.test_train_stages import small_project  # noqa: E402

pytestmark = pytest.mark.slow


def test_resume_after_kill_during_reward_model_training(tmp_path: Path) -> None:
    spec = small_project(tmp_path, records=1224)
    text = spec.read_text().replace(
        "train: {epochs: 2, learning_rate: 2.0e-3, batch_size: 16, max_length: 256}",
        "train: {epochs: 4, learning_rate: 2.0e-3, batch_size: 16, max_length: 256}",
    )
    spec.write_text(text)
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "rlhfspec.cli.main",
        "run",
        str(spec),
        "--run-dir",
        str(run_dir),
        "--until",
        "reward_model",
    ]
    env = {**os.environ, "RLHFSPEC_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoints = run_dir / "reward_model" / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(
            p.name.startswith("checkpoint-") for p in checkpoints.iterdir()
        ):
            time.sleep(1.0)  # let the checkpoint finish writing
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before a checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["stages"]["reward_model"]["status"] == "running"
    assert not (run_dir / "models" / "reward_model").exists()

    resumed = subprocess.run(
        command + ["--resume"], env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "taking over the lock" in resumed.stdout
    assert "[reward_model] continuing from checkpoint-" in resumed.stdout
    for stage in ("prompts", "annotation_qc", "aggregate", "sft"):
        assert f"[{stage}] unchanged" in resumed.stdout
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["stages"]["reward_model"]["status"] == "done"
    meta = json.loads(
        (run_dir / "models" / "reward_model" / "rlhfspec_reward_model.json").read_text()
    )
    assert meta["holdout"]["pairs"] > 0
