"""The facts of a finished run the package is built from: the run directory read once and
checked against lineage.json and the plan, and everything the generated files say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import canonical_json, sha256_file, sha256_text
from rlhfspec.common.jsonl import JsonProblem, parse_json
from rlhfspec.runtime.evaluation.files import EVAL_SUMMARY, read_summary
from rlhfspec.runtime.handoff.layout import HANDOFF_STAGE, MAX_METADATA_BYTES, PLAN_STAGE
from rlhfspec.runtime.lineage import LINEAGE_FILE, LineageRecord, StageRecord

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def own_file(run_dir: Path, rel: str) -> Path:
    """A regular file of the run itself: a symbolic link (or a path through one) is refused,
    so a link to a file outside the run can never be packaged, whatever lineage.json says."""
    inside = run_dir.resolve()
    current = inside
    for part in Path(rel).parts:
        current = current / part
        if current.is_symlink():
            raise RunError(
                f"{rel} in {run_dir} is (or is under) a symbolic link; a handoff package holds "
                "the run's own files, never a link's target"
            )
    path = run_dir / rel
    if not path.is_file() or not path.resolve().is_relative_to(inside):
        raise RunError(f"{rel} is missing from {run_dir}")
    return path


def _read_json(path: Path, shown: str) -> Any:
    """A metadata file of the run, read whole: bounded in size, strict JSON."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_METADATA_BYTES + 1)
        if len(data) > MAX_METADATA_BYTES:
            raise RunError(f"{shown}: larger than {MAX_METADATA_BYTES // 2**20} MiB")
        return parse_json(data)
    except FileNotFoundError:
        raise RunError(f"{shown} is missing") from None
    except (OSError, JsonProblem) as exc:
        raise RunError(f"{shown}: cannot read it: {exc}") from None


def epoch(stamp: str) -> int:
    return int(datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC).timestamp())


class RunDir:
    """The facts of a finished run that the package is built from, read once and checked."""

    def __init__(self, run_dir: Path, spec_dir: Path | None) -> None:
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run directory", exit_code=2)
        self.dir = run_dir
        self.lineage: LineageRecord = _read_json(run_dir / LINEAGE_FILE, f"{run_dir}/lineage.json")
        if not isinstance(self.lineage, dict) or "stages" not in self.lineage:
            raise RunError(f"{run_dir}/lineage.json is not an rlhfspec lineage record")
        self.plan: dict[str, Any] = _read_json(run_dir / "plan" / "plan.json", "plan/plan.json")
        needed = ("fingerprint", "resolved", "spec", "criteria", "inputs")
        if not isinstance(self.plan, dict) or any(k not in self.plan for k in needed):
            raise RunError(f"{run_dir}/plan/plan.json is not an rlhfspec plan")
        body = {k: v for k, v in self.plan.items() if k != "fingerprint"}
        if sha256_text(canonical_json(body)) != self.plan.get("fingerprint"):
            raise RunError(f"{run_dir}/plan/plan.json was edited after compiling")
        recorded = self.lineage.get("plan", {}).get("fingerprint")
        if recorded != self.plan["fingerprint"]:
            raise RunError(
                f"{run_dir}: plan/plan.json ({self.plan['fingerprint'][:12]}) is not the plan "
                f"lineage.json records ({str(recorded)[:12]})"
            )
        self.spec: dict[str, Any] = self.plan["resolved"]
        self.name = str(self.spec["name"])
        self.spec_dirs = self._spec_dirs(spec_dir)
        # stage outputs as lineage recorded them: exact files, and folders
        self.files: dict[str, tuple[str, str]] = {}
        self.folders: dict[str, str] = {}
        for stage, entry in self.stages.items():
            for output in entry.get("outputs", []):
                if "files" in output:
                    self.folders[str(output["path"]).rstrip("/")] = stage
                else:
                    self.files[str(output["path"])] = (stage, str(output["sha256"]))
        self.time = self._package_time()

    @property
    def stages(self) -> dict[str, StageRecord]:
        """Every stage but the handoff itself, whose entry carries the clock of this build."""
        stages = self.lineage.get("stages", {})
        return {k: v for k, v in stages.items() if k != HANDOFF_STAGE}

    def _spec_dirs(self, spec_dir: Path | None) -> list[Path]:
        candidates = [spec_dir] if spec_dir is not None else []
        candidates.append((self.dir / "plan" / self.plan["spec"]["dir"]).resolve())
        return candidates

    def _package_time(self) -> str:
        finished = [
            str(e["finished"]) for e in self.stages.values() if e.get("finished") is not None
        ]
        stamp = max(finished) if finished else self.lineage.get("started")
        if not isinstance(stamp, str):
            raise RunError(f"{self.dir}/lineage.json records no stage times")
        try:
            epoch(stamp)
        except ValueError:
            raise RunError(f"{self.dir}/lineage.json: unreadable time {stamp!r}") from None
        return stamp

    def need(self, *stages: str) -> None:
        for stage in stages:
            record = self.stages.get(stage)
            status = record.get("status") if record is not None else None
            if status != "done":
                state = f"is {status}" if status else "has not run"
                raise RunError(
                    f"the {stage} stage {state} in {self.dir}: the handoff package needs it; "
                    f"run `rlhfspec run ... --until select` first"
                )

    def producer(self, rel: str) -> str | None:
        if rel in self.files:
            return self.files[rel][0]
        for folder, stage in self.folders.items():
            if rel == folder or rel.startswith(folder + "/"):
                return stage
        return None

    def checked(self, rel: str) -> Path:
        """A run file, refused when it differs from the bytes its stage recorded in lineage."""
        path = own_file(self.dir, rel)
        if rel in self.files:
            stage, recorded = self.files[rel]
            actual = sha256_file(path)
            if actual != recorded:
                raise RunError(
                    f"{rel} changed after the {stage} stage wrote it (sha256 {actual[:12]}, "
                    f"lineage.json records {recorded[:12]}); rerun the stage or restore the file"
                )
        return path

    def json(self, rel: str) -> Any:
        return _read_json(self.checked(rel), rel)

    def spec_file(self, rel: str, field_name: str) -> Path:
        """A file the spec references, found beside the spec and checked against the plan."""
        expected = next((i for i in self.plan["inputs"] if i["path"] == rel), None)
        if expected is None:
            raise RunError(f"{rel} ({field_name}) is not among the plan's inputs")
        tried = []
        for folder in self.spec_dirs:
            candidate = folder / rel
            tried.append(str(candidate))
            if candidate.is_file() and sha256_file(candidate) == expected["sha256"]:
                return candidate
        raise RunError(
            f"{rel} ({field_name}) with sha256 {expected['sha256'][:12]} was not found "
            f"(tried {', '.join(tried)}); give the spec's folder (spec_dir / --spec-dir)"
        )


