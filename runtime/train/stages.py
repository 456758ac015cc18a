"""The training stages: SFT and the reward model (TRL trainers on accelerate).

Both run through TRL so that a team gets the maintained implementations;
what rlhfspec adds is around them: deterministic data and splits, the
holdout by prompt, checkpoints in the run directory for resume, the reward
model's evaluation and gates, and metadata that ties every checkpoint to its
annotation batches, criteria version and data hashes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.common.prompt_messages import check_messages_file
from rlhfspec.common.templating import markdown_inline as md
from rlhfspec.runtime.annotation.aggregate import read_jsonl_rows
from rlhfspec.runtime.prompts.pool import HOLDOUT_FILE, pool_with_holdout, read_holdout
from rlhfspec.runtime.stage_api import Gate, StageContext, StageOutcome, apply_gates
from rlhfspec.runtime.train.common import (
    fresh_checkpoints,
    quiet_transformers,
    read_pairs,
    resolve,
    seed_everything,
    steps_for,
    threads,
    trainer_args,
)
from rlhfspec.runtime.train.formatting import ChatFormat, PromptInput, stage_format, word_count
from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhfspec.runtime.train.progress import progress_callback
from rlhfspec.runtime.train.reward_eval import check_gates, evaluate_pairs
from rlhfspec.runtime.train.scale import (
    compute_record,
    group,
    lora_config,
    quantization,
    run_trainer,
    save_trained,
    stage_compute,
)
from rlhfspec.runtime.train.scoring import REWARD_META, score_texts

SFT_META = "rlhfspec_sft.json"


def sft_stage(ctx: StageContext) -> StageOutcome:
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    quiet_transformers()
    cfg = ctx.settings["sft"]
    seed_everything(int(ctx.settings["seed"]))
    rows = _demonstrations(ctx, cfg["data"])
    base = resolve(ctx, cfg["base_model"])
    compute = stage_compute(ctx)
    tokenizer = load_tokenizer(base, trust_remote_code=cfg["trust_remote_code"])
    model = load_causal_lm(
        base,
        trust_remote_code=cfg["trust_remote_code"],
        tokenizer=tokenizer,
        quantization_config=quantization(compute),
    )
    fmt = stage_format(ctx, tokenizer)
    dataset = Dataset.from_list(
        [
            {
                "prompt": fmt.prompt(pair_prompt(r)),
                "completion": fmt.response(pair_prompt(r), r["response"]),
            }
            for r in rows
        ]
    )
    checkpoints = ctx.path("sft/checkpoints")
    fresh_checkpoints(ctx, checkpoints)
    steps = steps_for(len(rows), cfg["train"])
    ctx.log(
        f"{len(rows)} demonstrations, about {steps} steps, {group().world} process(es), "
        f"{threads()} thread(s) each"
    )

    def build(tracking: dict[str, Any]) -> Any:
        return SFTTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=dataset,
            args=SFTConfig(**trainer_args(ctx, cfg["train"], checkpoints, steps, tracking)),
            callbacks=[progress_callback(ctx.log, "sft")],
            peft_config=lora_config(compute, "CAUSAL_LM"),
        )

    trainer, loss, tracking = run_trainer(ctx, build, checkpoints)
    metadata = {
        "format": "rlhfspec.model_meta/1",
        "stage": "sft",
        "base_model": cfg["base_model"],
        "resolved_base_model": str(base),
        "chat_template": fmt.record(),
        "data": {
            "path": cfg["data"],
            "sha256": sha256_file(ctx.project.path(cfg["data"])),
            "rows": len(rows),
        },
        "train": cfg["train"],
        "seed": ctx.settings["seed"],
        "threads": threads(),
        "plan_fingerprint": ctx.plan["fingerprint"],
        "train_loss": round(loss, 6),
        "compute": compute_record(compute, trainer, base),
        "tracking": tracking,
    }
    tokenizer.chat_template = fmt.template  # the saved model says how it was trained
    save_trained(trainer, tokenizer, ctx.path("models/sft"), metadata, SFT_META)
    keys = ("data", "train_loss", "threads", "compute", "tracking", "chat_template")
    return StageOutcome(
        ["models/sft"],
        {k: metadata[k] for k in keys},
        summary=f"train loss {metadata['train_loss']:.4f} on {len(rows)} demonstrations",
    )


def _demonstrations(ctx: StageContext, data: str) -> list[dict[str, Any]]:
    """The SFT rows to train on: outside the production holdout, inside `prompts.focus`."""
    holdout = read_holdout(ctx.upstream(HOLDOUT_FILE))
    held = {row["id"] for row in holdout}
    check_messages_file(ctx.project.path(data), data)  # multi-turn prompts: well formed
    rows = [
        r
        for r in read_jsonl_rows(ctx.project.path(data), data, ("prompt", "response"))
        if r.get("prompt_id") not in held
    ]
    focus = ctx.settings.get("prompts", {}).get("focus")  # in the settings only when set
    if focus:
        pool = pool_with_holdout(ctx.project, holdout)
        kept = [
            r
            for r in rows
            if r.get("prompt_id") in pool.by_id and pool.in_focus(pool.by_id[r["prompt_id"]])
        ]
        ctx.log(f"prompts.focus: {len(kept)} of {len(rows)} demonstrations inside the focus")
        rows = kept
    if not rows:
        raise RunError(f"{data}: no demonstrations left to train on")
    return rows


def split_by_prompt(
    pairs: list[dict[str, Any]], share: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """Holdout by prompt: no prompt has pairs on both sides. Deterministic for the seed."""
    prompts = sorted({p["prompt_id"] for p in pairs})
    random.Random(f"reward-model-holdout:{seed}").shuffle(prompts)
    n_val = max(1, round(share * len(prompts))) if len(prompts) > 1 else 0
    held = set(prompts[:n_val])
    train = [p for p in pairs if p["prompt_id"] not in held]
    validation = [p for p in pairs if p["prompt_id"] in held]
    return train, validation


def pair_prompt(pair: dict[str, Any]) -> PromptInput:
    """A pair's (or demonstration's) prompt for the formatter: its messages when multi-turn."""
    messages = pair.get("messages")
    return messages if messages else str(pair["prompt"])


def fit_pairs(
    fmt: ChatFormat, tokenizer: Any, pairs: list[dict[str, Any]], max_length: int
) -> tuple[list[dict[str, str]], int]:
    """Formatted training rows within `max_length` tokens, and how many were too long (TRL
    would drop them silently; here the count is logged and recorded)."""
    formatted = [
        (
            fmt.prompt(pair_prompt(p)),
            fmt.response(pair_prompt(p), p["chosen"]),
            fmt.response(pair_prompt(p), p["rejected"]),
        )
        for p in pairs
    ]
    eos = tokenizer.eos_token or ""
    # one batched call of the fast tokenizer; +1 for the EOS the trainer appends when missing
    texts = [q + t for q, c, r in formatted for t in (c, r)]
    lengths = [
        len(ids) + (0 if text.endswith(eos) else 1)
        for text, ids in zip(texts, tokenizer(texts)["input_ids"], strict=True)
    ]
    kept, too_long = [], 0
    for index, (prompt, chosen, rejected) in enumerate(formatted):
        if max(lengths[2 * index], lengths[2 * index + 1]) > max_length:
            too_long += 1
        else:
            kept.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return kept, too_long


def reward_model_stage(ctx: StageContext) -> StageOutcome:
    from datasets import Dataset
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

    quiet_transformers()
    cfg = ctx.settings["reward_model"]
    seed = int(ctx.settings["seed"])
    seed_everything(seed)
    pairs = read_pairs(ctx)
    train, validation = split_by_prompt(pairs, cfg["validation_share"], seed)
    if not train or not validation:
        raise RunError(
            f"{len(pairs)} preference pairs cannot be split into training and validation by prompt"
        )
    base, compute, tokenizer, model = _reward_start(ctx, cfg, seed)
    fmt = stage_format(ctx, tokenizer)
    max_length = int(cfg["train"]["max_length"])
    kept, too_long = fit_pairs(fmt, tokenizer, train, max_length)
    _report_fit(ctx, len(kept), too_long, max_length)
    checkpoints = ctx.path("reward_model/checkpoints")
    fresh_checkpoints(ctx, checkpoints)
    steps = steps_for(len(kept), cfg["train"])
    ctx.log(
        f"{len(kept)} training pairs, {len(validation)} validation pairs "
        f"({len({p['prompt_id'] for p in validation})} prompts), about {steps} steps, {threads()} thread(s)"
    )

    def build(tracking: dict[str, Any]) -> Any:
        return RewardTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(kept),
            args=RewardConfig(**trainer_args(ctx, cfg["train"], checkpoints, steps, tracking)),
            callbacks=[progress_callback(ctx.log, "reward_model")],
            peft_config=lora_config(compute, "SEQ_CLS"),
        )

    trainer, loss, tracking = run_trainer(ctx, build, checkpoints)
    # every process evaluates (under FSDP the forward pass is collective); the main one writes
    metrics, holdout_scores = evaluate_holdout(trainer.model, fmt, validation, max_length)
    gates = _reward_gates(ctx, metrics, cfg["gates"])
    metadata = {
        "format": "rlhfspec.model_meta/1",
        "stage": "reward_model",
        "base_model": "sft" if cfg["start_from_sft"] else cfg["base_model"],
        "resolved_base_model": str(base),
        "chat_template": fmt.record(),
        "criteria_version": ctx.settings["criteria"]["version"],
        "criteria_sha256": ctx.plan["criteria"]["sha256"],
        "annotation_batches": sorted({b for p in pairs for b in p["batches"]}),
        "data": {
            "pairs_sha256": sha256_file(ctx.upstream("preferences/pairs.jsonl")),
            "pairs": len(pairs),
            "train_pairs": len(kept),
            "train_pairs_over_max_length": too_long,
            "validation_pairs": len(validation),
            "validation_prompts": len({p["prompt_id"] for p in validation}),
        },
        "train": cfg["train"],
        "max_length": max_length,
        "seed": seed,
        "threads": threads(),
        "plan_fingerprint": ctx.plan["fingerprint"],
        "train_loss": round(loss, 6),
        "compute": compute_record(compute, trainer, base),
        "tracking": tracking,
        "gates": [g.to_dict() for g in gates],
        "holdout": {k: metrics[k] for k in ("accuracy", "pairs")},
    }
    tokenizer.chat_template = fmt.template  # `rlhfspec score` formats with it
    save_trained(trainer, tokenizer, ctx.path("models/reward_model"), metadata, REWARD_META)
    if not group().is_main:
        return StageOutcome([], {})
    return apply_gates(ctx, _reward_outcome(ctx, metadata, metrics, holdout_scores, gates))


def _report_fit(ctx: StageContext, kept: int, too_long: int, max_length: int) -> None:
    """Say how many training pairs max_length left out; refuse when none is left."""
    if too_long:
        ctx.log(f"{too_long} training pair(s) longer than max_length {max_length} tokens left out")
    if not kept:
        raise RunError(
            f"all {too_long} training pairs are longer than reward_model.train.max_length "
            f"({max_length} tokens) as the chat template formats them; raise max_length"
        )


def _reward_start(
    ctx: StageContext, cfg: dict[str, Any], seed: int
) -> tuple[Any, dict[str, Any], Any, Any]:
    """The reward model's starting point (the SFT model or its base model), the stage's
    compute settings, its tokenizer, and the model with a fresh seeded score head."""
    base = ctx.upstream("models/sft") if cfg["start_from_sft"] else resolve(ctx, cfg["base_model"])
    compute = stage_compute(ctx)
    tokenizer = load_tokenizer(base, trust_remote_code=cfg["trust_remote_code"])
    model = load_reward_model(
        base,
        trust_remote_code=cfg["trust_remote_code"],
        tokenizer=tokenizer,
        seed=seed,
        quantization_config=quantization(compute),
    )
    return base, compute, tokenizer, model


def _reward_gates(
    ctx: StageContext, metrics: dict[str, Any], gate_settings: dict[str, Any]
) -> list[Gate]:
    gates = [
        Gate(g["name"], g["passed"], g["value"], g["threshold"], g["message"])
        for g in check_gates(metrics, gate_settings)
    ]
    for gate in gates:
        gate.overridden = not gate.passed and gate.name in ctx.overrides
    return gates


def _reward_outcome(
    ctx: StageContext,
    metadata: dict[str, Any],
    metrics: dict[str, Any],
    holdout_scores: list[dict[str, Any]],
    gates: list[Gate],
) -> StageOutcome:
    """Write the reward model's evaluation (JSON, Markdown, holdout scores); the outcome."""
    report = {"format": "rlhfspec.reward_model_eval/1", "metadata": metadata, "holdout": metrics}
    atomic_write_text(ctx.path("reward_model/eval.json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(ctx.path("reward_model/eval.md"), eval_markdown(metadata, metrics))
    atomic_write_text(
        ctx.path("reward_model/holdout_scores.jsonl"),
        "".join(json.dumps(row) + "\n" for row in holdout_scores),
    )
    length = metrics["length"]
    return StageOutcome(
        [
            "models/reward_model",
            "reward_model/eval.json",
            "reward_model/eval.md",
            "reward_model/holdout_scores.jsonl",
        ],
        {
            "train_loss": metadata["train_loss"],
            "holdout_accuracy": metrics["accuracy"],
            "pearson_reward_length": length["pearson_reward_length"],
            "preferred_shorter_accuracy": length["preferred_shorter"]["accuracy"],
            "data": metadata["data"],
            "compute": metadata["compute"],
            "tracking": metadata["tracking"],
            "chat_template": metadata["chat_template"],
        },
        gates,
        f"holdout accuracy {metrics['accuracy']:.3f} on {metrics['pairs']} pairs; "
        f"reward-length correlation {length['pearson_reward_length']}",
    )


def evaluate_holdout(
    model: Any, fmt: ChatFormat, validation: list[dict[str, Any]], max_length: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The holdout metrics, and each validation pair's two scores (holdout_scores.jsonl).
    Texts are formatted as in training (`fmt`), so the holdout measures what PPO will see."""
    chosen = score_texts(
        model,
        fmt.tokenizer,
        [fmt.full(pair_prompt(p), p["chosen"]) for p in validation],
        max_length=max_length,
    )
    rejected = score_texts(
        model,
        fmt.tokenizer,
        [fmt.full(pair_prompt(p), p["rejected"]) for p in validation],
        max_length=max_length,
    )
    scores = [
        {
            "item_id": p["item_id"],
            "prompt_id": p["prompt_id"],
            "chosen_id": p["chosen_id"],
            "rejected_id": p["rejected_id"],
            "chosen_score": round(c, 6),
            "rejected_score": round(r, 6),
        }
        for p, c, r in zip(validation, chosen, rejected, strict=True)
    ]
    return evaluate_pairs(
        chosen,
        rejected,
        [word_count(p["chosen"]) for p in validation],
        [word_count(p["rejected"]) for p in validation],
        [p.get("dimensions", {}) for p in validation],
    ), scores


def eval_markdown(metadata: dict[str, Any], metrics: dict[str, Any]) -> str:
    length = metrics["length"]
    lines = [
        "# Reward model evaluation",
        "",
        f"Criteria version {md(metadata['criteria_version'])}; annotation batches "
        f"{', '.join(md(b) for b in metadata['annotation_batches'])}; "
        f"base model {md(metadata['base_model'])}.",
        "",
        f"Holdout: {metrics['pairs']} pairs from {metadata['data']['validation_prompts']} prompts "
        "(split by prompt: no prompt is on both sides).",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {metrics['accuracy']} |",
        f"| accuracy where the preferred response is shorter | {length['preferred_shorter']['accuracy']} "
        f"({length['preferred_shorter']['pairs']} pairs) |",
        f"| accuracy where the preferred response is longer | {length['preferred_longer']['accuracy']} "
        f"({length['preferred_longer']['pairs']} pairs) |",
        f"| Pearson(reward, length in words) | {length['pearson_reward_length']} |",
        f"| Spearman(reward, length in words) | {length['spearman_reward_length']} |",
        f"| reward mean / std | {metrics['reward_distribution']['mean']} / {metrics['reward_distribution']['std']} |",
        "",
        "## Accuracy per dimension",
        "",
        "| dimension | accuracy | pairs |",
        "| --- | --- | --- |",
    ]
    for name, value in metrics["per_dimension"].items():
        lines.append(f"| {md(name)} | {value['accuracy']} | {value['pairs']} |")
    lines += [
        "",
        "## Gates",
        "",
        "| gate | value | threshold | passed |",
        "| --- | --- | --- | --- |",
    ]
    for gate in metadata["gates"]:
        state = "yes" if gate["passed"] else ("overridden" if gate["overridden"] else "no")
        lines.append(f"| {md(gate['name'])} | {gate['value']} | {gate['threshold']} | {state} |")
    return "\n".join(lines) + "\n"


def trained_model_path(run_dir: Path) -> Path:
    return run_dir / "models" / "reward_model"
