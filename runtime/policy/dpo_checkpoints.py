"""DPO's run folder: policy checkpoints, metrics.jsonl and the trainer's checkpoints for resume.

`rlhfspec.runtime.policy.dpo` trains; this module owns what it leaves on disk (the layout is in
that module's docstring) and how a killed run is picked up again: the newest complete trainer
checkpoint is the resume point, what was written past it is dropped, and a policy checkpoint
the kill prevented is rebuilt from the trainer's. Every write goes to a temporary sibling that
is renamed into place, and only the main process writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlhfspec.runtime.policy.distributed import Group
from rlhfspec.runtime.train.models import load_causal_lm, load_tokenizer
from rlhfspec.runtime.train.scale import save_pretrained_merged

CHECKPOINT_META = "checkpoint.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_DIR = "trainer"

_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".ckpt"})
_TRAINER_ONLY_FILES = frozenset({"trainer_state.json", "README.md"})
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TRAINER_DIR = re.compile(r"^checkpoint-(\d+)$")
# DPOTrainer's final call to `log` carries the run summary, not a step's metrics
_SUMMARY_KEYS = frozenset({"train_runtime", "train_samples_per_second", "train_loss"})


def checkpoint_name(step: int) -> str:
    """``step-000010``: zero-padded so that a plain sort of the folder names is step order."""
    return f"step-{step:06d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """The complete policy checkpoints under ``out_dir/checkpoints``, in step order."""
    folder = Path(out_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / CHECKPOINT_META).is_file()
    ]
    return [p for _, p in sorted(found)]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a fully written folder into place; a reader sees the old one or the new one."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


class MetricsFile(TrainerCallback):
    """Append each logged step's metrics to metrics.jsonl as it happens (flushed per row).

    Appending rather than writing at the end means an interrupted run keeps its history;
    `train_dpo` trims rows past the resume point before continuing, so no step appears twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: dict[str, Any] = {}

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or "loss" not in logs or _SUMMARY_KEYS & logs.keys():
            return
        row = {"step": int(state.global_step), **logs}
        self.last = row
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


class PolicyCheckpoints(TrainerCallback):
    """After each trainer save, write the policy as a standalone model dir, atomically.

    The trainer's checkpoint-N holds optimizer and RNG state and is rotated away; these
    ``step-N`` folders are what later stages read, so they stay and carry their own metadata.
    """

    def __init__(
        self,
        folder: Path,
        describe: Callable[[int, float], dict[str, Any]],
        log: Callable[[str], None],
        metrics: MetricsFile,
    ) -> None:
        self.folder = folder
        self.describe = describe
        self.log = log
        self.metrics = metrics
        self.saved: list[Path] = []
        #: under LoRA, the base model (folder, trust_remote_code) the adapters train on
        self.base: tuple[Path, bool] | None = None

    def save(self, model: Any, tokenizer: Any, step: int, epoch: float) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / checkpoint_name(step)
        tmp = self.folder / f".{target.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        # under LoRA: the adapters in adapter/ and the merged weights that later stages load
        save_pretrained_merged(model, tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / CHECKPOINT_META, self.describe(step, epoch))
        replace_dir(tmp, target)
        if target not in self.saved:
            self.saved.append(target)
        return target

    def restore(self, trainer_checkpoint: Path, step: int, epoch: float) -> Path:
        """Write step-N from the trainer's checkpoint-N, which holds the same weights.

        A process killed between the trainer's save and this callback's leaves only the
        trainer's; resuming continues after step N, so step-N would otherwise never exist.
        Optimizer, scheduler, RNG and training-argument files (pickles) are not copied.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / checkpoint_name(step)
        tmp = self.folder / f".{target.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        if self.base is not None:  # the trainer saved adapters only: merge them into the base
            self._restore_adapters(trainer_checkpoint, tmp)
        for path in trainer_checkpoint.iterdir() if self.base is None else ():
            if path.is_file() and not (
                path.suffix in _PICKLE_SUFFIXES or path.name in _TRAINER_ONLY_FILES
            ):
                shutil.copy2(path, tmp / path.name)
        write_json(tmp / CHECKPOINT_META, self.describe(step, epoch))
        replace_dir(tmp, target)
        return target

    def _restore_adapters(self, trainer_checkpoint: Path, tmp: Path) -> None:
        import torch
        from peft import PeftModel

        assert self.base is not None
        folder, trust = self.base
        tokenizer = load_tokenizer(folder, trust_remote_code=trust)
        base = load_causal_lm(
            folder, trust_remote_code=trust, tokenizer=tokenizer, dtype=torch.float32
        )
        save_pretrained_merged(PeftModel.from_pretrained(base, str(trainer_checkpoint)), tmp)
        tokenizer.save_pretrained(tmp)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # every process gets on_save; one writes (the trainer itself saved on the main one)
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        self.save(kwargs["model"], kwargs["processing_class"], step, float(state.epoch or 0.0))
        self.log(f"policy checkpoint {checkpoint_name(step)}")


def resume_point(trainer_dir: Path) -> tuple[Path, int] | None:
    """The newest trainer checkpoint that finished saving (trainer_state.json is written last)."""
    if not trainer_dir.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in trainer_dir.iterdir()
        if (m := _TRAINER_DIR.match(p.name)) and (p / "trainer_state.json").is_file()
    ]
    if not found:
        return None
    step, path = max(found)
    return path, step


def metric_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a torn last line (the process killed mid-write) is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def trim_after(out_dir: Path, step: int) -> list[dict[str, Any]]:
    """Drop what a killed run wrote past its last resumable step (the resumed run redoes it);
    returns the metric rows kept."""
    metrics = out_dir / METRICS_FILE
    kept = [row for row in metric_rows(metrics) if row["step"] <= step]
    if metrics.exists():
        metrics.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    folder = out_dir / CHECKPOINTS_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            m = _STEP_DIR.match(path.name)
            if path.name.startswith(".") or (m and int(m.group(1)) > step):
                shutil.rmtree(path)
    return kept


def start_over(out_dir: Path) -> None:
    """A run that does not resume must not mix its checkpoints or metrics with an older one's."""
    for name in (CHECKPOINTS_DIR, TRAINER_DIR):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)


