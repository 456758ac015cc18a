"""The policy stages: optimisation (PPO or DPO), evaluation at every checkpoint, selection.

Output quality can peak early and then degrade as the policy over-optimises
the reward model, so every checkpoint is evaluated on the same seeded
prompt sets (validation, adversarial, production holdout) and the
deployment candidate is the best one that passes every reward-hacking guard,
or the one human evaluators rate highest when their judgements exist.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.runtime.evaluation.files import (
    EVAL_SUMMARY,
    PROMPT_SETS,
    prompt_sets_text,
    read_prompt_sets,
    read_summary,
    summary_text,
)
from rlhfspec.runtime.prompts.pool import (
    HOLDOUT_FILE,
    OUTSIDE_FOCUS,
    Prompt,
    PromptPool,
    pool_with_holdout,
    read_holdout,
)
from rlhfspec.runtime.stage_api import Gate, StageContext, StageOutcome, apply_gates

if TYPE_CHECKING:  # the stages import training modules only when they train
    from rlhfspec.runtime.train.formatting import ChatFormat

CHECKPOINT_INDEX = "models/policy/checkpoints.json"
CHECKPOINT_INDEX_FORMAT = "rlhfspec.checkpoint_index/1"


def prompt_pool(ctx: StageContext) -> PromptPool:
    """The prompt sources with the production holdout the prompts stage reserved."""
    return pool_with_holdout(ctx.project, read_holdout(ctx.upstream(HOLDOUT_FILE)))


def evaluation_prompts(ctx: StageContext, pool: PromptPool) -> dict[str, list[dict[str, Any]]]:
    """Seeded evaluation sets, disjoint from the prompts the policy trains on."""
    size = int(ctx.settings["evaluation"]["prompts_per_set"])
    rng = random.Random(f"evaluation-prompts:{ctx.settings['seed']}")
    available = pool.focused  # prompts.focus: the subset this project trains for
    adversarial = [p for p in available if p.kind == "adversarial"]
    regular = [p for p in available if p.kind != "adversarial"]
    holdout = [p for p in pool.prompts if p.id in pool.holdout_ids]
    sets: dict[str, list[dict[str, Any]]] = {}
    wanted = ctx.settings["evaluation"]["prompt_sets"]
    for name, candidates in (
        ("validation", regular),
        ("adversarial", adversarial),
        ("production_holdout", holdout),
    ):
        if name in wanted and candidates:
            chosen = rng.sample(candidates, min(size, len(candidates)))
            sets[name] = [_set_row(p) for p in chosen]
    outside = pool.outside_focus
    if outside:  # reported at every checkpoint, never trained on nor used for selection
        chosen = rng.sample(outside, min(size, len(outside)))
        sets[OUTSIDE_FOCUS] = [_set_row(p) for p in chosen]
    return sets


def _set_row(prompt: Prompt) -> dict[str, Any]:
    """An evaluation-set row: id and text, and the messages of a multi-turn prompt."""
    row: dict[str, Any] = {"id": prompt.id, "text": prompt.text}
    if prompt.messages is not None:
        row["messages"] = prompt.messages
    return row


def set_prompt(row: dict[str, Any]) -> Any:
    """An evaluation-set row's prompt for the formatter: its messages, else its text."""
    return row.get("messages") or row["text"]


