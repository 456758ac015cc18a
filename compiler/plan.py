"""Build the training plan: the contract between compiler and runtime.

The plan is fully explicit (every default written out), deterministic (same
spec and data give the same bytes: no clock, no absolute paths), versioned
and fingerprinted. The runtime reads only the plan, never the spec, so what
runs is exactly what was reviewed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from rlhfspec.common.chat_templates import template_record
from rlhfspec.common.hashing import canonical_json, file_fingerprint, sha256_bytes, sha256_text
from rlhfspec.common.model_ref import kind_of, model_files
from rlhfspec.common.plan_types import InputFile, StageEntry
from rlhfspec.common.version import __version__
from rlhfspec.compiler.compute import TRAINING_STAGES, launch_command, run_command, stage_compute
from rlhfspec.compiler.diagnostics import json_path
from rlhfspec.compiler.lockfile import criteria_hash, lock_path_for, read_lock
from rlhfspec.compiler.memory import stage_memory
from rlhfspec.compiler.schemas import PLAN_SCHEMA, SPEC_SCHEMA, load_schema
from rlhfspec.compiler.spec_paths import iter_paths, used_base_models

PLAN_VERSION = 1
PLAN_FORMAT = "rlhfspec.plan/1"


def generator() -> str:
    return f"rlhfspec {__version__}"


# The resolved settings each stage reads, as dotted paths into the resolved spec. The plan
# hands a stage exactly these (its entry's `settings`, every default written out); they enter
# its resume signature, and the files they name (`x-path` fields) are its input files.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "prompts": (
        "name",
        "prompts",
        "criteria.scope",
        "annotation.batches",
        "annotation.gold",
        "sft.enabled",
    ),
    "annotation_qc": (
        "name",
        "criteria",
        "annotation.justification",
        "annotation.annotators_per_item",
        "annotation.session_max_minutes",
        "annotation.gold",
        "annotation.agreement",
        "annotation.position_bias",
        "annotation.fatigue",
        "annotation.max_split_vote_share",
        "annotation.aggregation.exclude_failed_annotators",
        "annotation.batches",
        "annotation.dimension_judgements",
        "annotation.gaming",
        "annotation.annotator_ids",
        "annotation.responses",
        "judge.gate",  # the AI judge's agreement gate (runtime/annotation/judge/review.py)
    ),
    "aggregate": (
        "criteria.tie_breaking",
        "criteria.dimensions",
        "annotation.aggregation",
        "annotation.batches",
        "annotation.responses",
        "annotation.annotator_ids",
        "prompts.sources",
        "prompts.focus",
    ),
    "sft": ("name", "seed", "sft", "compute", "tracking", "prompts.chat_template"),
    "reward_model": (
        "name",
        "seed",
        "criteria.version",
        "reward_model",
        "compute",
        "tracking",
        "prompts.chat_template",
    ),
    "policy": (
        "name",
        "seed",
        "policy",
        "compute",
        "tracking",
        "evaluation.prompts_per_set",
        "evaluation.prompt_sets",
        "prompts.sources",
        "prompts.focus",
        "prompts.chat_template",
    ),
    "evaluate": (
        "seed",
        "prompts.chat_template",
        "criteria.version",
        "criteria.disqualifiers",
        "policy.method",
        "policy.kl.estimator",
        "policy.ppo.temperature",
        "policy.ppo.missing_eos_penalty",
        "evaluation",
        "compute",
    ),
    "select": ("evaluation.select",),
    "handoff": ("handoff",),
}
# What builtin:tiny's tokenizer learns from (runtime/train/common.py, corpus_texts): read by a
# training stage only when it builds its model from builtin:tiny.
BUILTIN_CORPUS = ("prompts.sources", "annotation.responses", "sft.enabled", "sft.data")
BUILTIN_PREFIX = "builtin:"
# Files a person adds to the run directory that a stage reads (human judgements).
HUMAN_INPUTS: dict[str, list[str]] = {"select": ["eval/human_eval/judgements.jsonl"]}
# Scratch a stage may write besides its outputs: training checkpoints for resume, and the
# tracking backends' local files (trackio keeps one folder for the run: runtime/train/scale.py)
WORK: dict[str, list[str]] = {
    "sft": ["sft/checkpoints", "tracking/sft", "tracking/trackio"],
    "reward_model": ["reward_model/checkpoints", "tracking/reward_model", "tracking/trackio"],
    "policy": ["tracking/policy", "tracking/trackio"],
}


def pick(spec: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The part of `spec` at the dotted `paths`, nested as in the spec (absent keys left out)."""
    out: dict[str, Any] = {}
    for dotted in paths:
        keys = dotted.split(".")
        node: Any = spec
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            target = out
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = copy.deepcopy(node)
    ordered: dict[str, Any] = _ordered_like(spec, out)
    return ordered