def resume_point_of_run(
    out_dir: Path, resume: bool, group: Group, log: Callable[[str], None]
) -> tuple[tuple[Path, int] | None, list[dict[str, Any]]]:
    """Main process: the trainer checkpoint to continue from (None: start over, clearing
    out_dir), with the metric rows kept up to it. Other processes get None and [] here."""
    if not group.is_main:
        return None, []
    point = resume_point(out_dir / TRAINER_DIR) if resume else None
    kept_rows: list[dict[str, Any]] = []
    if point is None:
        if resume:
            log("no complete trainer checkpoint to resume from; starting over")
        start_over(out_dir)
    else:
        log(f"continuing from step {point[1]}")
        kept_rows = trim_after(out_dir, point[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    return point, kept_rows


def restore_policy_checkpoint(
    saver: PolicyCheckpoints,
    point: tuple[Path, int],
    kept_rows: list[dict[str, Any]],
    log: Callable[[str], None],
) -> None:
    """A run killed between the trainer's save and ours has no step-N: write it from the
    trainer's checkpoint-N before continuing after N."""
    if (saver.folder / checkpoint_name(point[1]) / CHECKPOINT_META).exists():
        return
    state = json.loads((point[0] / "trainer_state.json").read_text(encoding="utf-8"))
    saver.metrics.last = next((r for r in kept_rows if r["step"] == point[1]), {})
    saver.restore(point[0], point[1], float(state.get("epoch") or 0.0))
    log(f"policy checkpoint {checkpoint_name(point[1])} restored from the trainer's")


def final_checkpoint(trainer: Any, saver: PolicyCheckpoints, out_dir: Path, group: Group) -> Path:
    """The last step's policy checkpoint, written if the trainer did not save at that step
    (a resume of a finished run); every process returns once it is on disk."""
    last_step = int(trainer.state.global_step)
    final = out_dir / CHECKPOINTS_DIR / checkpoint_name(last_step)
    # the main process may still be writing the last step-N from its on_save
    group.barrier()
    if group.is_main and not (final / CHECKPOINT_META).is_file():
        model = trainer.accelerator.unwrap_model(trainer.model)
        saver.save(model, trainer.processing_class, last_step, float(trainer.state.epoch or 0.0))
    group.barrier()  # every process returns a summary of what is on disk
    return final