@dataclass
class Facts:
    """Everything the generated files say, computed once so that they all agree."""

    criteria: dict[str, Any]
    batches: list[dict[str, Any]]
    reward: dict[str, Any]  # version, eval, metadata
    policy: dict[str, Any]  # method, kl, start, base_model, settings
    selection: dict[str, Any]
    chosen: dict[str, Any]  # label, step, path
    chosen_eval: dict[str, Any]
    summary: list[dict[str, Any]]
    checkpoint_meta: dict[str, Any] | None
    human: dict[str, Any] | None
    warnings: list[str]
    ai: dict[str, Any] | None = None
    """AI-judge labels in the preference data (`ai_labels`), as lineage recorded them."""

    def provenance(self, stage: str) -> dict[str, Any]:
        """What produced a file of `stage`: the stage and the versions it depended on."""
        out: dict[str, Any] = {"stage": stage, "criteria_version": self.criteria["version"]}
        if stage in {"prompts"}:
            return {"stage": stage}
        if stage in {PLAN_STAGE, "spec", "human_eval"}:
            return out
        out["annotation_batches"] = [b["id"] for b in self.batches]
        if stage in {"annotation_qc", "aggregate", "sft"}:
            return out
        # from the reward model on, the batches that matter are the ones it was trained on
        out["annotation_batches"] = list(
            self.reward["metadata"].get("annotation_batches", out["annotation_batches"])
        )
        out["reward_model"] = self.reward["version"]
        if stage == "reward_model":
            return out
        out["kl"] = self.policy["kl"]
        return out


def gather_facts(run: RunDir) -> Facts:
    run.need("annotation_qc", "aggregate", "reward_model", "policy", "evaluate", "select")
    spec = run.spec
    warnings: list[str] = []
    reward = _reward_model(run)
    batches = _batches(run, set(reward["metadata"].get("annotation_batches", [])))
    index = run.json("models/policy/checkpoints.json")
    metadata = index.get("metadata", {})
    policy = spec["policy"]
    kl = dict(metadata.get("kl") or policy["kl"])
    if policy["method"] == "dpo":
        kl["dpo_beta"] = policy["dpo"]["beta"]
    rm_used = metadata.get("reward_model")
    if rm_used and rm_used.get("sha256") != reward["version"]:
        warnings.append(
            f"the policy was trained against reward model {str(rm_used.get('sha256'))[:12]}, "
            f"but models/reward_model is now {reward['version'][:12]}"
        )
    selection = run.json("selection.json")
    chosen = _chosen(run, selection, index)
    summary = read_summary(run.json(EVAL_SUMMARY), EVAL_SUMMARY)
    chosen_eval = run.json(f"eval/{chosen['label']}.json")
    meta_path = checkpoint_meta_path(run.dir, chosen["path"])
    checkpoint_meta = _read_json(meta_path, str(meta_path)) if meta_path else None
    start_from_sft = bool(policy["start_from_sft"])
    return Facts(
        criteria={
            "version": run.plan["criteria"]["version"],
            "sha256": run.plan["criteria"]["sha256"],
            "lock_file": run.plan["criteria"].get("lock_file"),
            "history": run.plan["criteria"].get("history", []),
            "content": spec["criteria"],
        },
        batches=batches,
        reward=reward,
        policy={
            "method": policy["method"],
            "kl": kl,
            "start": "sft" if start_from_sft else policy["base_model"],
            "base_model": spec["sft"]["base_model"] if start_from_sft else policy["base_model"],
            "settings": policy[policy["method"]],
            "checkpoint_every": policy["checkpoint_every"],
            "final_kl_coef": (checkpoint_meta or {}).get("kl_coef"),
            # who trained it: rlhfspec itself, or an external engine's imported checkpoints
            "engine": metadata.get("engine"),
        },
        selection=selection,
        chosen=chosen,
        chosen_eval=chosen_eval,
        summary=summary,
        checkpoint_meta=checkpoint_meta,
        human=_human_eval(run),
        warnings=warnings,
        ai=ai_labels(run),
    )