def training_prompts(pool: PromptPool, eval_sets: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """Prompts for PPO rollouts (a text, or a multi-turn prompt's messages): available prompts
    minus every evaluation prompt."""
    held = {p["id"] for rows in eval_sets.values() for p in rows}
    return [p.chat for p in pool.focused if p.id not in held]


def start_model(ctx: StageContext) -> Path:
    """The policy's starting point, which is also its KL reference."""
    if ctx.settings["policy"]["start_from_sft"]:
        return ctx.upstream("models/sft")
    from rlhfspec.runtime.train.common import resolve

    resolved = resolve(ctx, ctx.settings["policy"]["base_model"])
    return Path(resolved) if not isinstance(resolved, Path) else resolved


def reward_model_version(ctx: StageContext) -> dict[str, Any]:
    folder = ctx.upstream("models/reward_model")
    meta = json.loads((folder / "rlhfspec_reward_model.json").read_text(encoding="utf-8"))
    return {
        "path": "models/reward_model",
        "sha256": sha256_file(folder / "model.safetensors"),
        "criteria_version": meta["criteria_version"],
        "annotation_batches": meta["annotation_batches"],
    }


def policy_stage(ctx: StageContext) -> StageOutcome:
    from rlhfspec.runtime.train.common import quiet_transformers

    quiet_transformers()
    policy = ctx.settings["policy"]
    pool = prompt_pool(ctx)
    eval_sets = evaluation_prompts(ctx, pool)
    atomic_write_text(ctx.path(PROMPT_SETS), prompt_sets_text(eval_sets))
    start = start_model(ctx)
    out_dir = ctx.path("models/policy")
    metadata: dict[str, Any] = {
        "kl": policy["kl"],
        "method": policy["method"],
        "start": "sft" if policy["start_from_sft"] else policy["base_model"],
        "plan_fingerprint": ctx.plan["fingerprint"],
    }
    if policy["method"] == "ppo":
        metadata["reward_model"] = reward_model_version(ctx)
    result = train_policy(ctx, training_prompts(pool, eval_sets), start, metadata)
    if policy["method"] == "ppo":
        checkpoints = [
            {"label": c.name, "step": step, "path": f"models/policy/checkpoints/{c.name}/policy"}
            for step, c in _ppo_checkpoints(out_dir)
        ]
        summary = f"{result.updates} PPO updates, {len(checkpoints)} checkpoints"
        metrics: dict[str, Any] = {
            "updates": result.updates,
            "final": result.final_metrics,
            "compute": _ppo_compute_record(ctx, result),
        }
    else:
        checkpoints = [
            {
                "label": c.name,
                "step": int(c.name.split("-")[1]),
                "path": f"models/policy/checkpoints/{c.name}",
            }
            for c in sorted((out_dir / "checkpoints").glob("step-*"))
        ]
        summary = f"{result['steps']} DPO steps, {len(checkpoints)} checkpoints"
        metrics = {
            k: result[k] for k in ("steps", "final_loss", "compute", "tracking") if k in result
        }
    if policy["method"] == "ppo" and ctx.settings["tracking"]["backend"] != "none":
        from rlhfspec.runtime.train.scale import tracking_dir, tracking_run_id

        metrics["tracking"] = {
            "backend": ctx.settings["tracking"]["backend"],
            "run_id": tracking_run_id(ctx),
            "dir": tracking_dir(ctx).relative_to(ctx.run_dir).as_posix(),
        }
    index = {
        "format": CHECKPOINT_INDEX_FORMAT,
        "start": str(start),
        "checkpoints": checkpoints,
        "metadata": metadata,
    }
    atomic_write_text(ctx.path(CHECKPOINT_INDEX), json.dumps(index, indent=2) + "\n")
    return StageOutcome(["models/policy", PROMPT_SETS], metrics, summary=summary)


def policy_training(ctx: StageContext) -> None:
    """The worker part of `policy_stage` (ranks > 0 of a launch), through the same
    `train_policy`.

    Rank 0 runs the whole stage (evaluation prompt sets, the checkpoint index, lineage); a
    worker needs only the trainer call. The trainers still compare a fingerprint of their
    arguments across processes (`Group.agree`), so mismatched data fails with a clear error.
    """
    from rlhfspec.runtime.train.common import quiet_transformers

    quiet_transformers()
    pool = prompt_pool(ctx)
    prompts = training_prompts(pool, evaluation_prompts(ctx, pool))
    # metadata goes into checkpoints, which only rank 0 writes
    train_policy(ctx, prompts, start_model(ctx), metadata={})


def train_policy(
    ctx: StageContext,
    prompts: list[Any],
    start: Path,
    metadata: dict[str, Any],
) -> Any:
    """Train PPO or DPO from `start`; the one call every process of the stage makes. Prompts
    and responses are formatted by the stage's chat format (from the start model's
    tokenizer), recorded in `metadata` and so in every checkpoint."""
    from rlhfspec.runtime.train.formatting import stage_format
    from rlhfspec.runtime.train.models import load_tokenizer

    spec = ctx.settings
    policy = spec["policy"]
    chat = stage_format(ctx, load_tokenizer(start, trust_remote_code=policy["trust_remote_code"]))
    metadata["chat_template"] = chat.record()
    if policy["method"] == "ppo":
        return _train_ppo(ctx, prompts, start, metadata, chat)
    return _train_dpo(ctx, start, metadata, chat)


def _train_ppo(
    ctx: StageContext, prompts: list[Any], start: Path, metadata: dict[str, Any], chat: ChatFormat
) -> Any:
    """PPO from `start` against the run's reward model, with the stage's compute settings."""
    from rlhfspec.runtime.policy.ppo import PPOSettings, train_ppo
    from rlhfspec.runtime.train.scale import MetricsTracker, group, tracking_env

    spec = ctx.settings
    policy = spec["policy"]
    compute = ctx.stage["compute"]
    settings = PPOSettings.from_spec(
        policy,
        int(spec["seed"]),
        cpu=True if compute["device"] == "cpu" else None,
        mixed_precision=str(compute["mixed_precision"]),
        gradient_checkpointing=bool(compute["gradient_checkpointing"]),
        lora=_ppo_lora(compute),
        strategy=str(compute["strategy"]),
        cpu_offload=bool(compute["fsdp"]["cpu_offload"]),
    )
    with tracking_env(ctx) as tracking:
        tracker = MetricsTracker(tracking, ctx.run_dir, group().is_main)
        try:
            result = train_ppo(
                start,
                start,
                ctx.upstream("models/reward_model"),
                prompts,
                settings,
                ctx.path("models/policy"),
                chat=chat,
                resume=ctx.resume,
                log=ctx.log,
                metadata=metadata,
                on_update=lambda row: tracker.log(int(row["update"]), row),
            )
        finally:
            tracker.close()
    return result


def _train_dpo(ctx: StageContext, start: Path, metadata: dict[str, Any], chat: ChatFormat) -> Any:
    """DPO from `start` on the aggregated preference pairs (the start is also the reference)."""
    from rlhfspec.runtime.policy.dpo import train_dpo
    from rlhfspec.runtime.train.scale import finish_tracking, lineage_record, tracking_env

    with tracking_env(ctx) as tracking:
        summary: dict[str, Any] = train_dpo(
            start,
            start,
            _dpo_pairs(ctx),
            ctx.settings["policy"],
            chat=chat,
            seed=int(ctx.settings["seed"]),
            out_dir=ctx.path("models/policy"),
            resume=ctx.resume,
            log=ctx.log,
            metadata=metadata,
            compute=ctx.stage["compute"],
            tracking=tracking,
        )
        finish_tracking(tracking)
    summary["tracking"] = lineage_record(tracking)
    return summary


def _dpo_pairs(ctx: StageContext) -> list[dict[str, Any]]:
    """The preference pairs' texts (and a multi-turn prompt's messages) for DPO."""
    from rlhfspec.runtime.train.common import read_pairs

    keep = ("prompt", "chosen", "rejected", "messages")
    return [{k: p[k] for k in keep if p.get(k) is not None} for p in read_pairs(ctx)]


def _ppo_compute_record(ctx: StageContext, result: Any) -> dict[str, Any]:
    """How PPO ran, for lineage: the strategy actually used (``single`` with one process,
    whatever the spec asked), and whether FSDP's CPU offload applied (accelerators only)."""
    from rlhfspec.runtime.train.scale import group

    compute = ctx.stage["compute"]
    record: dict[str, Any] = {
        "processes": group().world,
        "strategy": result.strategy,
        "gradient_checkpointing": bool(compute["gradient_checkpointing"]),
        "mixed_precision": compute["mixed_precision"],
    }
    if result.strategy == "fsdp":
        record["cpu_offload"] = result.cpu_offload
    return record


def _ppo_lora(compute: dict[str, Any]) -> dict[str, Any] | None:
    """PPO's LoRA settings (None without LoRA); the 4-bit base (QLoRA) is not PPO's yet."""
    lora = compute["lora"]
    if not lora["enabled"]:
        return None
    if lora["quantize"] != "none":
        raise RunError(
            "PPO trains LoRA adapters on a 16/32-bit base; QLoRA (lora.quantize: 4bit) is "
            "supported for SFT and the reward model only: set compute.stages.policy.lora."
            "quantize: none"
        )
    return {k: lora[k] for k in ("r", "alpha", "dropout", "target_modules")}


def _ppo_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for folder in sorted((out_dir / "checkpoints").glob("update-*")):
        info = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
        found.append((int(info["update"]), folder))
    return found


def eval_settings(spec: dict[str, Any], spec_dir: Path | None = None) -> Any:
    """Evaluation as PPO sees it: KL at the policy's sampling temperature (PPO's, or 1 for DPO,
    whose implicit KL is at temperature 1), PPO's missing-EOS penalty, the spec's device and
    precision, batched."""
    import torch

    from rlhfspec.runtime.evaluation.evaluate import EvalSettings

    evaluation, policy, compute = spec["evaluation"], spec["policy"], spec["compute"]
    device = compute["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EvalSettings(
        seed=int(spec["seed"]),
        max_new_tokens=int(evaluation["max_new_tokens"]),
        temperature=float(evaluation["temperature"]),
        samples_shown=int(evaluation["samples_shown"]),
        kl_estimator=policy["kl"]["estimator"],
        disqualifiers=tuple(
            (d["id"], d["detect"]["regex"])
            for d in spec["criteria"]["disqualifiers"]
            if "detect" in d
        ),
        batch_size=int(evaluation["batch_size"]),
        device=device,
        kl_temperature=float(policy["ppo"]["temperature"]) if policy["method"] == "ppo" else 1.0,
        missing_eos_penalty=float(policy["ppo"]["missing_eos_penalty"]),
        mixed_precision=str(compute["mixed_precision"]),
        chat_template=str(spec.get("prompts", {}).get("chat_template", "auto")),
        template_dir=spec_dir,
    )


def evaluate_stage(ctx: StageContext) -> StageOutcome:
    from rlhfspec.runtime.evaluation.evaluate import trajectory_svg
    from rlhfspec.runtime.train.common import quiet_transformers, seed_everything

    quiet_transformers()
    spec = ctx.settings
    seed_everything(int(spec["seed"]))
    index = json.loads(ctx.upstream(CHECKPOINT_INDEX).read_text(encoding="utf-8"))
    eval_sets = read_prompt_sets(
        json.loads(ctx.upstream(PROMPT_SETS).read_text(encoding="utf-8")), PROMPT_SETS
    )
    prompt_sets = {name: [set_prompt(p) for p in rows] for name, rows in eval_sets.items()}
    evaluation = spec["evaluation"]
    reference = Path(index["start"])
    targets = [{"label": "start", "step": 0, "path": str(reference)}] + [
        {**c, "path": str(ctx.path(c["path"]))} for c in index["checkpoints"]
    ]
    results = _evaluate_targets(ctx, targets, reference, prompt_sets)
    guards = evaluation["select"]["guards"]
    atomic_write_text(ctx.path("eval/trajectory.svg"), trajectory_svg(results, guards=guards))
    outputs = [f"eval/{t['label']}.json" for t in targets] + ["eval/trajectory.svg"]
    if evaluation["human_eval"]["enabled"]:
        # shown to people as text (a multi-turn prompt's transcript)
        shown = {name: [p["text"] for p in rows] for name, rows in eval_sets.items()}
        outputs += _export_human_eval(ctx, shown, results)
    table = _summary_table(results)
    atomic_write_text(ctx.path(EVAL_SUMMARY), summary_text(table))
    return StageOutcome(
        outputs + [EVAL_SUMMARY],
        {"checkpoints": table},
        summary=f"{len(results)} checkpoints evaluated on {', '.join(prompt_sets)}",
    )


def _evaluate_targets(
    ctx: StageContext,
    targets: list[dict[str, Any]],
    reference: Path,
    prompt_sets: dict[str, list[Any]],
) -> list[dict[str, Any]]:
    """Evaluate the start and every checkpoint in order, each against the start's responses,
    formatted as the plan's entry recorded (`check_planned_template`)."""
    from rlhfspec.runtime.evaluation.evaluate import evaluate_checkpoint, write_eval
    from rlhfspec.runtime.train.formatting import check_planned_template

    settings = eval_settings(ctx.settings, ctx.project.folder)
    reward_model = ctx.upstream("models/reward_model")
    results: list[dict[str, Any]] = []
    for target in targets:
        ctx.log(f"evaluating {target['label']} (step {target['step']})")
        result = evaluate_checkpoint(
            target["path"],
            reference,
            reward_model,
            prompt_sets,
            settings,
            start=results[0] if results else None,
            step=target["step"],
            label=target["label"],
        )
        check_planned_template(ctx, result["chat_template"])
        write_eval(result, ctx.path(f"eval/{target['label']}.json"))
        overall = result["overall"]
        ctx.log(
            f"{target['label']}: reward {overall['reward']['mean']}, KL {overall['kl']['mean']}, "
            f"words {overall['length']['words_mean']}, no EOS {overall['no_eos_rate']}, "
            f"win rate {overall.get('win_rate_vs_start')}"
        )
        results.append(result)
    return results


def _export_human_eval(
    ctx: StageContext, prompt_sets: dict[str, list[str]], results: list[dict[str, Any]]
) -> list[str]:
    """Blinded checkpoint-vs-start pairs for human evaluators; returns the paths written."""
    from rlhfspec.runtime.evaluation.selection import export_human_eval

    spec = ctx.settings

    def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            (p, r)
            for name in prompt_sets
            for p, r in zip(prompt_sets[name], result["responses"][name], strict=True)
        ]

    written = export_human_eval(
        {res["label"]: rows(res) for res in results[1:]},
        rows(results[0]),
        ctx.path("eval"),
        seed=int(spec["seed"]),
        per_checkpoint=int(spec["evaluation"]["human_eval"]["per_checkpoint"]),
        criteria_version=spec["criteria"]["version"],
    )
    return [str(p.relative_to(ctx.run_dir)) for p in written]


