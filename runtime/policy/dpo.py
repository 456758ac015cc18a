"""Direct preference optimisation on TRL's DPOTrainer, with checkpoints a run can use and resume.

TRL owns the loss and the training loop; what this module adds is around them:

* the same text format as every other stage (the run's `ChatFormat`), so the
  policy is trained on exactly the text the reward model and evaluation see;
* policy checkpoints every ``policy.checkpoint_every`` optimizer steps under
  ``out_dir/checkpoints/step-000010/``, each a complete model directory (safetensors weights,
  tokenizer, ``checkpoint.json``) that `load_causal_lm` opens as it is. They are written to a
  temporary sibling and renamed into place, so a killed run never leaves a half-written
  checkpoint that a later stage (evaluation, hand-off) would trust;
* the trainer's own checkpoints (optimizer, scheduler, RNG states) under ``out_dir/trainer/``,
  which `train_dpo(..., resume=True)` continues from; the HF Trainer restores the data order
  and RNG, so a resumed run ends with the same weights as an uninterrupted one;
* ``out_dir/metrics.jsonl``: every metric DPOTrainer logs (loss, rewards/chosen,
  rewards/rejected, rewards/accuracies, rewards/margins, logps/..., logits/...), one row per
  optimizer step, appended as training goes so an interrupted run keeps what it logged.

Layout of ``out_dir``::

    metrics.jsonl
    checkpoints/step-000002/{model.safetensors, config.json, tokenizer.json, ..., checkpoint.json}
    checkpoints/step-000004/...
    checkpoints/step-<last>/...        the final policy (always written)
    trainer/checkpoint-4/...           HF Trainer state for resume (the last two are kept)

Several processes (``torchrun --nproc_per_node N`` / ``accelerate launch --num_processes N``):
every process calls `train_dpo` with the same arguments; the HF Trainer wraps the policy in
DDP and gives each process 1/N of every batch, so ``batch_size`` is per process and one
optimizer step covers ``N * batch_size * gradient_accumulation_steps`` pairs (TRL gathers the
logged metrics over processes, so they are global). The run directory has one writer, the
main process: it clears or trims ``out_dir``, restores a missing policy checkpoint, writes
metrics.jsonl, the ``step-N`` checkpoints and the log lines; the others wait at a barrier
wherever they could otherwise read something half-written. The HF Trainer itself already
writes its ``trainer/`` checkpoints from the main process (plus one RNG file per process).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlhfspec.common.chat_templates import AUTO
from rlhfspec.common.errors import RunError
from rlhfspec.compiler.schemas import default_of
from rlhfspec.runtime.policy.distributed import SINGLE, Group, launched_world_size
from rlhfspec.runtime.train.common import (
    quiet_transformers,
    seed_everything,
    steps_for,
    threads,
    without_printer,
)
from rlhfspec.runtime.train.formatting import ChatFormat, chat_format, format_response, plain_prompt
from rlhfspec.runtime.train.models import load_causal_lm, load_tokenizer
from rlhfspec.runtime.train.progress import progress_callback

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


def dpo_rows(
    pairs: Sequence[Mapping[str, Any]], chat: ChatFormat | None = None
) -> list[dict[str, str]]:
    """Prompt/chosen/rejected rows as the model sees them: formatted by `chat` (the run's
    `ChatFormat`; None: the plain ``User:/Assistant:`` format). A pair's ``messages`` (a
    multi-turn prompt) take the place of its ``prompt`` text."""
    rows = []
    for i, pair in enumerate(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(pair.get(k), str)]
        if missing:
            raise RunError(f"preference pair {i} lacks text for {', '.join(missing)}")
        prompt = pair.get("messages") or pair["prompt"]
        if chat is None:
            rows.append(
                {
                    "prompt": plain_prompt(prompt),
                    "chosen": format_response(pair["chosen"]),
                    "rejected": format_response(pair["rejected"]),
                }
            )
            continue
        rows.append(
            {
                "prompt": chat.prompt(prompt),
                "chosen": chat.response(prompt, pair["chosen"]),
                "rejected": chat.response(prompt, pair["rejected"]),
            }
        )
    return rows


def dpo_args(
    settings: Mapping[str, Any],
    *,
    seed: int,
    trainer_dir: Path,
    steps_hint: int,
    use_cpu: bool,
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """DPOConfig keyword arguments from the spec's resolved ``policy`` block.

    Saving is tied to ``checkpoint_every`` so that every policy checkpoint has a trainer
    checkpoint of the same step to resume from; logging is every step because the DPO metrics
    of one step are cheap (DPOTrainer computes them anyway) and a checkpoint's metrics are then
    exactly its own step's.
    """
    dpo = settings["dpo"]
    train = dpo["train"]
    warmup = float(train["warmup_ratio"])
    return {
        "output_dir": str(trainer_dir),
        "beta": float(dpo["beta"]),
        "loss_type": [str(dpo["loss_type"])],
        "num_train_epochs": float(train["epochs"]),
        "per_device_train_batch_size": int(train["batch_size"]),
        "gradient_accumulation_steps": int(train["gradient_accumulation_steps"]),
        "learning_rate": float(train["learning_rate"]),
        "weight_decay": float(train["weight_decay"]),
        # transformers 5 dropped warmup_ratio: a float below 1 is read as a share of the steps
        "warmup_steps": warmup if warmup < 1 else steps_hint,
        "max_length": int(train["max_length"]),
        "truncation_mode": "keep_start",
        "seed": seed,
        "data_seed": seed,
        "use_cpu": use_cpu,
        "bf16": mixed_precision == "bf16" and not use_cpu,
        "fp16": mixed_precision == "fp16" and not use_cpu,
        "activation_checkpointing": False,
        "report_to": [],
        "save_strategy": "steps",
        "save_steps": int(settings["checkpoint_every"]),
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace_dir(tmp: Path, target: Path) -> None:
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

    def save(self, model: Any, tokenizer: Any, step: int, epoch: float) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / checkpoint_name(step)
        tmp = self.folder / f".{target.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_json(tmp / CHECKPOINT_META, self.describe(step, epoch))
        _replace_dir(tmp, target)
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
        for path in trainer_checkpoint.iterdir():
            if path.is_file() and not (
                path.suffix in _PICKLE_SUFFIXES or path.name in _TRAINER_ONLY_FILES
            ):
                shutil.copy2(path, tmp / path.name)
        _write_json(tmp / CHECKPOINT_META, self.describe(step, epoch))
        _replace_dir(tmp, target)
        return target

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # every process gets on_save; one writes (the trainer itself saved on the main one)
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        self.save(kwargs["model"], kwargs["processing_class"], step, float(state.epoch or 0.0))
        self.log(f"policy checkpoint {checkpoint_name(step)}")


def _resume_point(trainer_dir: Path) -> tuple[Path, int] | None:
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


def _metric_rows(path: Path) -> list[dict[str, Any]]:
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


def _trim_after(out_dir: Path, step: int) -> list[dict[str, Any]]:
    """Drop what a killed run wrote past its last resumable step (the resumed run redoes it);
    returns the metric rows kept."""
    metrics = out_dir / METRICS_FILE
    kept = [row for row in _metric_rows(metrics) if row["step"] <= step]
    if metrics.exists():
        metrics.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    folder = out_dir / CHECKPOINTS_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            m = _STEP_DIR.match(path.name)
            if path.name.startswith(".") or (m and int(m.group(1)) > step):
                shutil.rmtree(path)
    return kept


def _start_over(out_dir: Path) -> None:
    """A run that does not resume must not mix its checkpoints or metrics with an older one's."""
    for name in (CHECKPOINTS_DIR, TRAINER_DIR):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)


