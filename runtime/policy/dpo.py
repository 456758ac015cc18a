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
    checkpoints/step-N/adapter/        under LoRA: the adapters (merged weights beside them)
    trainer/checkpoint-4/...           HF Trainer state for resume (the last two are kept)

Several processes (``torchrun --nproc_per_node N`` / ``accelerate launch --num_processes N``):
every process calls `train_dpo` with the same arguments; the HF Trainer wraps the policy in
DDP (FSDP2 on GPUs with ``strategy: fsdp``) and gives each process 1/N of every batch.
``batch_size`` is the global batch, as for SFT and the reward model: each process takes
``batch_size / N`` pairs, so one optimizer step covers ``batch_size *
gradient_accumulation_steps`` pairs with any number of processes and the same spec trains on
the same batches (TRL gathers the logged metrics over processes, so they are global). The run directory has one writer, the
main process: it clears or trims ``out_dir``, restores a missing policy checkpoint, writes
metrics.jsonl, the ``step-N`` checkpoints and the log lines; the others wait at a barrier
wherever they could otherwise read something half-written. The HF Trainer itself already
writes its ``trainer/`` checkpoints from the main process (plus one RNG file per process).
"""

from __future__ import annotations

import math
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
from rlhfspec.runtime.policy.dpo_checkpoints import (
    CHECKPOINT_META,
    CHECKPOINTS_DIR,
    METRICS_FILE,
    TRAINER_DIR,
    MetricsFile,
    PolicyCheckpoints,
    checkpoint_name,
    final_checkpoint,
    list_checkpoints,
    restore_policy_checkpoint,
    resume_point_of_run,
)
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
from rlhfspec.runtime.train.scale import per_device

__all__ = ["CHECKPOINT_META", "METRICS_FILE", "checkpoint_name", "list_checkpoints", "train_dpo"]


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
    world: int = 1,
) -> dict[str, Any]:
    """DPOConfig keyword arguments from the spec's resolved ``policy`` block, for `world`
    processes (``batch_size`` is the global batch: each process takes its share).

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
        "per_device_train_batch_size": per_device(
            int(train["batch_size"]), "policy.dpo.train.batch_size", world
        ),
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
    tracking: Mapping[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train the policy at `policy_dir` with DPO against the frozen `reference_dir` model.

    `pairs` are raw texts (``prompt``, ``chosen``, ``rejected``, and ``messages`` for a
    multi-turn prompt), formatted by `chat` (`dpo_rows`; None: the policy tokenizer's own
    format, as ``prompts.chat_template: auto``); `settings` is the spec's
    resolved ``policy`` block (``dpo.beta``, ``dpo.loss_type``, ``dpo.train``,
    ``checkpoint_every``, ``trust_remote_code``). `metadata` (data hashes, annotation batches,
    plan fingerprint...) is copied into every checkpoint's ``checkpoint.json`` so that each
    one can be traced on its own. `compute` is the stage's ``compute`` entry (the schema's
    defaults for keys it lacks); under LoRA the reference is the policy's base with its
    adapters disabled, not a second copy. `tracking` is what `scale.tracking_env` yields.
    `callbacks` are extra TrainerCallbacks, run after the ones here (tests that interrupt).

    Every process of a launch calls this alike (module docstring); only the main one writes
    `out_dir` and logs. With `resume`, training continues from the newest complete trainer
    checkpoint under ``out_dir/trainer`` (starting over if there is none); otherwise earlier
    checkpoints and metrics are removed first. Returns a summary (steps, checkpoints, losses,
    seconds, pairs trained, truncated or dropped by max_length, compute), alike on every process.
    """
    started = time.perf_counter()
    quiet_transformers()
    if not pairs:
        raise RunError("no preference pairs to train the policy on")
    seed_everything(seed)
    out_dir = Path(out_dir)
    compute = {**default_of("compute"), **(compute or {})}  # keys not given: the schema's
    args, steps = _dpo_config(settings, seed, out_dir, len(pairs), compute, tracking or {})
    group, log, point, kept_rows = _join_run(
        args,
        out_dir,
        resume,
        log,
        [dict(settings), seed, pairs, str(policy_dir), str(reference_dir)],
    )
    trainer, saver = _make_trainer(
        policy_dir,
        reference_dir,
        dpo_rows(pairs, chat or _tokenizer_chat(policy_dir, settings)),
        settings,
        args=args,
        seed=seed,
        out_dir=out_dir,
        log=log,
        metadata=metadata,
        callbacks=callbacks,
        compute=compute,
    )
    if group.is_main and point is not None:
        restore_policy_checkpoint(saver, point, kept_rows, log)
    prepared = _report_prepared(trainer, len(pairs), settings, steps, log)
    with warnings.catch_warnings():
        # TRL reads the deprecated alias on every step; the warning is for TRL, not for a run's log
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        result = trainer.train(resume_from_checkpoint=str(point[0]) if point else None)
    final = final_checkpoint(trainer, saver, out_dir, group)
    summary = _summary(trainer, result, out_dir, final, pairs, prepared, settings)
    summary.update(
        resumed_from_step=point[1] if point else None,
        seconds=round(time.perf_counter() - started, 3),
        compute=_compute_summary(compute, trainer, policy_dir),
    )
    return summary


def _tokenizer_chat(policy_dir: Path, settings: Mapping[str, Any]) -> ChatFormat:
    """The policy tokenizer's own format, as ``prompts.chat_template: auto``."""
    trust = bool(settings["trust_remote_code"])
    return chat_format(load_tokenizer(policy_dir, trust_remote_code=trust), AUTO)