def _summary_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluated checkpoint: the figures selection and the handoff compare."""
    return [
        {
            "label": r["label"],
            "step": r["step"],
            "reward_mean": r["overall"]["reward"]["mean"],
            "kl_mean": r["overall"]["kl"]["mean"],
            "words_mean": r["overall"]["length"]["words_mean"],
            "length_reward_correlation": r["overall"]["length_reward_correlation"],
            "disqualifier_rate": r["overall"]["disqualifier_rate"],
            "no_eos_rate": r["overall"]["no_eos_rate"],
            "win_rate_vs_start": r["overall"].get("win_rate_vs_start"),
        }
        for r in results
    ]


HUMAN_JUDGEMENTS = "eval/human_eval/judgements.jsonl"


def select_stage(ctx: StageContext) -> StageOutcome:
    from rlhfspec.runtime.evaluation.selection import import_human_eval, select_checkpoint

    summary = read_summary(
        json.loads(ctx.upstream(EVAL_SUMMARY).read_text(encoding="utf-8")), EVAL_SUMMARY
    )
    evals = [
        json.loads(ctx.upstream(f"eval/{row['label']}.json").read_text(encoding="utf-8"))
        for row in summary
    ]
    select = ctx.settings["evaluation"]["select"]
    human = None
    judgements = ctx.path(HUMAN_JUDGEMENTS)
    if judgements.exists():
        human = import_human_eval(judgements, ctx.path("eval/human_eval/key.json"))
        ctx.log(f"human judgements found for {len(human)} checkpoint(s)")
    candidates = [e for e in evals if e["label"] != "start"]
    if not candidates:
        raise RunError("the policy stage produced no checkpoints to select from")
    decision = select_checkpoint(
        candidates,
        maximize=select["maximize"],
        guards=select["guards"],
        human=human,
        prefer_human=select["prefer_human_eval"],
    )
    selection = {"format": "rlhfspec.selection/1", **decision}
    atomic_write_text(ctx.path("selection.json"), json.dumps(selection, indent=2) + "\n")
    chosen = decision.get("chosen")
    gate = Gate(
        "deployment_candidate",
        chosen is not None,
        None,
        None,
        decision.get("reason")
        or (f"selected {chosen['label']}" if chosen else "no checkpoint passes"),
    )
    label = chosen["label"] if chosen else None
    outcome = StageOutcome(
        ["selection.json"],
        {"chosen": label, "rule": decision.get("rule")},
        [gate],
        summary=f"deployment candidate: {label} (evidence: selection.json, eval/{label}.json)"
        if label
        else "no checkpoint passes every guard",
    )
    return apply_gates(ctx, outcome)
