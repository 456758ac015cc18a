"""The data and models of a verl job, prepared from a run: `rlhfspec compile --target verl`.

The compiler target (`rlhfspec.compiler.targets.verl`) maps the settings; this
module supplies what the job reads besides its config, taken from a run that
finished the reward-model stage:

* `data/train.parquet`: the prompts our own PPO would train on (the same
  pool: every available prompt minus the evaluation sets; the production
  holdout is never available), one chat message list per row, in the columns
  verl's RLHFDataset reads; `data/val.parquet`: the validation set, which verl
  requires but the job does not train on; `eval/prompt_sets.json`: the
  evaluation sets the import evaluates the checkpoints on.
* `model/`: the policy's starting point (the run's SFT model or the base
  model), and `reward_model/`: the run's gated reward model, a Hugging Face
  sequence-classification checkpoint, which verl serves for scoring and also
  loads as the critic's initial weights (as ours). Weights are hard-linked
  when the filesystem allows (they are never rewritten), other files copied.
  A tokenizer without a chat template gets one that reproduces rlhfspec's
  prompt format exactly, since verl formats every prompt (and the reward
  model's input) through the tokenizer's chat template.

Parquet goes through pyarrow, imported here only (a dependency of `datasets`,
so the train extra has it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.compiler.targets.verl import JobFacts
from rlhfspec.runtime.lineage import LINEAGE_FILE
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.stage_api import StageContext
from rlhfspec.runtime.train.formatting import (
    ChatFormat,
    PromptInput,
    as_messages,
    prompt_key,
    stage_format,
)

# rlhfspec's plain prompt format (runtime/train/formatting.py) as a chat template, for a model
# trained without one: the generation prompt renders `plain_prompt` (turn by turn when
# multi-turn), a finished last turn `full_text + eos` (how the reward model reads). A model
# that has a chat template keeps it: every stage of the run formatted with that template.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'User: ' + message['content'] | trim + '\\n' -}}"
    "{%- elif message['role'] == 'system' -%}"
    "{{- 'System: ' + message['content'] | trim + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant: ' + message['content'] | trim -}}"
    "{%- if loop.last -%}{{- eos_token -}}{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('rlhfspec prompts have system, user and assistant turns only') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def finished_stages(run_dir: Path) -> dict[str, Any]:
    path = run_dir / LINEAGE_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {LINEAGE_FILE})")
    doc = json.loads(path.read_text(encoding="utf-8"))
    stages: dict[str, Any] = doc.get("stages", {})
    return {"run_id": doc.get("run_id", run_dir.name), "stages": stages, "doc": doc}


def need_stages(run_dir: Path, names: list[str]) -> dict[str, Any]:
    """The run's lineage, after checking that `names` finished (their gates passed)."""
    info = finished_stages(run_dir)
    missing = [n for n in names if info["stages"].get(n, {}).get("status") != "done"]
    if missing:
        raise RunError(
            f"the verl job needs the run's {', '.join(missing)} stage(s) finished in {run_dir}; "
            f"run `rlhfspec run SPEC --run-dir {run_dir} --until reward_model` first"
        )
    return info


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a model folder; weights hard-linked where possible (they are never rewritten)."""

    def copy(source: str, target: str) -> object:
        if source.endswith(WEIGHT_SUFFIXES):
            try:
                os.link(source, target)
                return target
            except OSError:
                pass
        return shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=copy)


def set_chat_template(model_dir: Path, template: str | None, trust_remote_code: bool) -> bool:
    """Give the copied tokenizer the run's chat template (`template`: the run's `ChatFormat`
    template; None: the plain format, as `CHAT_TEMPLATE`), so verl formats prompts and scores
    responses as every stage of the run did; returns whether the tokenizer's changed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    wanted = CHAT_TEMPLATE if template is None else template
    if getattr(tokenizer, "chat_template", None) == wanted:
        return False
    tokenizer.chat_template = wanted
    tokenizer.save_pretrained(model_dir)
    return True


def job_templates(ctx: StageContext, job_dir: Path, trust: bool) -> tuple[ChatFormat, list[str]]:
    """The run's chat format (from the copied policy's tokenizer, checked against the plan),
    given to the job's two tokenizers; returns it and the folders whose template changed."""
    from rlhfspec.runtime.train.models import load_tokenizer

    chat = stage_format(ctx, load_tokenizer(job_dir / "model", trust_remote_code=trust))
    templated = [
        folder
        for folder in ("model", "reward_model")
        if set_chat_template(job_dir / folder, chat.template, trust)
    ]
    return chat, templated