def _silent(message: str) -> None:
    """The log of a process that is not the main one."""


def train_dpo(
    policy_dir: Path,
    reference_dir: Path,
    pairs: list[dict[str, Any]],
    settings: dict[str, Any],
    *,
    chat: ChatFormat | None = None,
    seed: int,
    out_dir: Path,
    resume: bool,
    log: Callable[[str], None],
    metadata: dict[str, Any],
    compute: Mapping[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train the policy at `policy_dir` with DPO against the frozen `reference_dir` model.

    `pairs` are raw texts (``prompt``, ``chosen``, ``rejected``, and ``messages`` for a
    multi-turn prompt), formatted by `chat` (`dpo_rows`; None: the policy tokenizer's own
    format, as ``prompts.chat_template: auto``); `settings` is the spec's
    resolved ``policy`` block (``dpo.beta``, ``dpo.loss_type``, ``dpo.train``,
    ``checkpoint_every``, ``trust_remote_code``). `metadata` (data hashes, annotation batches,
    plan fingerprint...) is copied into every checkpoint's ``checkpoint.json`` so that each
    one can be traced on its own. `compute` is the spec's ``compute`` block (``device``,
    ``mixed_precision``); without it, the schema's default block (CPU unless CUDA is available, fp32).
    `callbacks` are extra TrainerCallbacks, run after the ones here (a stage's own progress
    reporting; tests that interrupt a run).

    Under torchrun / ``accelerate launch`` every process calls this alike (see the module
    docstring); only the main process writes `out_dir` and calls `log`, and the resume point
    is the main process's, broadcast to the others. The summary is the same on every process.

    With `resume`, training continues from the newest complete trainer checkpoint under
    ``out_dir/trainer`` (starting over if there is none); otherwise earlier checkpoints and
    metrics in `out_dir` are removed first. Returns a summary: steps, checkpoints, final
    loss, seconds, pairs (and how many were truncated or dropped by max_length).
    """
    started = time.perf_counter()
    quiet_transformers()
    if not pairs:
        raise RunError("no preference pairs to train the policy on")
    seed_everything(seed)
    out_dir = Path(out_dir)
    args, steps = _dpo_config(settings, seed, out_dir, len(pairs), compute or default_of("compute"))
    # Setting up the device joins the process group (under torchrun), which the clean-up
    # below needs: the other processes must not look at out_dir while the main one edits it.
    _ = args.device
    group = Group.current() if args.world_size > 1 else SINGLE
    if not group.is_main:
        log = _silent  # one process speaks for the run (progress, the savers, this)
    point, kept_rows = _resume_point_of_run(out_dir, resume, group, log)
    if not group.single:
        chosen = group.broadcast(None if point is None else (str(point[0]), point[1]))
        point = None if chosen is None else (Path(chosen[0]), int(chosen[1]))
        group.agree(
            "the DPO run (settings, pairs, models or resume point)",
            [dict(settings), seed, pairs, str(policy_dir), str(reference_dir), chosen],
        )
    if chat is None:  # the policy tokenizer's own format, as prompts.chat_template: auto
        tokenizer = load_tokenizer(
            policy_dir, trust_remote_code=bool(settings["trust_remote_code"])
        )
        chat = chat_format(tokenizer, AUTO)
    trainer, saver = _make_trainer(
        policy_dir,
        reference_dir,
        dpo_rows(pairs, chat),
        settings,
        args=args,
        seed=seed,
        out_dir=out_dir,
        log=log,
        metadata=metadata,
        callbacks=callbacks,
    )
    if group.is_main and point is not None:
        _restore_policy_checkpoint(saver, point, kept_rows, log)
    prepared = _report_prepared(trainer, len(pairs), settings, steps, log)
    with warnings.catch_warnings():
        # TRL reads the deprecated alias on every step; the warning is for TRL, not for a run's log
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        result = trainer.train(resume_from_checkpoint=str(point[0]) if point else None)
    final = _final_checkpoint(trainer, saver, out_dir, group)
    history = [h for h in trainer.state.log_history if "loss" in h]
    final_loss = history[-1]["loss"] if history else None
    return {
        "steps": int(trainer.state.global_step),
        "checkpoints": [str(p) for p in list_checkpoints(out_dir)],
        "final_checkpoint": str(final),
        "final_loss": None if final_loss is None else round(float(final_loss), 6),
        "train_loss": None
        if not math.isfinite(result.training_loss)
        else round(float(result.training_loss), 6),
        "seconds": round(time.perf_counter() - started, 3),
        "pairs": len(pairs),
        "pairs_trained": len(prepared),
        "pairs_dropped": len(pairs) - len(prepared),
        "pairs_truncated": _truncated(prepared, int(settings["dpo"]["train"]["max_length"])),
        "resumed_from_step": point[1] if point else None,
        "threads": threads(),
    }


def _dpo_config(
    settings: dict[str, Any],
    seed: int,
    out_dir: Path,
    pair_count: int,
    compute: Mapping[str, Any],
) -> tuple[Any, int]:
    """TRL's DPOConfig for the run, and about how many optimizer steps it will take."""
    import torch
    from trl import DPOConfig  # type: ignore[attr-defined]

    use_cpu = compute["device"] == "cpu" or not torch.cuda.is_available()
    # optimizer steps are global: each one takes a batch from every process
    steps = steps_for(pair_count, settings["dpo"]["train"], launched_world_size())
    args = DPOConfig(
        **dpo_args(
            settings,
            seed=seed,
            trainer_dir=out_dir / TRAINER_DIR,
            steps_hint=steps,
            use_cpu=use_cpu,
            mixed_precision=str(compute["mixed_precision"]),
        )
    )
    return args, steps


def _resume_point_of_run(
    out_dir: Path, resume: bool, group: Group, log: Callable[[str], None]
) -> tuple[tuple[Path, int] | None, list[dict[str, Any]]]:
    """Main process: the trainer checkpoint to continue from (None: start over, clearing
    out_dir), with the metric rows kept up to it. Other processes get None and [] here."""
    if not group.is_main:
        return None, []
    point = _resume_point(out_dir / TRAINER_DIR) if resume else None
    kept_rows: list[dict[str, Any]] = []
    if point is None:
        if resume:
            log("no complete trainer checkpoint to resume from; starting over")
        _start_over(out_dir)
    else:
        log(f"continuing from step {point[1]}")
        kept_rows = _trim_after(out_dir, point[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    return point, kept_rows


def _make_trainer(
    policy_dir: Path,
    reference_dir: Path,
    rows: list[dict[str, str]],
    settings: dict[str, Any],
    *,
    args: Any,
    seed: int,
    out_dir: Path,
    log: Callable[[str], None],
    metadata: dict[str, Any],
    callbacks: Sequence[TrainerCallback],
) -> tuple[Any, PolicyCheckpoints]:
    """DPOTrainer with our callbacks (progress, metrics.jsonl, policy checkpoints)."""
    import torch
    from datasets import Dataset
    from trl import DPOTrainer  # type: ignore[attr-defined]

    dpo = settings["dpo"]
    trust = bool(settings["trust_remote_code"])
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    # float32 master weights whatever the checkpoint's dtype: AdamW on bf16 weights rounds most
    # small updates away; bf16/fp16 only as autocast (DPOConfig's bf16/fp16); the frozen
    # reference may stay in the checkpoint's dtype
    policy = load_causal_lm(
        policy_dir, trust_remote_code=trust, tokenizer=tokenizer, dtype=torch.float32
    )
    reference = load_causal_lm(reference_dir, trust_remote_code=trust, tokenizer=tokenizer)
    metrics = MetricsFile(out_dir / METRICS_FILE)

    def describe(step: int, epoch: float) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": round(epoch, 6),
            "method": "dpo",
            "beta": float(dpo["beta"]),
            "loss_type": str(dpo["loss_type"]),
            "checkpoint_every": int(settings["checkpoint_every"]),
            "train": dict(dpo["train"]),
            "seed": seed,
            "metrics": metrics.last if metrics.last.get("step") == step else {},
            "metadata": metadata,
        }

    saver = PolicyCheckpoints(out_dir / CHECKPOINTS_DIR, describe, log, metrics)
    trainer = without_printer(
        DPOTrainer(
            model=policy,
            ref_model=reference,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=args,
            callbacks=[progress_callback(log, "policy"), metrics, saver, *callbacks],
        )
    )
    return trainer, saver


def _restore_policy_checkpoint(
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


def _truncated(prepared: Any, max_length: int) -> int:
    return sum(
        len(p) + max(len(c), len(r)) > max_length
        for p, c, r in zip(
            prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"], strict=True
        )
    )


def _report_prepared(
    trainer: Any, pair_count: int, settings: dict[str, Any], steps: int, log: Callable[[str], None]
) -> Any:
    """Refuse a dataset with nothing to train on; log what max_length dropped or truncated."""
    prepared = trainer.train_dataset
    max_length = int(settings["dpo"]["train"]["max_length"])
    if not len(prepared):
        raise RunError(
            f"every prompt fills policy.dpo.train.max_length ({max_length} tokens) on its own: "
            "no response token would be trained on; raise max_length"
        )
    dropped = pair_count - len(prepared)
    truncated = _truncated(prepared, max_length)
    if dropped:
        log(f"{dropped} pair(s) left out: their prompt alone fills max_length {max_length}")
    if truncated:
        log(f"{truncated} pair(s) longer than max_length {max_length} tokens are truncated")
    log(
        f"{len(prepared)} preference pairs, about {steps} steps, checkpoint every "
        f"{settings['checkpoint_every']}, {threads()} thread(s)"
    )
    return prepared


def _final_checkpoint(trainer: Any, saver: PolicyCheckpoints, out_dir: Path, group: Group) -> Path:
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