def _ordered_like(spec: Any, part: Any) -> Any:
    """`part` with its keys in the spec's order, so the settings read like the spec."""
    if not isinstance(part, dict) or not isinstance(spec, dict):
        return part
    return {k: _ordered_like(spec[k], part[k]) for k in spec if k in part}


def _settings_paths(spec: dict[str, Any], name: str) -> list[str]:
    paths = list(STAGE_SETTINGS[name])
    if name == "prompts" and spec["sft"]["enabled"]:
        paths.append("sft.data")  # read to prove the holdout never leaks into it
    if name == "sft" and spec["prompts"]["focus"]:
        paths.extend(("prompts.sources", "prompts.focus"))  # demonstrations inside the focus only
    builtin = {
        "sft": spec["sft"]["base_model"],
        "reward_model": None
        if spec["reward_model"]["start_from_sft"]
        else spec["reward_model"]["base_model"],
        "policy": None if spec["policy"]["start_from_sft"] else spec["policy"]["base_model"],
    }.get(name)
    if builtin is not None and builtin.startswith(BUILTIN_PREFIX):
        paths.extend(BUILTIN_CORPUS)
    return paths


PAIRS = ["preferences/pairs.jsonl", "preferences/provenance.jsonl"]


def _graph(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Name, description, dependencies, upstream reads and outputs of every stage, in run order."""
    stages = _data_stages() + _training_stages(spec)
    return stages + _release_stages(spec, stages)


def _data_stages() -> list[dict[str, Any]]:
    return [
        {
            "name": "prompts",
            "description": "Check the prompt mix and strata; reserve the production holdout.",
            "depends_on": [],
            "reads": [],
            "outputs": ["prompts/report.json", "prompts/report.md", "prompts/holdout.jsonl"],
        },
        {
            "name": "annotation_qc",
            "description": "Agreement, gold accuracy, position bias, fatigue, drift and version checks.",
            "depends_on": ["prompts"],
            "reads": [],
            "outputs": ["qc/report.json", "qc/report.md", "qc/report.html"],
        },
        {
            "name": "aggregate",
            "description": "Majority vote with the tie-breaking rule into preference pairs.",
            "depends_on": ["prompts", "annotation_qc"],
            "reads": ["prompts/holdout.jsonl", "qc/report.json"],
            "outputs": PAIRS
            + [
                "preferences/requeue.jsonl",
                "preferences/split_items.jsonl",
                "preferences/summary.json",
            ],
        },
    ]


def _training_stages(spec: dict[str, Any]) -> list[dict[str, Any]]:
    method = spec["policy"]["method"]
    stages: list[dict[str, Any]] = []
    if spec["sft"]["enabled"]:
        stages.append(
            {
                "name": "sft",
                "description": "Supervised fine-tuning on demonstrations.",
                "depends_on": ["prompts"],
                "reads": ["prompts/holdout.jsonl"],
                "outputs": ["models/sft"],
            }
        )
    rm_from_sft = spec["reward_model"]["start_from_sft"]
    # the reward model drives PPO; under DPO it is the judge that evaluates checkpoints
    stages.append(
        {
            "name": "reward_model",
            "description": "Bradley-Terry reward model with a by-prompt holdout and gates"
            + ("." if method == "ppo" else "; judges the DPO checkpoints."),
            "depends_on": ["aggregate"] + (["sft"] if rm_from_sft else []),
            "reads": PAIRS + (["models/sft"] if rm_from_sft else []),
            "outputs": [
                "models/reward_model",
                "reward_model/eval.json",
                "reward_model/eval.md",
                "reward_model/holdout_scores.jsonl",
            ],
        }
    )
    from_sft = spec["policy"]["start_from_sft"]
    ppo = method == "ppo"
    stages.append(
        {
            "name": "policy",
            "description": ("KL-constrained PPO" if ppo else "DPO") + ", checkpointed every "
            f"{spec['policy']['checkpoint_every']} {'updates' if ppo else 'steps'}.",
            "depends_on": ["prompts", "reward_model" if ppo else "aggregate"]
            + (["sft"] if from_sft else []),
            "reads": ["prompts/holdout.jsonl"]
            + (["models/reward_model"] if ppo else PAIRS)
            + (["models/sft"] if from_sft else []),
            "outputs": ["models/policy", "eval/prompt_sets.json"],
        }
    )
    return stages


def _release_stages(spec: dict[str, Any], earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from_sft = spec["policy"]["start_from_sft"]
    evaluate = {
        "name": "evaluate",
        "description": "Evaluate every checkpoint on "
        + ", ".join(spec["evaluation"]["prompt_sets"])
        + ".",
        "depends_on": ["policy", "reward_model"] + (["sft"] if from_sft else []),
        "reads": ["models/policy", "eval/prompt_sets.json", "models/reward_model"]
        + (["models/sft"] if from_sft else []),
        "outputs": ["eval"],
    }
    select = {
        "name": "select",
        "description": "Pick the deployment checkpoint among those that pass every guard.",
        "depends_on": ["evaluate"],
        "reads": ["eval"],
        "outputs": ["selection.json"],
    }
    before = [*earlier, evaluate, select]
    handoff = {
        "name": "handoff",
        "description": "Assemble the handoff package with its lineage manifest.",
        # the package documents every stage: it reads all of their outputs
        "depends_on": [s["name"] for s in before],
        "reads": list(dict.fromkeys(o for s in before for o in s["outputs"])),
        "outputs": ["handoff.tar.gz" if spec["handoff"]["format"] == "tar.gz" else "handoff"],
    }
    return [evaluate, select, handoff]


def stage_graph(
    spec: dict[str, Any], inputs: list[dict[str, Any]], spec_dir: Path | None = None
) -> list[StageEntry]:
    """The plan's stage entries in run order: each one's whole contract with the runtime.

    An entry carries the resolved settings the stage reads, the spec files it reads (with
    sha256), the upstream outputs it reads, and the outputs it writes; the runner hands the
    stage exactly this and checks that it wrote exactly `outputs` (and scratch under `work`).
    """
    schema = load_schema(SPEC_SCHEMA)
    by_path = {i["path"]: i["sha256"] for i in inputs}
    entries: list[StageEntry] = []
    for stage in _graph(spec):
        name = stage["name"]
        settings = pick(spec, _settings_paths(spec, name))
        files = list(dict.fromkeys(value for _, value in iter_paths(schema, settings)))
        entry: StageEntry = {
            "name": name,
            "description": stage["description"],
            "depends_on": stage["depends_on"],
            "settings": settings,
            "inputs": [InputFile(path=p, sha256=by_path[p]) for p in files]
            + _model_inputs(name, inputs),
            "reads": stage["reads"],
            "human_inputs": HUMAN_INPUTS.get(name, []),
            "outputs": stage["outputs"],
            "work": WORK.get(name, []),
            "command": run_command(name, first=not entries),
        }
        if name in FORMATTING_STAGES:
            entry["chat_template"] = template_record(
                spec["prompts"]["chat_template"],
                formatting_model(spec, name),
                spec_dir or Path("."),
            )
        if name in TRAINING_STAGES:
            entry["compute"] = stage_compute(spec, name)
            entry["launch"] = launch_command(name, entry["compute"])
            entry["memory"] = stage_memory(spec, name, entry["compute"], spec_dir)
        entries.append(entry)
    return entries


#: The stages that turn prompts and responses into model text (runtime/train/formatting.py).
FORMATTING_STAGES = ("sft", "reward_model", "policy", "evaluate")


def formatting_model(spec: dict[str, Any], name: str) -> str:
    """The base model whose tokenizer a formatting stage formats with: its own, or SFT's when
    it starts from the SFT model (evaluation formats as the policy does)."""
    section = "policy" if name == "evaluate" else name
    if section != "sft" and spec[section]["start_from_sft"] and spec["sft"]["enabled"]:
        section = "sft"
    return str(spec[section]["base_model"])


def input_fingerprints(spec: dict[str, Any], spec_dir: Path) -> list[dict[str, Any]]:
    """Every file the spec names, with sha256; and every provenance file (`MODEL_FILES`) of
    each local base model a stage loads, so the plan pins the model's bytes too."""
    out = []
    for path, value in iter_paths(load_schema(SPEC_SCHEMA), spec):
        out.append({"field": json_path(path), "path": value, **file_fingerprint(spec_dir / value)})
    for section in used_base_models(spec):
        ref = spec[section]["base_model"]
        if kind_of(ref, spec_dir) != "local":
            continue
        folder = Path(os.path.normpath(ref)).as_posix()
        for name in model_files(spec_dir / folder):
            out.append(
                {
                    "field": f"{section}.base_model",
                    "path": f"{folder}/{name}",
                    **file_fingerprint(spec_dir / folder / name),
                }
            )
    return out


def _model_inputs(name: str, inputs: list[dict[str, Any]]) -> list[InputFile]:
    """The base-model files a training stage loads (the entry's own section's)."""
    field = f"{name}.base_model"
    return [{"path": i["path"], "sha256": i["sha256"]} for i in inputs if i["field"] == field]


def lock_history(spec_path: Path) -> list[dict[str, str]]:
    lock = lock_path_for(spec_path)
    if not lock.exists():
        return []
    return [
        {"version": e.version, "locked_on": e.locked_on, "sha256": e.sha256}
        for e in read_lock(lock)
    ]


def build_plan(
    spec: dict[str, Any],
    spec_path: Path,
    out_dir: Path,
    inputs: list[dict[str, Any]],
    documents: dict[str, str],
) -> dict[str, Any]:
    """Assemble the plan; `documents` maps file names to rendered text."""
    spec_dir = spec_path.parent
    rel_spec_dir = Path(os.path.relpath(spec_dir.resolve(), out_dir.resolve())).as_posix()
    plan: dict[str, Any] = {
        "$schema": load_schema(PLAN_SCHEMA)["$id"],
        "format": PLAN_FORMAT,
        "plan_version": PLAN_VERSION,
        "generator": generator(),
        "spec": {
            "name": spec["name"],
            "file": spec_path.name,
            "dir": rel_spec_dir,
            "sha256": sha256_bytes(spec_path.read_bytes()),
            "spec_version": spec["spec_version"],
        },
        "criteria": {
            "version": spec["criteria"]["version"],
            "sha256": criteria_hash(spec["criteria"]),
            "lock_file": lock_path_for(spec_path).name
            if lock_path_for(spec_path).exists()
            else None,
            "history": lock_history(spec_path),
        },
        "inputs": inputs,
        "resolved": spec,
        "stages": stage_graph(spec, inputs, spec_dir),
        "documents": [
            {"file": name, "sha256": sha256_text(text)} for name, text in sorted(documents.items())
        ],
    }
    plan["fingerprint"] = sha256_text(canonical_json(plan))
    return plan
