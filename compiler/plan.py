"""Build the training plan: the contract between compiler and runtime.

The plan is fully explicit (every default written out), deterministic (same
spec and data give the same bytes: no clock, no absolute paths), versioned
and fingerprinted. The runtime reads only the plan, never the spec, so what
runs is exactly what was reviewed.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from rlhfspec.common.hashing import canonical_json, file_fingerprint, sha256_bytes, sha256_text
from rlhfspec.common.version import __version__
from rlhfspec.compiler.diagnostics import json_path
from rlhfspec.compiler.lockfile import criteria_hash, lock_path_for, read_lock
from rlhfspec.compiler.schemas import PLAN_SCHEMA, SPEC_SCHEMA, load_schema
from rlhfspec.compiler.semantic import iter_paths

PLAN_VERSION = 1
TRAINING_STAGES = {"sft", "reward_model", "policy"}


def generator() -> str:
    return f"rlhfspec {__version__}"


def stage_graph(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages in run order, each with its dependencies, inputs and outputs."""
    method = spec["policy"]["method"]
    sft_on = spec["sft"]["enabled"]
    batches = [b["path"] for b in spec["annotation"]["batches"]]
    batches += [b["key"] for b in spec["annotation"]["batches"] if b.get("key")]
    gold = [spec["annotation"]["gold"]["path"]] if "gold" in spec["annotation"] else []
    sources = [s["path"] for s in spec["prompts"]["sources"]]
    responses = [spec["annotation"]["responses"]] if "responses" in spec["annotation"] else []
    demonstrations = (
        [spec["sft"]["data"]] if spec["sft"]["enabled"] and "data" in spec["sft"] else []
    )
    stages: list[dict[str, Any]] = [
        {
            "name": "prompts",
            "description": "Check the prompt mix and strata; reserve the production holdout.",
            "depends_on": [],
            # batches, gold and demonstrations are read to prove the holdout never leaks into them
            "inputs": sources + batches + gold + demonstrations,
            "outputs": ["prompts/report.json", "prompts/report.md", "prompts/holdout.jsonl"],
        },
        {
            "name": "annotation_qc",
            "description": "Agreement, gold accuracy, position bias, fatigue, drift and version checks.",
            "depends_on": ["prompts"],
            "inputs": batches + gold,
            "outputs": ["qc/report.json", "qc/report.md", "qc/report.html"],
        },
        {
            "name": "aggregate",
            "description": "Majority vote with the tie-breaking rule into preference pairs.",
            "depends_on": ["annotation_qc"],
            "inputs": batches + responses + sources,
            "outputs": [
                "preferences/pairs.jsonl",
                "preferences/provenance.jsonl",
                "preferences/requeue.jsonl",
                "preferences/split_items.jsonl",
                "preferences/summary.json",
            ],
        },
    ]
    if sft_on:
        stages.append(
            {
                "name": "sft",
                "description": "Supervised fine-tuning on demonstrations.",
                "depends_on": [],
                "inputs": [spec["sft"]["data"]],
                "outputs": ["models/sft"],
            }
        )
    # the reward model drives PPO; under DPO it is the judge that evaluates checkpoints
    stages.append(
        {
            "name": "reward_model",
            "description": "Bradley-Terry reward model with a by-prompt holdout and gates"
            + ("." if method == "ppo" else "; judges the DPO checkpoints."),
            "depends_on": ["aggregate"]
            + (["sft"] if spec["reward_model"]["start_from_sft"] else []),
            "inputs": [],
            "outputs": [
                "models/reward_model",
                "reward_model/eval.json",
                "reward_model/eval.md",
                "reward_model/holdout_scores.jsonl",
            ],
        }
    )
    policy_deps = ["reward_model"] if method == "ppo" else ["aggregate"]
    if spec["policy"]["start_from_sft"]:
        policy_deps.append("sft")
    stages.append(
        {
            "name": "policy",
            "description": ("KL-constrained PPO" if method == "ppo" else "DPO")
            + ", checkpointed every "
            f"{spec['policy']['checkpoint_every']} {'updates' if method == 'ppo' else 'steps'}.",
            "depends_on": policy_deps,
            "inputs": [],
            "outputs": ["models/policy", "eval/prompt_sets.json"],
        }
    )
    stages.append(
        {
            "name": "evaluate",
            "description": "Evaluate every checkpoint on "
            + ", ".join(spec["evaluation"]["prompt_sets"])
            + ".",
            "depends_on": ["policy", "reward_model"],
            "inputs": [],
            "outputs": ["eval/"],
        }
    )
    stages.append(
        {
            "name": "select",
            "description": "Pick the deployment checkpoint among those that pass every guard.",
            "depends_on": ["evaluate"],
            "inputs": [],
            "outputs": ["selection.json"],
        }
    )
    stages.append(
        {
            "name": "handoff",
            "description": "Assemble the handoff package with its lineage manifest.",
            "depends_on": ["select"],
            "inputs": [],
            "outputs": ["handoff/"],
        }
    )
    compute = spec["compute"]
    for stage in stages:
        stage["inputs"] = list(dict.fromkeys(stage["inputs"]))
        argv = ["rlhfspec", "run", "plan.json", "--stage", stage["name"]]
        stage["command"] = shlex.join(argv)
        if stage["name"] in TRAINING_STAGES:
            stage["launch"] = shlex.join(
                [
                    "accelerate",
                    "launch",
                    "--num_processes",
                    str(compute["num_processes"]),
                    "--mixed_precision",
                    compute["mixed_precision"],
                    "-m",
                    "rlhfspec.cli.launch",
                    "plan.json",
                    "--stage",
                    stage["name"],
                ]
            )
    return stages


def input_fingerprints(spec: dict[str, Any], spec_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path, value in iter_paths(load_schema(SPEC_SCHEMA), spec):
        out.append({"field": json_path(path), "path": value, **file_fingerprint(spec_dir / value)})
    return out


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
        "stages": stage_graph(spec),
        "documents": [
            {"file": name, "sha256": sha256_text(text)} for name, text in sorted(documents.items())
        ],
    }
    plan["fingerprint"] = sha256_text(canonical_json(plan))
    return plan
