"""Which files go into the package: copied from the run (checked against their lineage
sha256), from the spec's folder (checked against the plan), or made here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_bytes, sha256_file
from rlhfspec.compiler.lockfile import criteria_hash
from rlhfspec.runtime.handoff.facts import Facts, RunDir, checkpoint_meta_path, own_file
from rlhfspec.runtime.handoff.facts import _read_json as read_json
from rlhfspec.runtime.handoff.layout import (
    HANDOFF_STAGE,
    PARTS,
    PLAN_STAGE,
    REFERENCE_FILE,
    REFERENCE_FORMAT,
    json_bytes,
)

# a checkpoint folder's files that restore training, not the model: never part of the weights
_TRAINING_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|training_args\.bin|trainer_state\.json|rng_state.*)$"
)


@dataclass
class Entry:
    """One file of the package: bytes made here, or a file copied from the run."""

    path: str
    part: str
    description: str
    producer: dict[str, Any]
    source: str | None = None  # where it came from (run-relative, or spec:<path>)
    data: bytes | None = None
    file: Path | None = None

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.file is not None
        return self.file.stat().st_size

    def sha256(self) -> str:
        if self.data is not None:
            return sha256_bytes(self.data)
        assert self.file is not None
        return sha256_file(self.file)


def _weight_files(run_dir: Path, rel: str) -> list[Path]:
    """The files a model loads from: weights, config, tokenizer (never optimizer state)."""
    folder = run_dir / rel
    if not folder.is_dir():
        raise RunError(f"the deployment checkpoint's folder {rel} is missing from {run_dir}")
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():  # refused, with the reason, by own_file
            own_file(run_dir, path.relative_to(run_dir).as_posix())
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not _TRAINING_STATE.match(p.name)
        and p.name != "checkpoint.json"
        and not p.name.startswith(".")
    )
    if not any(p.suffix == ".safetensors" for p in files):
        raise RunError(f"no safetensors weights in the deployment checkpoint's folder {rel}")
    return files


ENGINE_FILES = {
    "overrides.txt": "config as exported (Hydra overrides of verl's main_ppo)",
    "MAPPING.md": "mapping of every spec setting to the engine's keys",
    "rlhfspec_export.json": "export manifest",
    "config.yaml": "own composed config (Hydra)",
    "overrides.yaml": "command-line overrides (Hydra)",
    "launch.json": "launch record (engine version)",
}


class _Collector:
    """The entries gathered so far, and the two ways a file gets in: copied or made here."""

    def __init__(self, run: RunDir, facts: Facts, weights: str) -> None:
        self.run = run
        self.facts = facts
        self.weights = weights
        self.entries: list[Entry] = []
        self.documents = {d["file"]: d["sha256"] for d in run.plan.get("documents", [])}

    def copy(self, rel: str, dest: str, part: str, about: str, stage: str | None = None) -> None:
        """A run file, checked against lineage (and plan documents against the plan)."""
        path = self.run.checked(rel)
        producer = stage or self.run.producer(rel)
        if rel.startswith("plan/"):
            name = rel.split("/", 1)[1]
            if name in self.documents and sha256_file(path) != self.documents[name]:
                raise RunError(f"{rel} differs from the document the plan recorded; recompile")
            producer = PLAN_STAGE
        if producer is None:
            raise RunError(f"{rel}: lineage.json does not say which stage wrote it")
        self.entries.append(
            Entry(dest, part, about, self.facts.provenance(producer), rel, file=path)
        )

    def make(
        self, dest: str, part: str, about: str, data: bytes, stage: str = HANDOFF_STAGE
    ) -> None:
        """Bytes made here."""
        self.entries.append(Entry(dest, part, about, self.facts.provenance(stage), None, data=data))


def collect_entries(run: RunDir, facts: Facts, parts: Sequence[str], weights: str) -> list[Entry]:
    """Every file of the package except the generated index, card, manifest and checksums."""
    c = _Collector(run, facts, weights)
    for part in PARTS:
        if part in parts and part in _PART_FILES:
            _PART_FILES[part](c)
    return c.entries


def _criteria(c: _Collector) -> None:
    c.copy("plan/criteria.md", "criteria/criteria.md", "criteria", "The criteria document")
    c.copy("plan/criteria.html", "criteria/criteria.html", "criteria", "The criteria document")
    c.make(
        "criteria/history.json",
        "criteria",
        "Criteria version history from the lock file, with each version's content",
        json_bytes(_history(c.run, c.facts)),
    )


def _sampling(c: _Collector) -> None:
    about = "The prompt sampling procedure"
    c.copy("plan/sampling.md", "sampling/sampling.md", "sampling_procedure", about)
    c.copy("plan/sampling.html", "sampling/sampling.html", "sampling_procedure", about)
    check = "The check of the actual prompt mix, strata and holdout against the spec"
    c.copy("prompts/report.json", "sampling/prompt_check.json", "sampling_procedure", check)
    c.copy("prompts/report.md", "sampling/prompt_check.md", "sampling_procedure", check)


def _playbook(c: _Collector) -> None:
    about = "The annotator playbook"
    c.copy("plan/playbook.md", "playbook/playbook.md", "playbook", about)
    c.copy("plan/playbook.html", "playbook/playbook.html", "playbook", about)
    audit = "The playbook's auditor's edition: adds ids, detectors and QC cutoffs"
    c.copy("plan/playbook.auditor.md", "playbook/playbook.auditor.md", "playbook", audit)
    c.copy("plan/playbook.auditor.html", "playbook/playbook.auditor.html", "playbook", audit)
    c.make(
        "playbook/worked_examples.json",
        "playbook",
        "Worked examples from the criteria: prompt, two responses, the preferred one and why",
        json_bytes(
            {
                "format": "rlhfspec.worked_examples/1",
                "examples": c.facts.criteria["content"].get("examples", []),
            }
        ),
        PLAN_STAGE,
    )
    gold = c.run.spec["annotation"].get("gold")
    if gold:
        source = c.run.spec_file(gold["path"], "annotation.gold.path")
        c.entries.append(
            Entry(
                "playbook/gold_items.jsonl",
                "playbook",
                "Gold items with known answers and their rationales (annotator training)",
                c.facts.provenance("spec"),
                f"spec:{gold['path']}",
                file=source,
            )
        )


def _annotation_qc(c: _Collector) -> None:
    for name in ("report.html", "report.md", "report.json"):
        c.copy(f"qc/{name}", f"annotation_qc/{name}", "annotation_qc", "The annotation QC audit")
    c.copy(
        "preferences/summary.json",
        "annotation_qc/aggregation_summary.json",
        "annotation_qc",
        "How the votes became preference pairs: items, split votes, ties, excluded votes",
    )


def _reward_model_eval(c: _Collector) -> None:
    about = "Reward-model evaluation: per dimension, length analysis, gates"
    c.copy("reward_model/eval.json", "reward_model/eval.json", "reward_model_eval", about)
    c.copy("reward_model/eval.md", "reward_model/eval.md", "reward_model_eval", about)


def _deployment_checkpoint(c: _Collector) -> None:
    """The evidence for the chosen checkpoint, then its weights (or a reference to them)."""
    part = "deployment_checkpoint"
    for row in c.facts.summary:
        c.copy(
            f"eval/{row['label']}.json",
            f"evidence/{row['label']}.json",
            part,
            f"Evaluation of checkpoint {row['label']} (step {row['step']}) with samples",
        )
    c.copy("eval/summary.json", "evidence/summary.json", part, "Per-checkpoint table")
    c.copy("eval/prompt_sets.json", "evidence/prompt_sets.json", part, "Evaluation prompts")
    c.copy("eval/trajectory.svg", "evidence/trajectory.svg", part, "Trajectory plots")
    c.copy("selection.json", "evidence/selection.json", part, "The selection decision")
    c.copy(
        "models/policy/checkpoints.json",
        "evidence/checkpoints.json",
        part,
        "The checkpoint index with the KL settings and the reward-model version",
    )
    engine = c.run.dir / "models/policy/engine"
    for name in sorted(p.name for p in engine.iterdir()) if engine.is_dir() else []:
        c.copy(
            f"models/policy/engine/{name}",
            f"evidence/engine/{name}",
            part,
            f"The external training job's {ENGINE_FILES.get(name, name)}",
            "policy",
        )
    if (c.run.dir / "models/policy/metrics.jsonl").is_file():
        c.copy(
            "models/policy/metrics.jsonl",
            "evidence/training_metrics.jsonl",
            part,
            "Training metrics per update or step (score, KL, kl_coef, length, ...)",
        )
    if c.facts.human is not None:
        for name in ("judgements.jsonl", "key.json", "tasks.jsonl"):
            rel = f"eval/human_eval/{name}"
            if (c.run.dir / rel).is_file():
                stage = "human_eval" if name == "judgements.jsonl" else None
                c.copy(rel, f"evidence/human_eval/{name}", part, "Human evaluation", stage)
        c.make(
            "evidence/human_eval/results.json",
            part,
            "Human win rate of each checkpoint against the start",
            json_bytes({"format": "rlhfspec.human_eval_results/1", "checkpoints": c.facts.human}),
        )
    add_weights(c.run, c.facts, c.entries, c.weights)


def _lineage(c: _Collector) -> None:
    doc = dict(c.run.lineage)
    doc["stages"] = c.run.stages
    c.make(
        "lineage/lineage.json",
        "lineage",
        "The run's lineage record (without the handoff stage's own entry)",
        (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    )
    c.copy("plan/plan.json", "lineage/plan.json", "lineage", "The compiled plan the run executed")


_PART_FILES: dict[str, Callable[[_Collector], None]] = {
    "criteria": _criteria,
    "sampling_procedure": _sampling,
    "playbook": _playbook,
    "annotation_qc": _annotation_qc,
    "reward_model_eval": _reward_model_eval,
    "deployment_checkpoint": _deployment_checkpoint,
    "lineage": _lineage,
}
"""Each part's files, added in PARTS order (the model card is rendered with the index)."""