def check_reward_model(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.get(
        "num_labels", len(config.get("id2label") or {0: 0})
    ) not in (1, None):
        raise RunError(
            f"{folder} is not a one-label sequence-classification checkpoint "
            f"(architectures {archs}); verl serves the reward model as such"
        )


def prompt_rows(prompts: list[PromptInput], source: str, kind: str) -> list[dict[str, Any]]:
    """verl's rows: the prompt as chat messages (a text is one user turn)."""
    return [
        {
            "data_source": source,
            "prompt": as_messages(text),
            "ability": "chat",
            "reward_model": {"style": "model", "ground_truth": ""},
            "extra_info": {"index": i, "split": kind},
        }
        for i, text in enumerate(prompts)
    ]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows in the layout verl's RLHFDataset reads, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise RunError(f"no prompts for {path.name}: the job would have nothing to read")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def prompt_tokens(model_dir: Path, prompts: list[PromptInput], trust_remote_code: bool) -> int:
    """The longest prompt in tokens, formatted the way verl formats it (chat template)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    longest = 0
    for text in prompts:
        chat = tokenizer.apply_chat_template(
            as_messages(text), add_generation_prompt=True, tokenize=False
        )
        longest = max(longest, len(tokenizer(chat, add_special_tokens=False)["input_ids"]))
    return longest


def stage_context(plan: dict[str, Any], project: Project, run_dir: Path) -> StageContext:
    """The policy stage's context on the run: the job reads what our PPO would read."""
    policy = next(s for s in plan["stages"] if s["name"] == "policy")
    scoped = Project(policy["settings"], project.spec_path, project.display)
    return StageContext(plan, scoped, run_dir, policy, False, frozenset(), lambda m: None)


def prepare_job(
    plan: dict[str, Any],
    project: Project,
    run_dir: Path,
    job_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[JobFacts, dict[str, Any]]:
    """Write the job's data and models into `job_dir`; returns the facts the target renders
    and the run's identity for the manifest."""
    from rlhfspec.runtime.evaluation.files import PROMPT_SETS, prompt_sets_text
    from rlhfspec.runtime.policy.stages import (
        evaluation_prompts,
        prompt_pool,
        set_prompt,
        start_model,
        training_prompts,
    )

    spec = plan["resolved"]
    trust = bool(spec["policy"]["trust_remote_code"])
    needed = ["reward_model"] + (["sft"] if spec["policy"]["start_from_sft"] else [])
    info = need_stages(run_dir, needed)
    ctx = stage_context(plan, project, run_dir)
    pool = prompt_pool(ctx)
    eval_sets = evaluation_prompts(ctx, pool)
    kept = training_prompts(pool, eval_sets)
    # by text as well as by id: a prompt repeated under another id must not leak either
    held = {prompt_key(set_prompt(p)) for rows in eval_sets.values() for p in rows}
    held |= {prompt_key(p.chat) for p in pool.holdout}
    train = [p for p in kept if prompt_key(p) not in held]
    if len(train) < len(kept):
        log(f"{len(kept) - len(train)} training prompt(s) left out: same text as a held-out one")
    validation = [set_prompt(p) for p in eval_sets.get("validation", [])]
    atomic_write_text(job_dir / PROMPT_SETS, prompt_sets_text(eval_sets))
    name = str(spec["name"])
    write_parquet(prompt_rows(train, name, "train"), job_dir / "data/train.parquet")
    write_parquet(prompt_rows(validation, name, "validation"), job_dir / "data/val.parquet")
    start = start_model(ctx)
    if not Path(start).is_dir():
        raise RunError(
            f"the policy starts from {start}, which is not a local folder; download it with a "
            "pinned revision and set policy.base_model to that folder"
        )
    log(f"copying the starting policy {start} and the reward model into {job_dir}")
    link_or_copy_tree(Path(start), job_dir / "model")
    reward = run_dir / "models/reward_model"
    check_reward_model(reward)
    link_or_copy_tree(reward, job_dir / "reward_model")
    chat, templated = job_templates(ctx, job_dir, trust)
    longest = prompt_tokens(job_dir / "model", train + validation, trust)
    files = {
        p.relative_to(job_dir).as_posix(): sha256_file(p)
        for p in sorted(job_dir.rglob("*"))
        if p.is_file()
    }
    started = "the run's SFT model" if spec["policy"]["start_from_sft"] else str(start)
    facts = JobFacts(
        train_prompts=len(train),
        val_prompts=len(validation),
        max_prompt_tokens=longest,
        start=started,
        reward_model_sha256=sha256_file(reward / "model.safetensors"),
        files=files,
    )
    run = {
        "dir": str(run_dir),
        "run_id": info["run_id"],
        "plan_fingerprint": info["doc"].get("plan", {}).get("fingerprint"),
        "chat_template": chat.record(),
        "chat_template_added": templated,
        # the reward model's gates as the run recorded them (an overridden one says so)
        "reward_model_gates": info["stages"]["reward_model"].get("gates", []),
    }
    return facts, run
