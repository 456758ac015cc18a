"""Fast checks of the scale helpers: per-process batches, trainer arguments for gradient
checkpointing and FSDP2, PEFT's LoRA config, the progress bar's arithmetic."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.train.progress import Progress, bar_line, clock, eta  # noqa: E402
from rlhfspec.runtime.train.scale import lora_config, per_device, scale_args  # noqa: E402

COMPUTE = {
    "device": "cuda",
    "num_processes": 2,
    "strategy": "fsdp",
    "fsdp": {"cpu_offload": True},
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "lora": {
        "enabled": True,
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "quantize": "none",
    },
}


def test_global_batch_splits_evenly_or_says_why() -> None:
    assert per_device(32, "sft.train.batch_size", 2) == 16
    with pytest.raises(RunError, match="multiple of the 3 training processes"):
        per_device(32, "sft.train.batch_size", 3)


def test_fsdp2_arguments_on_gpus_and_ddp_on_cpu() -> None:
    gpu = scale_args(COMPUTE, cpu=False, world=2)
    assert gpu["fsdp"] == "full_shard auto_wrap offload"
    assert gpu["fsdp_config"]["fsdp_version"] == 2
    assert gpu["fsdp_config"]["activation_checkpointing"] is True
    assert gpu["activation_checkpointing"] is False  # FSDP recomputes, not the trainer
    cpu = scale_args(COMPUTE, cpu=True, world=2)
    assert "fsdp" not in cpu and cpu["activation_checkpointing"] is True
    assert cpu["activation_checkpointing_kwargs"] == {"use_reentrant": False}


def test_lora_config_trains_the_score_head_in_full() -> None:
    causal = lora_config(COMPUTE, "CAUSAL_LM")
    assert (causal.r, causal.lora_alpha, set(causal.target_modules)) == (
        8,
        16,
        {"q_proj", "v_proj"},
    )
    reward = lora_config(COMPUTE, "SEQ_CLS")
    assert "score" in reward.modules_to_save
    assert (
        lora_config({**COMPUTE, "lora": {**COMPUTE["lora"], "enabled": False}}, "SEQ_CLS") is None
    )


def test_eta_and_bar() -> None:
    assert eta(10, 40, 20.0) == 60.0 and eta(0, 40, 5.0) is None
    assert clock(75) == "1:15" and clock(3725) == "1:02:05"
    line = bar_line("sft", 10, 40, 20.0, {"loss": 1.25})
    assert line.startswith("[sft] |######------------------| 10/40")
    assert "25%" in line and "loss 1.25" in line and line.endswith("0:20<1:00")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    lines: list[str] = []
    tty = Terminal()
    bar = Progress("ppo", 4, lines.append, tty)
    for step in range(1, 5):
        bar.update(step, {"reward": 0.5})
    bar.close()
    assert tty.getvalue().count("\r[ppo]") == 4 and tty.getvalue().endswith("\n")
    assert lines == []
    plain = Progress("ppo", 20, lines.append, io.StringIO())
    for step in range(1, 21):
        plain.update(step, {"reward": 0.5})
    assert len(lines) == 10 and lines[-1] == "step 20/20 reward 0.5000"