def _history(run: RunDir, facts: Facts) -> dict[str, Any]:
    """The plan's lock history, with each version's content when the lock file confirms it."""
    contents: dict[tuple[str, str], Any] = {}
    lock_name = facts.criteria["lock_file"]
    source = "plan.json (the lock file was not found beside the spec)"
    if lock_name:
        for folder in run.spec_dirs:
            lock = folder / str(lock_name)
            if not lock.is_file():
                continue
            try:
                doc = read_json(lock, str(lock_name))  # bounded, strict JSON
                for item in doc.get("criteria", []):
                    if criteria_hash(item["content"]) == item["sha256"]:
                        contents[(str(item["version"]), str(item["sha256"]))] = item["content"]
            except (RunError, AttributeError, KeyError, TypeError):
                continue
            source = f"{lock_name} (each version's content checked against its sha256)"
            break
    history = [
        {
            **entry,
            "content": contents.get((str(entry["version"]), str(entry["sha256"]))),
        }
        for entry in facts.criteria["history"]
    ]
    return {
        "format": "rlhfspec.criteria_history/1",
        "current": {"version": facts.criteria["version"], "sha256": facts.criteria["sha256"]},
        "lock_file": lock_name,
        "source": source,
        "history": history,
    }


def add_weights(run: RunDir, facts: Facts, entries: list[Entry], weights: str) -> None:
    rel = facts.chosen["path"]
    files = _weight_files(run.dir, rel)
    if weights == "merged":  # LoRA: the merged weights only, without the adapters beside them
        folder = run.dir / rel
        files = [p for p in files if p.relative_to(folder).parts[0] != "adapter"]
    producer = run.producer(rel) or "policy"
    meta_path = checkpoint_meta_path(run.dir, rel)
    if meta_path is not None:
        entries.append(
            Entry(
                "model/checkpoint.json",
                "deployment_checkpoint",
                "The checkpoint's own record: reward-model version, KL settings and coefficient",
                facts.provenance(producer),
                meta_path.relative_to(run.dir).as_posix(),
                file=meta_path,
            )
        )
    listed: list[dict[str, Any]] = [
        {
            "path": p.relative_to(run.dir).as_posix(),
            "sha256": sha256_file(p),
            "bytes": p.stat().st_size,
        }
        for p in files
    ]
    reference = {
        "format": REFERENCE_FORMAT,
        "run_id": run.lineage.get("run_id"),
        "checkpoint": facts.chosen["label"],
        "step": facts.chosen["step"],
        "folder": rel,
        "weights": weights,
        "note": "paths are relative to the run directory; check them with "
        "`rlhfspec verify PACKAGE` given the run directory, or with sha256sum",
        "files": listed,
    }
    if weights in ("include", "merged"):
        for path, item in zip(files, listed, strict=True):
            name = path.relative_to(run.dir / rel).as_posix()
            entries.append(
                Entry(
                    f"model/{name}",
                    "deployment_checkpoint",
                    "Deployment checkpoint: model file",
                    facts.provenance(producer),
                    item["path"],
                    file=path,
                )
            )
    else:
        entries.append(
            Entry(
                REFERENCE_FILE,
                "deployment_checkpoint",
                "The deployment weights by path (relative to the run directory) and sha256",
                facts.provenance(HANDOFF_STAGE),
                None,
                data=json_bytes(reference),
            )
        )
