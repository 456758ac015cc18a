"""SFT and the reward model at scale: the plan's printed commands in plan order, the training
stages as two torchrun processes (DDP on CPU, gloo), against one process on the same work;
TensorBoard and W&B (offline) tracking read back with their own readers; LoRA adapters with the
base model's identity; the progress bar's arithmetic.

Tolerance. One process and two see the same global batches (``batch_size`` is global; each
process takes half), but the reduction order differs (two partial means averaged, one thread
per process against two), so the losses agree to about 1e-3 relative, not bit for bit: the
tests allow 1%.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from click.testing import CliRunner  # noqa: E402

from rlhfspec.cli.main import main as cli_main  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from tests.policy.test_multiprocess import run_printed  # noqa: E402
from tests.train.test_train_stages import small_project  # noqa: E402

LOSS_TOLERANCE = 0.01


def compile_plan(spec: Path) -> tuple[Path, dict[str, Any]]:
    build = spec.parent / "build"
    result = CliRunner().invoke(cli_main, ["compile", str(spec), "-o", str(build)])
    assert result.exit_code == 0, result.output
    return build, json.loads((build / "plan.json").read_text())


def latest_run(build: Path, plan: dict[str, Any]) -> Path:
    runs = sorted((build / "runs" / plan["spec"]["name"]).iterdir())
    return runs[-1]


def with_settings(spec: Path, extra: str) -> Path:
    """The spec with `extra` appended and a lighter reward model (one epoch)."""
    text = spec.read_text().replace(
        "train: {epochs: 2, learning_rate: 2.0e-3, batch_size: 16, max_length: 256}",
        "train: {epochs: 1, learning_rate: 2.0e-3, batch_size: 16, max_length: 192}",
    )
    spec.write_text(text + "\n" + extra)
    return spec


@pytest.mark.slow
def test_printed_commands_train_sft_and_reward_model_in_two_processes(tmp_path: Path) -> None:
    spec = with_settings(
        small_project(tmp_path / "two", records=240),
        "compute: {device: cpu, num_processes: 2}\ntracking: {backend: tensorboard}\n",
    )
    build, plan = compile_plan(spec)
    for stage in plan["stages"]:
        if stage["name"] == "policy":
            break
        if stage["name"] == "sft":  # the same upstream outputs for the one-process run
            shutil.copytree(latest_run(build, plan), tmp_path / "one-run")
        launched = stage["name"] in ("sft", "reward_model")
        run_printed(stage["launch"] if launched else stage["command"], build)
    run_dir = latest_run(build, plan)
    lineage = json.loads((run_dir / "lineage.json").read_text())
    two = {s: lineage["stages"][s]["metrics"] for s in ("sft", "reward_model")}
    for metrics in two.values():
        assert metrics["compute"]["processes"] == 2 and metrics["compute"]["strategy"] == "ddp"
        assert metrics["tracking"]["backend"] == "tensorboard"
    assert not (run_dir / "run.lock").exists()
    assert (run_dir / "models" / "reward_model" / "model.safetensors").is_file()

    # TensorBoard event files, read back with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tracking" / "reward_model"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert len(events.Scalars("train/loss")) >= 1

    # the same data and seed in one process (prompts, QC and aggregation carried over)
    one_spec = spec.with_name("one.yaml")
    one_spec.write_text(spec.read_text().replace("num_processes: 2", "num_processes: 1"))
    single = run(
        one_spec,
        display="spec",
        run_dir=tmp_path / "one-run",
        until="reward_model",
        resume=True,
        log=lambda m: None,
    )
    one = json.loads((single / "lineage.json").read_text())["stages"]
    for name in ("sft", "reward_model"):
        a, b = one[name]["metrics"]["train_loss"], two[name]["train_loss"]
        assert abs(a - b) <= LOSS_TOLERANCE * abs(a), (name, a, b)


@pytest.mark.slow
def test_lora_sft_with_checkpointing_and_wandb_offline(tmp_path: Path) -> None:
    from rlhfspec.runtime.train.scale import weights_sha256

    spec = with_settings(
        small_project(tmp_path, records=120),
        "compute:\n  device: cpu\n  gradient_checkpointing: true\n"
        "  lora: {enabled: true, r: 4, alpha: 8}\n"
        "tracking: {backend: wandb, project: scale-test}\n",
    )
    run_dir = run(spec, display="spec", run_dir=tmp_path / "run", until="sft", log=lambda m: None)
    metrics = json.loads((run_dir / "lineage.json").read_text())["stages"]["sft"]["metrics"]
    lora = metrics["compute"]["lora"]
    assert metrics["compute"]["gradient_checkpointing"] is True
    assert lora["r"] == 4 and lora["base_sha256"] == weights_sha256(lora["base"])
    model = run_dir / "models" / "sft"
    adapter = json.loads((model / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    assert (model / "model.safetensors").is_file()  # merged weights for the next stages
    # W&B offline: the run with the recorded id, its summary holding the training loss
    tracking = metrics["tracking"]
    assert tracking["backend"] == "wandb" and tracking["mode"] == "offline"
    runs = list((run_dir / tracking["dir"] / "wandb").glob(f"offline-run-*-{tracking['run_id']}"))
    assert len(runs) == 1, list((run_dir / tracking["dir"]).rglob("*"))
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        for record in wandb_records(runs[0] / f"run-{tracking['run_id']}.wandb")
        if record.WhichOneof("record_type") == "history"
    ]
    losses = [float(row["train/loss"]) for row in history if "train/loss" in row]
    assert losses and all(loss > 0 for loss in losses), history


def wandb_records(path: Path) -> Any:
    """The records of a W&B offline run file, read with wandb's own protobuf messages.

    The file is a LevelDB-style log (wandb's transaction log): a 7-byte header (``:W&B``,
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length,
    type: 1 full, 2 first, 3 middle, 4 last) holding a serialised ``Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record
