"""What every training stage shares: threads, seeds, model resolution, progress, checkpoints.

CPU runs must reproduce exactly, so the thread count is fixed (bits change
with it) and OpenMP threads do not spin (a spinning pool slows training by
an order of magnitude when another process holds a core). Training
checkpoints go to the stage's folder in the run directory, so a killed
stage continues from its last one on `--resume`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.annotation.aggregate import read_jsonl_rows  # noqa: E402
from rlhfspec.runtime.stage_api import StageContext  # noqa: E402
from rlhfspec.runtime.train.models import resolve_model  # noqa: E402


def threads() -> int:
    """Training threads: RLHFSPEC_THREADS, else up to 2 shared by the local processes.

    Fixed (not left to torch) so CPU runs reproduce; divided among the processes
    a launcher started on this machine so they do not oversubscribe the cores.
    """
    value = os.environ.get("RLHFSPEC_THREADS")
    if value:
        return max(1, int(value))
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(2, os.cpu_count() or 1) // local)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and pin the thread count."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads())


def cache_dir() -> Path:
    """Where builtin models are cached: RLHFSPEC_CACHE, else the user's cache folder."""
    if os.environ.get("RLHFSPEC_CACHE"):
        return Path(os.environ["RLHFSPEC_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "rlhfspec"


def corpus_texts(ctx: StageContext) -> Iterator[str]:
    """The project's own texts, in a fixed order: what builtin:tiny's tokenizer learns from."""
    from rlhfspec.runtime.prompts.pool import prompt_texts

    spec = ctx.settings
    for source in spec["prompts"]["sources"]:
        for prompt in prompt_texts(ctx.project, source["path"]).values():
            yield prompt.text
    responses = spec["annotation"].get("responses")
    if responses:
        for row in read_jsonl_rows(ctx.project.path(responses), responses, ("id", "text")):
            yield row["text"]
    sft = spec["sft"]
    if sft["enabled"] and "data" in sft:
        for row in read_jsonl_rows(
            ctx.project.path(sft["data"]), sft["data"], ("prompt", "response")
        ):
            yield row["response"]


def resolve(ctx: StageContext, ref: str) -> Path | str:
    """A spec's base model: a local folder relative to the spec's folder (as every path in a
    spec; never the current directory), builtin:tiny built from the project's texts, or a hub
    id (``org/name@revision`` is loaded at that revision)."""
    from rlhfspec.common.model_ref import kind_of

    if kind_of(ref, ctx.project.folder) == "local":
        folder = ctx.project.path(ref)
        if not folder.is_dir():
            raise RunError(f"base model folder {ref!r} does not exist in {ctx.project.folder}")
        return folder
    return resolve_model(
        ref,
        texts_for_builtin=lambda: corpus_texts(ctx),
        seed=int(ctx.settings["seed"]),
        cache_dir=cache_dir(),
    )


def use_cpu(ctx: StageContext) -> bool:
    device = ctx.settings["compute"]["device"]
    return device == "cpu" or not torch.cuda.is_available()


def trainer_args(
    ctx: StageContext,
    train: dict[str, Any],
    checkpoints: Path,
    steps_hint: int,
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Arguments common to TRL's configs, from the spec's training block and the stage's
    compute and tracking settings (`rlhfspec.runtime.train.scale`)."""
    from rlhfspec.runtime.train.scale import (
        group,
        per_device,
        scale_args,
        stage_compute,
        tracking_args,
    )

    cpu = use_cpu(ctx)
    compute = stage_compute(ctx)
    precision = compute["mixed_precision"]
    world = group().world
    save_steps = max(1, steps_hint // 4)
    return {
        "output_dir": str(checkpoints),
        "num_train_epochs": float(train["epochs"]),
        "per_device_train_batch_size": per_device(
            int(train["batch_size"]), f"{ctx.stage['name']}.train.batch_size", world
        ),
        "gradient_accumulation_steps": int(train["gradient_accumulation_steps"]),
        "learning_rate": float(train["learning_rate"]),
        "weight_decay": float(train["weight_decay"]),
        # transformers 5 reads a float below 1 as a share of the total steps
        "warmup_steps": float(train["warmup_ratio"]) if train["warmup_ratio"] < 1 else steps_hint,
        "max_length": int(train["max_length"]),
        "seed": int(ctx.settings["seed"]),
        "data_seed": int(ctx.settings["seed"]),
        "use_cpu": cpu,
        "bf16": precision == "bf16" and not cpu,
        "fp16": precision == "fp16" and not cpu,
        **scale_args(compute, cpu, world),
        **tracking_args(tracking or {}),
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "logging_steps": max(1, steps_hint // 10),
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def steps_for(rows: int, train: dict[str, Any], processes: int = 1) -> int:
    per_step = int(train["batch_size"]) * int(train["gradient_accumulation_steps"]) * processes
    return max(1, int(-(-rows // per_step) * float(train["epochs"])))


def resume_checkpoint(ctx: StageContext, checkpoints: Path) -> str | None:
    """The last training checkpoint of an interrupted stage, when resuming."""
    if not ctx.resume or not checkpoints.is_dir():
        return None
    last = get_last_checkpoint(str(checkpoints))
    if not last:
        return None
    ctx.log(f"continuing from {Path(last).name}")
    return str(last)


def fresh_checkpoints(ctx: StageContext, checkpoints: Path) -> None:
    """A stage that starts over must not resume from a stale checkpoint."""
    from rlhfspec.runtime.train.scale import group

    if not ctx.resume and checkpoints.exists() and group().is_main:
        shutil.rmtree(checkpoints)
    group().barrier()


def save_model(
    model: Any,
    tokenizer: Any,
    target: Path,
    metadata: dict[str, Any],
    meta_name: str,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write weights (safetensors), tokenizer and metadata to a temp folder, then swap it in.

    A PEFT model is written twice: its adapters under ``adapter/`` (with the base model's
    identity in the metadata), and the adapters merged into the base weights at the top, so
    that every later stage loads the folder as an ordinary model. `state_dict` is the full
    state gathered from FSDP shards.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
        state_dict = None
    extra = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(tmp, safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp)
    (tmp / meta_name).write_text(
        json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def read_pairs(ctx: StageContext) -> list[dict[str, Any]]:
    """Preference pairs joined with their provenance (the two files are aligned by line)."""
    pairs_path = ctx.upstream("preferences/pairs.jsonl")
    prov_path = ctx.upstream("preferences/provenance.jsonl")
    pairs = [
        json.loads(line)
        for line in pairs_path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    prov = [
        json.loads(line)
        for line in prov_path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if len(pairs) != len(prov):
        raise RunError(
            "preferences/pairs.jsonl and provenance.jsonl differ in length; rerun the aggregate stage"
        )
    if not pairs:
        raise RunError(
            "no preference pairs to train on; check the annotation QC and aggregation reports"
        )
    return [{**p, **q} for p, q in zip(pairs, prov, strict=True)]


def quiet_transformers() -> None:
    """Keep library chatter (load reports, shard bars) out of the run's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def without_printer(trainer: Any) -> Any:
    """Trainer prints raw log dicts when tqdm is off; the progress callback (runtime/train/progress.py) says it better."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