def ai_labels(run: RunDir) -> dict[str, Any] | None:
    """How much of the preference data an AI judge labelled, from lineage: the aggregate
    stage's `ai_labels` (labels made, used, left to people; per judge its prompt sha256) and
    the QC stage's `ai_judge` review (per judge its models, backends and agreement with
    people). None when the run had no AI labels."""
    used = run.stages["aggregate"].get("metrics", {}).get("ai_labels")
    review = run.stages["annotation_qc"].get("metrics", {}).get("ai_judge") or {}
    if not used:
        return None
    judges = {}
    for name, info in sorted(used.get("judges", {}).items()):
        reviewed = review.get("judges", {}).get(name, {})
        judges[name] = {
            "labels": info.get("labels"),
            "used": info.get("used", 0),
            "prompt_sha256": info.get("prompt_sha256", []),
            "models": reviewed.get("models", []),
            "backends": reviewed.get("backends", []),
            "kappa": reviewed.get("kappa"),
            "reviewed_pairs": reviewed.get("reviewed_pairs"),
        }
    return {
        "gate": used.get("gate"),
        "labels": used.get("ai_labels"),
        "used": used.get("ai_labels_used"),
        "left_to_humans": used.get("ai_labels_left_to_humans"),
        "judges": judges,
    }


def _reward_model(run: RunDir) -> dict[str, Any]:
    """The reward model's version (sha256 of its weights), evaluation and metadata."""
    rm_meta = _read_json(
        run.dir / "models/reward_model/rlhfspec_reward_model.json",
        "models/reward_model/rlhfspec_reward_model.json",
    )
    rm_weights = run.dir / "models/reward_model/model.safetensors"
    if not rm_weights.is_file():
        raise RunError(f"models/reward_model/model.safetensors is missing from {run.dir}")
    version = sha256_file(rm_weights)
    return {"version": version, "eval": run.json("reward_model/eval.json"), "metadata": rm_meta}


def _batches(run: RunDir, used: set[str]) -> list[dict[str, Any]]:
    """The spec's annotation batches with their input hashes, marked when the RM used them."""
    inputs = {i["path"]: i for i in run.plan["inputs"]}
    return [
        {
            "id": b["id"],
            "criteria_version": b["criteria_version"],
            "path": b["path"],
            "format": b["format"],
            "notes": b["notes"],
            "sha256": inputs.get(b["path"], {}).get("sha256"),
            "rows": inputs.get(b["path"], {}).get("rows"),
            "used_by_reward_model": b["id"] in used,
        }
        for b in run.spec["annotation"]["batches"]
    ]


def _chosen(run: RunDir, selection: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """The selected checkpoint: label, step and folder; refused when none was selected."""
    chosen_row = selection.get("chosen")
    if not chosen_row:
        raise RunError(
            f"no deployment checkpoint was selected in {run.dir}: "
            f"{selection.get('reason', 'see selection.json')}"
        )
    label = str(chosen_row["label"])
    entry = next((c for c in index.get("checkpoints", []) if c["label"] == label), None)
    if entry is None:
        raise RunError(f"the selected checkpoint {label} is not in models/policy/checkpoints.json")
    return {"label": label, "step": int(chosen_row["step"]), "path": str(entry["path"])}


def _human_eval(run: RunDir) -> dict[str, Any] | None:
    """Human win rates per checkpoint, when judgements were put in the run."""
    judgements = run.dir / "eval/human_eval/judgements.jsonl"
    if not judgements.is_file():
        return None
    from rlhfspec.runtime.evaluation.selection import import_human_eval

    return import_human_eval(judgements, run.dir / "eval/human_eval/key.json")


def checkpoint_meta_path(run_dir: Path, rel: str) -> Path | None:
    """PPO keeps checkpoint.json beside the policy folder; DPO inside the checkpoint."""
    folder = run_dir / rel
    for candidate in (folder / "checkpoint.json", folder.parent / "checkpoint.json"):
        if candidate.is_file():
            return candidate
    return None