def _join_run(
    args: Any, out_dir: Path, resume: bool, log: Callable[[str], None], agreed: list[Any]
) -> tuple[Group, Callable[[str], None], tuple[Path, int] | None, list[dict[str, Any]]]:
    """This process's group, its log, and the run's resume point (the main process's,
    broadcast) with the metric rows kept up to it; every process checks that the others got
    the same `agreed` arguments."""
    # Setting up the device joins the process group (under torchrun), which the clean-up
    # below needs: the other processes must not look at out_dir while the main one edits it.
    _ = args.device
    group = Group.current() if args.world_size > 1 else SINGLE
    if not group.is_main:
        log = _silent  # one process speaks for the run (progress, the savers, this)
    point, kept_rows = resume_point_of_run(out_dir, resume, group, log)
    if not group.single:
        chosen = group.broadcast(None if point is None else (str(point[0]), point[1]))
        point = None if chosen is None else (Path(chosen[0]), int(chosen[1]))
        group.agree("the DPO run (settings, pairs, models or resume point)", [*agreed, chosen])
    return group, log, point, kept_rows


def _summary(
    trainer: Any,
    result: Any,
    out_dir: Path,
    final: Path,
    pairs: list[dict[str, Any]],
    prepared: Any,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """What `train_dpo` returns about the finished training."""
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
        "pairs": len(pairs),
        "pairs_trained": len(prepared),
        "pairs_dropped": len(pairs) - len(prepared),
        "pairs_truncated": _truncated(prepared, int(settings["dpo"]["train"]["max_length"])),
        "threads": threads(),
    }


def _compute_summary(compute: Mapping[str, Any], trainer: Any, policy_dir: Path) -> dict[str, Any]:
    """How the run used the machine (lineage's ``compute`` record, as SFT's), and what the
    KL reference was: a frozen copy, or the base with the LoRA adapters disabled."""
    from rlhfspec.runtime.train.scale import compute_record

    record = compute_record(dict(compute), trainer, policy_dir)
    record["reference"] = "adapters disabled" if trainer.ref_model is None else "frozen copy"
    return record


def _dpo_config(
    settings: dict[str, Any],
    seed: int,
    out_dir: Path,
    pair_count: int,
    compute: Mapping[str, Any],
    tracking: Mapping[str, Any],
) -> tuple[Any, int]:
    """TRL's DPOConfig for the run, and about how many optimizer steps it will take.

    ``batch_size`` is the global batch, as for SFT and the reward model: each of the N
    processes takes ``batch_size / N`` pairs per step, so a spec trains on the same batches
    with any number of processes."""
    import torch
    from trl import DPOConfig  # type: ignore[attr-defined]

    from rlhfspec.runtime.train.scale import scale_args, tracking_args

    use_cpu = compute["device"] == "cpu" or not torch.cuda.is_available()
    world = launched_world_size()
    steps = steps_for(pair_count, settings["dpo"]["train"])
    kwargs = dpo_args(
        settings,
        seed=seed,
        trainer_dir=out_dir / TRAINER_DIR,
        steps_hint=steps,
        use_cpu=use_cpu,
        mixed_precision=str(compute["mixed_precision"]),
        world=world,
    )
    kwargs.update(scale_args(dict(compute), use_cpu, world))
    kwargs.update(tracking_args(dict(tracking)))
    return DPOConfig(**kwargs), steps


def _load_models(
    policy_dir: Path, reference_dir: Path, trust: bool, compute: Mapping[str, Any]
) -> tuple[Any, Any, Any]:
    """Tokenizer, policy and reference (None under LoRA: the base with adapters disabled).

    float32 master weights whatever the checkpoint's dtype: AdamW on bf16 weights rounds most
    small updates away; bf16/fp16 only as autocast (DPOConfig's bf16/fp16); the frozen
    reference may stay in the checkpoint's dtype. QLoRA loads the policy's base in 4-bit."""
    import torch

    from rlhfspec.runtime.train.scale import quantization

    tokenizer = load_tokenizer(policy_dir, trust_remote_code=trust)
    policy = load_causal_lm(
        policy_dir,
        trust_remote_code=trust,
        tokenizer=tokenizer,
        dtype=torch.float32,
        quantization_config=quantization(dict(compute)),
    )
    if compute["lora"]["enabled"]:
        if Path(reference_dir).resolve() != Path(policy_dir).resolve():
            raise RunError(
                "with LoRA the DPO reference is the policy's base with its adapters disabled: "
                "the reference model must be the policy's starting model"
            )
        return tokenizer, policy, None
    return (
        tokenizer,
        policy,
        load_causal_lm(reference_dir, trust_remote_code=trust, tokenizer=tokenizer),
    )


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
    compute: Mapping[str, Any],
) -> tuple[Any, PolicyCheckpoints]:
    """DPOTrainer with our callbacks (progress, metrics.jsonl, policy checkpoints)."""
    from datasets import Dataset
    from trl import DPOTrainer  # type: ignore[attr-defined]

    from rlhfspec.runtime.train.scale import lora_config

    dpo = settings["dpo"]
    trust = bool(settings["trust_remote_code"])
    tokenizer, policy, reference = _load_models(policy_dir, reference_dir, trust, compute)
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
    saver.base = (policy_dir, trust) if compute["lora"]["enabled"] else None
    trainer = without_printer(
        DPOTrainer(
            model=policy,
            ref_model=reference,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=args,
            callbacks=[progress_callback(log, "policy"), metrics, saver, *callbacks],
            peft_config=lora_config(dict(compute), "CAUSAL_LM"),
        )
    )
    return trainer, saver


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
