"""The handoff package: everything a new team needs to understand what was optimised and why.

A run directory is a working area (optimizer states, trainer checkpoints, caches); the handoff
package is the artefact that outlives it. It holds the criteria document with its version
history, the prompt sampling procedure, the annotator playbook with its training materials
(worked examples, gold items with rationales), the annotation QC audit, the reward-model
evaluation by dimension with its length analysis, the deployment checkpoint's evidence and
weights (copied, or referenced by path and sha256), the lineage with a manifest that says what
produced every file, a Hugging Face model card, and an index page (HTML and Markdown) that
links everything.

Three properties make the package trustworthy rather than just convenient:

* Every file is checksummed (`CHECKSUMS.sha256`, `sha256sum -c` compatible) and described in
  `lineage/manifest.json`; `verify_package` re-hashes and reports missing, extra and altered
  files. Files copied from the run are first checked against the sha256 that `lineage.json`
  recorded when their stage wrote them, so the package never vouches for bytes the run did
  not produce.
* The same run directory gives byte-identical packages: no clock (times come from the lineage
  record), sorted keys and file lists, and a tarball with sorted entries, fixed mtime, uid/gid
  0, no user names and a gzip header without time or file name. The handoff stage's own
  lineage entry (which carries the clock time of the stage) is left out of the copied
  lineage, so `rlhfspec handoff` and the `handoff` stage write the same bytes.
* HTML is rendered by the sandboxed, autoescaping environment of `compiler/render.py` and is
  self-contained (no network request; the shared layout's Content-Security-Policy forbids
  them). Prompts and responses from evaluation, which a policy may have produced from hostile
  prompts, are shown as text, never as markup.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml
from jinja2 import TemplateError
from markupsafe import Markup

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import canonical_json, sha256_bytes, sha256_file, sha256_text
from rlhfspec.common.jsonl import JsonProblem, parse_json
from rlhfspec.common.templating import environment
from rlhfspec.common.version import __version__ as rlhfspec_version
from rlhfspec.compiler.lockfile import criteria_hash
from rlhfspec.runtime.lineage import LINEAGE_FILE
from rlhfspec.runtime.stage_api import StageContext, StageOutcome

__all__ = [
    "CHECKSUMS_FILE",
    "MANIFEST_FILE",
    "PARTS",
    "WEIGHTS_MODES",
    "PackageResult",
    "VerifyResult",
    "build_package",
    "handoff_stage",
    "verify_package",
]

PARTS = (
    "criteria",
    "sampling_procedure",
    "playbook",
    "annotation_qc",
    "reward_model_eval",
    "deployment_checkpoint",
    "lineage",
    "model_card",
)
WEIGHTS_MODES = ("include", "reference")
CHECKSUMS_FILE = "CHECKSUMS.sha256"
MANIFEST_FILE = "lineage/manifest.json"
MANIFEST_FORMAT = "rlhfspec.handoff_manifest/1"
REFERENCE_FILE = "model/REFERENCE.json"
REFERENCE_FORMAT = "rlhfspec.weights_reference/1"
MODEL_CARD_FILE = "MODEL_CARD.md"
HANDOFF_STAGE = "handoff"
PLAN_STAGE = "compile"
"""What the manifest names as the producer of the compiled plan and its documents."""

# a checkpoint folder's files that restore training, not the model: never part of the weights
_TRAINING_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|training_args\.bin|trainer_state\.json|rng_state.*)$"
)
_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# where each part's files come from, for the index and the manifest
_PART_TITLES = {
    "criteria": "Preference criteria",
    "sampling_procedure": "Prompt sampling procedure",
    "playbook": "Annotator playbook and training materials",
    "annotation_qc": "Annotation QC audit",
    "reward_model_eval": "Reward-model evaluation",
    "deployment_checkpoint": "Deployment checkpoint and its evidence",
    "lineage": "Lineage",
    "model_card": "Model card",
    "index": "This index and the checksums",
}
_PART_ABOUT = {
    "criteria": "What “better” means: ranked dimensions, disqualifiers, tie-breaking and scope, "
    "with the criteria version history from the lock file.",
    "sampling_procedure": "Where prompts come from and in what mix, the strata they must cover, "
    "the production holdout, and the check of the actual mix against the spec.",
    "playbook": "What annotators were given: the playbook, the worked examples, and the gold "
    "items with their rationales.",
    "annotation_qc": "Agreement, gold accuracy, position bias, fatigue, drift and version checks "
    "over every annotation batch, and how the votes were aggregated.",
    "reward_model_eval": "Holdout accuracy overall and per dimension, accuracy on shorter versus "
    "longer preferred responses, the reward-length correlation and the gates.",
    "deployment_checkpoint": "Every checkpoint's evaluation, the trajectory plots, sample "
    "outputs, the selection decision with each reward-hacking guard, human-evaluation results "
    "when present, and the selected checkpoint's weights or a reference to them.",
    "lineage": "The run's lineage record and the plan it executed, and a manifest with the "
    "sha256, size and producer of every file in this package.",
    "model_card": "A Hugging Face model card for the deployment checkpoint.",
    "index": "Start here. The checksums let anyone confirm that nothing was lost or changed "
    "since the package was built.",
}


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PackageResult:
    """What `build_package` wrote, for the CLI's last lines and the stage's metrics."""

    path: Path
    format: str  # "directory" or "tar.gz"
    files: int  # files in the package, CHECKSUMS.sha256 included
    total_bytes: int  # the directory's files together, or the tarball's size
    weights: str
    parts: tuple[str, ...]
    checkpoint: str
    root: str  # the tarball's top folder ("" for a directory)
    warnings: tuple[str, ...] = ()

    @property
    def index(self) -> str:
        """Where the HTML index is: a path, or `archive.tar.gz:folder/index.html`."""
        if self.format == "directory":
            return str(self.path / "index.html")
        return f"{self.path}:{self.root}/index.html"

    def describe(self) -> str:
        """Two lines for a terminal: where the package is, and where to start reading."""
        return (
            f"handoff package: {self.path} ({self.files} files, {_size(self.total_bytes)}; "
            f"deployment checkpoint {self.checkpoint}, weights {self.weights})\n"
            f"index: {self.index}"
        )


@dataclass
class VerifyResult:
    """The outcome of `verify_package`: anything missing, extra or altered fails it."""

    package: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered or self.problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        """One line per finding, then a verdict: what `rlhfspec verify` prints."""
        out = [f"missing: {p}" for p in self.missing]
        out += [f"extra: {p}" for p in self.extra]
        out += [f"altered: {p}" for p in self.altered]
        out += [f"problem: {p}" for p in self.problems]
        out += self.details
        if self.ok:
            out.append(f"{self.package}: OK, {self.checked} files match their checksums")
        else:
            out.append(
                f"{self.package}: FAILED, {len(self.missing)} missing, {len(self.extra)} extra, "
                f"{len(self.altered)} altered, {len(self.problems)} other problem(s) "
                f"in {self.checked} files checked"
            )
        return out


# ---------------------------------------------------------------------------------------------
# Reading the run directory


@dataclass
class _Entry:
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


def _json_bytes(value: Any) -> bytes:
    """Indented, key-sorted JSON: readable, and the same bytes for the same value."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _epoch(stamp: str) -> int:
    return int(datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC).timestamp())


class _Run:
    """The facts of a finished run that the package is built from, read once and checked."""

    def __init__(self, run_dir: Path, spec_dir: Path | None) -> None:
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run directory", exit_code=2)
        self.dir = run_dir
        self.lineage: dict[str, Any] = _read_json(run_dir / LINEAGE_FILE, f"{run_dir}/lineage.json")
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
    def stages(self) -> dict[str, dict[str, Any]]:
        """Every stage but the handoff itself, whose entry carries the clock of this build."""
        stages: dict[str, dict[str, Any]] = self.lineage.get("stages", {})
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
            _epoch(stamp)
        except ValueError:
            raise RunError(f"{self.dir}/lineage.json: unreadable time {stamp!r}") from None
        return stamp

    def need(self, *stages: str) -> None:
        for stage in stages:
            status = self.stages.get(stage, {}).get("status")
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
        path = self.dir / rel
        if not path.is_file():
            raise RunError(f"{rel} is missing from {self.dir}")
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


# ---------------------------------------------------------------------------------------------
# Facts shared by the index, the model card and the manifest


def _num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"
    return str(value)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


@dataclass
class _Facts:
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


def _facts(run: _Run) -> _Facts:
    run.need("annotation_qc", "aggregate", "reward_model", "policy", "evaluate", "select")
    spec = run.spec
    warnings: list[str] = []
    inputs = {i["path"]: i for i in run.plan["inputs"]}
    rm_meta = _read_json(
        run.dir / "models/reward_model/rlhfspec_reward_model.json",
        "models/reward_model/rlhfspec_reward_model.json",
    )
    rm_weights = run.dir / "models/reward_model/model.safetensors"
    if not rm_weights.is_file():
        raise RunError(f"models/reward_model/model.safetensors is missing from {run.dir}")
    rm_version = sha256_file(rm_weights)
    used = set(rm_meta.get("annotation_batches", []))
    batches = [
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
        for b in spec["annotation"]["batches"]
    ]
    rm_eval = run.json("reward_model/eval.json")
    index = run.json("models/policy/checkpoints.json")
    metadata = index.get("metadata", {})
    policy = spec["policy"]
    kl = dict(metadata.get("kl") or policy["kl"])
    if policy["method"] == "dpo":
        kl["dpo_beta"] = policy["dpo"]["beta"]
    rm_used = metadata.get("reward_model")
    if rm_used and rm_used.get("sha256") != rm_version:
        warnings.append(
            f"the policy was trained against reward model {str(rm_used.get('sha256'))[:12]}, "
            f"but models/reward_model is now {rm_version[:12]}"
        )
    selection = run.json("selection.json")
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
    chosen: dict[str, Any] = {
        "label": label,
        "step": int(chosen_row["step"]),
        "path": str(entry["path"]),
    }
    summary = run.json("eval/summary.json")
    chosen_eval = run.json(f"eval/{label}.json")
    meta_path = _checkpoint_meta_path(run.dir, chosen["path"])
    checkpoint_meta = _read_json(meta_path, str(meta_path)) if meta_path else None
    human = None
    judgements = run.dir / "eval/human_eval/judgements.jsonl"
    if judgements.is_file():
        from rlhfspec.runtime.evaluation.selection import import_human_eval

        human = import_human_eval(judgements, run.dir / "eval/human_eval/key.json")
    start_from_sft = bool(policy["start_from_sft"])
    base_model = spec["sft"]["base_model"] if start_from_sft else policy["base_model"]
    return _Facts(
        criteria={
            "version": run.plan["criteria"]["version"],
            "sha256": run.plan["criteria"]["sha256"],
            "lock_file": run.plan["criteria"].get("lock_file"),
            "history": run.plan["criteria"].get("history", []),
            "content": spec["criteria"],
        },
        batches=batches,
        reward={"version": rm_version, "eval": rm_eval, "metadata": rm_meta},
        policy={
            "method": policy["method"],
            "kl": kl,
            "start": "sft" if start_from_sft else policy["base_model"],
            "base_model": base_model,
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
        human=human,
        warnings=warnings,
    )


ENGINE_FILES = {
    "overrides.txt": "config as exported (Hydra overrides of verl's main_ppo)",
    "MAPPING.md": "mapping of every spec setting to the engine's keys",
    "rlhfspec_export.json": "export manifest",
    "config.yaml": "own composed config (Hydra)",
    "overrides.yaml": "command-line overrides (Hydra)",
    "launch.json": "launch record (engine version)",
}


def _engine(engine: dict[str, Any] | None) -> dict[str, Any]:
    """Who trained the policy, for the model card: rlhfspec, or the engine of an imported job."""
    if not engine:
        return {"external": False, "name": "rlhfspec"}
    return {
        "external": True,
        "name": str(engine.get("name")),
        "version": str(engine.get("version") or "not recorded"),
        "config_sha256": str(engine.get("exported_config_sha256")),
        "job_config": sorted(engine.get("job_config") or {}),
        "acknowledged": sorted((engine.get("acknowledged") or {}).items()),
    }


def _checkpoint_meta_path(run_dir: Path, rel: str) -> Path | None:
    """PPO keeps checkpoint.json beside the policy folder; DPO inside the checkpoint."""
    folder = run_dir / rel
    for candidate in (folder / "checkpoint.json", folder.parent / "checkpoint.json"):
        if candidate.is_file():
            return candidate
    return None


def _weight_files(run_dir: Path, rel: str) -> list[Path]:
    """The files a model loads from: weights, config, tokenizer (never optimizer state)."""
    folder = run_dir / rel
    if not folder.is_dir():
        raise RunError(f"the deployment checkpoint's folder {rel} is missing from {run_dir}")
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


# ---------------------------------------------------------------------------------------------
# Collecting the package's files


def _collect(run: _Run, facts: _Facts, parts: Sequence[str], weights: str) -> list[_Entry]:
    """Every file of the package except the generated index, card, manifest and checksums."""
    entries: list[_Entry] = []
    documents = {d["file"]: d["sha256"] for d in run.plan.get("documents", [])}

    def copy(rel: str, dest: str, part: str, about: str, stage: str | None = None) -> None:
        path = run.checked(rel)
        producer = stage or run.producer(rel)
        if rel.startswith("plan/"):
            name = rel.split("/", 1)[1]
            if name in documents and sha256_file(path) != documents[name]:
                raise RunError(f"{rel} differs from the document the plan recorded; recompile")
            producer = PLAN_STAGE
        if producer is None:
            raise RunError(f"{rel}: lineage.json does not say which stage wrote it")
        entries.append(_Entry(dest, part, about, facts.provenance(producer), rel, file=path))

    def make(dest: str, part: str, about: str, data: bytes, stage: str = HANDOFF_STAGE) -> None:
        entries.append(_Entry(dest, part, about, facts.provenance(stage), None, data=data))

    if "criteria" in parts:
        copy("plan/criteria.md", "criteria/criteria.md", "criteria", "The criteria document")
        copy("plan/criteria.html", "criteria/criteria.html", "criteria", "The criteria document")
        make(
            "criteria/history.json",
            "criteria",
            "Criteria version history from the lock file, with each version's content",
            _json_bytes(_history(run, facts)),
        )
    if "sampling_procedure" in parts:
        about = "The prompt sampling procedure"
        copy("plan/sampling.md", "sampling/sampling.md", "sampling_procedure", about)
        copy("plan/sampling.html", "sampling/sampling.html", "sampling_procedure", about)
        check = "The check of the actual prompt mix, strata and holdout against the spec"
        copy("prompts/report.json", "sampling/prompt_check.json", "sampling_procedure", check)
        copy("prompts/report.md", "sampling/prompt_check.md", "sampling_procedure", check)
    if "playbook" in parts:
        about = "The annotator playbook"
        copy("plan/playbook.md", "playbook/playbook.md", "playbook", about)
        copy("plan/playbook.html", "playbook/playbook.html", "playbook", about)
        make(
            "playbook/worked_examples.json",
            "playbook",
            "Worked examples from the criteria: prompt, two responses, the preferred one and why",
            _json_bytes(facts.criteria["content"].get("examples", [])),
            PLAN_STAGE,
        )
        gold = run.spec["annotation"].get("gold")
        if gold:
            source = run.spec_file(gold["path"], "annotation.gold.path")
            entries.append(
                _Entry(
                    "playbook/gold_items.jsonl",
                    "playbook",
                    "Gold items with known answers and their rationales (annotator training)",
                    facts.provenance("spec"),
                    f"spec:{gold['path']}",
                    file=source,
                )
            )
    if "annotation_qc" in parts:
        for name in ("report.html", "report.md", "report.json"):
            copy(f"qc/{name}", f"annotation_qc/{name}", "annotation_qc", "The annotation QC audit")
        copy(
            "preferences/summary.json",
            "annotation_qc/aggregation_summary.json",
            "annotation_qc",
            "How the votes became preference pairs: items, split votes, ties, excluded votes",
        )
    if "reward_model_eval" in parts:
        about = "Reward-model evaluation: per dimension, length analysis, gates"
        copy("reward_model/eval.json", "reward_model/eval.json", "reward_model_eval", about)
        copy("reward_model/eval.md", "reward_model/eval.md", "reward_model_eval", about)
    if "deployment_checkpoint" in parts:
        part = "deployment_checkpoint"
        for row in facts.summary:
            copy(
                f"eval/{row['label']}.json",
                f"evidence/{row['label']}.json",
                part,
                f"Evaluation of checkpoint {row['label']} (step {row['step']}) with samples",
            )
        copy("eval/summary.json", "evidence/summary.json", part, "Per-checkpoint table")
        copy("eval/prompt_sets.json", "evidence/prompt_sets.json", part, "Evaluation prompts")
        copy("eval/trajectory.svg", "evidence/trajectory.svg", part, "Trajectory plots")
        copy("selection.json", "evidence/selection.json", part, "The selection decision")
        copy(
            "models/policy/checkpoints.json",
            "evidence/checkpoints.json",
            part,
            "The checkpoint index with the KL settings and the reward-model version",
        )
        engine = run.dir / "models/policy/engine"
        for name in sorted(p.name for p in engine.iterdir()) if engine.is_dir() else []:
            copy(
                f"models/policy/engine/{name}",
                f"evidence/engine/{name}",
                part,
                f"The external training job's {ENGINE_FILES.get(name, name)}",
                "policy",
            )
        if (run.dir / "models/policy/metrics.jsonl").is_file():
            copy(
                "models/policy/metrics.jsonl",
                "evidence/training_metrics.jsonl",
                part,
                "Training metrics per update or step (score, KL, kl_coef, length, ...)",
            )
        if facts.human is not None:
            for name in ("judgements.jsonl", "key.json", "tasks.jsonl"):
                rel = f"eval/human_eval/{name}"
                if (run.dir / rel).is_file():
                    stage = "human_eval" if name == "judgements.jsonl" else None
                    copy(rel, f"evidence/human_eval/{name}", part, "Human evaluation", stage)
            make(
                "evidence/human_eval/results.json",
                part,
                "Human win rate of each checkpoint against the start",
                _json_bytes(facts.human),
            )
        _add_weights(run, facts, entries, weights)
    if "lineage" in parts:
        doc = dict(run.lineage)
        doc["stages"] = run.stages
        make(
            "lineage/lineage.json",
            "lineage",
            "The run's lineage record (without the handoff stage's own entry)",
            (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        )
        copy("plan/plan.json", "lineage/plan.json", "lineage", "The compiled plan the run executed")
    return entries


def _history(run: _Run, facts: _Facts) -> dict[str, Any]:
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
                doc = json.loads(lock.read_text(encoding="utf-8"))
                for item in doc.get("criteria", []):
                    if criteria_hash(item["content"]) == item["sha256"]:
                        contents[(str(item["version"]), str(item["sha256"]))] = item["content"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
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
        "current": {"version": facts.criteria["version"], "sha256": facts.criteria["sha256"]},
        "lock_file": lock_name,
        "source": source,
        "history": history,
    }


def _add_weights(run: _Run, facts: _Facts, entries: list[_Entry], weights: str) -> None:
    rel = facts.chosen["path"]
    files = _weight_files(run.dir, rel)
    producer = run.producer(rel) or "policy"
    meta_path = _checkpoint_meta_path(run.dir, rel)
    if meta_path is not None:
        entries.append(
            _Entry(
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
    if weights == "include":
        for path, item in zip(files, listed, strict=True):
            name = path.relative_to(run.dir / rel).as_posix()
            entries.append(
                _Entry(
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
            _Entry(
                REFERENCE_FILE,
                "deployment_checkpoint",
                "The deployment weights by path (relative to the run directory) and sha256",
                facts.provenance(HANDOFF_STAGE),
                None,
                data=_json_bytes(reference),
            )
        )


# ---------------------------------------------------------------------------------------------
# Rendering: index, model card


_SVG_NS = "{http://www.w3.org/2000/svg}"
_SVG_TAGS = frozenset(
    ("svg", "g", "text", "tspan", "rect", "line", "polyline", "polygon", "circle", "ellipse")
    + ("path", "title", "desc")
)
_SVG_ATTRS = frozenset(
    (
        "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "rx", "ry", "dx", "dy", "d",
        "points", "width", "height", "viewBox", "transform", "class", "role", "fill", "stroke",
        "stroke-width", "stroke-dasharray", "stroke-linecap", "stroke-linejoin", "opacity",
        "fill-opacity", "stroke-opacity", "font-family", "font-size", "font-weight",
        "font-style", "text-anchor", "dominant-baseline", "preserveAspectRatio", "aria-label",
    )
)  # fmt: skip
_SVG_VALUE = re.compile(r"^[^<>&\"'`\\]*$")


def inline_svg(text: str) -> Markup | None:
    """An SVG plot re-serialised from an allowlist of elements and attributes, or None.

    The plot comes from the run directory, which anyone may have edited; rebuilding it from
    parsed elements (instead of pasting the file) means no script, event handler, link,
    comment or processing instruction can reach the page, whatever the file held.
    """
    if "<!" in text:  # no DOCTYPE (entities), comments or CDATA
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None

    def render(element: ET.Element) -> str | None:
        if not element.tag.startswith(_SVG_NS) or element.tag[len(_SVG_NS) :] not in _SVG_TAGS:
            return None
        tag = element.tag[len(_SVG_NS) :]
        attrs = ""  # no xmlns: the HTML parser puts an inline <svg> in the SVG namespace
        for name, value in element.attrib.items():
            if (
                name not in _SVG_ATTRS
                or not _SVG_VALUE.match(value)
                or "(" in value
                and (name != "transform" or not re.fullmatch(r"[a-z]+\([-0-9., ]*\)", value))
            ):
                return None
            attrs += f' {name}="{html.escape(value)}"'
        inner = [html.escape(element.text or "", quote=False)]
        for child in element:
            rendered = render(child)
            if rendered is None:
                return None
            inner.append(rendered + html.escape(child.tail or "", quote=False))
        return f"<{tag}{attrs}>{''.join(inner)}</{tag}>"

    out = render(root)
    return Markup(out) if out is not None else None  # noqa: S704 - rebuilt and escaped above


def _render(name: str, values: dict[str, Any]) -> str:
    try:
        return str(environment().get_template(name).render(**values))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise RunError(f"template {name}{where}: {exc}") from None


def _sets_table(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, block in evaluation.get("sets", {}).items():
        rows.append(
            {
                "set": name,
                "n": _num(block.get("n")),
                "reward_mean": _num(block["reward"]["mean"]),
                "reward_std": _num(block["reward"].get("std")),
                "kl": _num(block["kl"]["mean"]),
                "words": _num(block["length"]["words_mean"]),
                "length_corr": _num(block.get("length_reward_correlation")),
                "disqualifier_rate": _num(block.get("disqualifier_rate")),
                "win_rate": _num(block.get("win_rate_vs_start")),
                "eos_rate": _num(block.get("eos_rate")),
            }
        )
    return rows


def _context(
    run: _Run,
    facts: _Facts,
    parts: Sequence[str],
    weights: str,
    listing: list[tuple[str, str, str, int | None]],
) -> dict[str, Any]:
    """What the index and the model card templates see; numbers formatted once, here."""
    spec = run.spec
    criteria = facts.criteria["content"]
    selection = facts.selection
    candidates = {c["label"]: c for c in selection.get("candidates", [])}
    chosen = facts.chosen
    rm_eval = facts.reward["eval"]
    holdout = rm_eval.get("holdout", {})
    rank = {d["id"]: i for i, d in enumerate(criteria["dimensions"])}
    per_dim = sorted(
        holdout.get("per_dimension", {}).items(), key=lambda kv: (rank.get(kv[0], 1 << 30), kv[0])
    )
    length = holdout.get("length", {})
    gates = facts.reward["metadata"].get("gates", [])
    checkpoints = []
    for row in facts.summary:
        cand = candidates.get(row["label"])
        human = (facts.human or {}).get(row["label"])
        checkpoints.append(
            {
                "label": row["label"],
                "step": _num(row["step"]),
                "reward_mean": _num(row.get("reward_mean")),
                "kl": _num(row.get("kl_mean")),
                "words": _num(row.get("words_mean")),
                "length_corr": _num(row.get("length_reward_correlation")),
                "disqualifier_rate": _num(row.get("disqualifier_rate")),
                "win_rate": _num(row.get("win_rate_vs_start")),
                "human": f"{_num(human['win_rate'])} (n={human['n']})" if human else "n/a",
                "verdict": "start"
                if cand is None
                else ("passes" if cand["passed"] else "fails " + ", ".join(cand["failed_guards"])),
                "chosen": row["label"] == chosen["label"],
            }
        )
    chosen_guards = [
        {
            "name": name,
            "value": _num(check["value"]),
            "threshold": _num(check["threshold"]),
            "passed": check["passed"],
        }
        for name, check in candidates.get(chosen["label"], {}).get("guards", {}).items()
    ]
    samples = [
        {
            "set": name,
            "prompt": str(s.get("prompt", "")),
            "response": str(s.get("response", "")),
            "score": _num(s.get("score")),
            "flags": ", ".join(str(f) for f in s.get("flags", [])),
        }
        for name, block in facts.chosen_eval.get("sets", {}).items()
        for s in block.get("samples", [])
    ]
    svg = None
    if "deployment_checkpoint" in parts:
        svg = inline_svg((run.dir / "eval/trajectory.svg").read_text(encoding="utf-8"))
        if svg is None:
            facts.warnings.append(
                "eval/trajectory.svg is not a plain rlhfspec plot; it is linked, not shown inline"
            )
    kl = facts.policy["kl"]
    kl_text = ", ".join(f"{k} {_num(v)}" for k, v in sorted(kl.items()))
    batch_text = ", ".join(f"{b['id']} (criteria {b['criteria_version']})" for b in facts.batches)
    summary_rows = [
        ("Criteria version", f"{facts.criteria['version']} (sha256 {facts.criteria['sha256'][:12]})"),
        ("Annotation batches", batch_text or "none"),
        ("Reward-model holdout accuracy",
         f"{_num(holdout.get('accuracy'))} on {_num(holdout.get('pairs'))} pairs "
         f"(reward model {facts.reward['version'][:12]})"),
        ("Policy optimisation", f"{facts.policy['method'].upper()} from {facts.policy['start']}; KL: {kl_text}"),
        ("Selected checkpoint", f"{chosen['label']} (step {chosen['step']}), rule: {selection.get('rule')}"),
        ("Why", str(selection.get("reason", ""))),
    ]  # fmt: skip
    parts_view = []
    for part in [*[p for p in PARTS if p in parts], "index"]:
        files = [
            {"path": path, "about": about, "size": _size(size) if size is not None else ""}
            for path, owner, about, size in listing
            if owner == part
        ]
        if files:
            parts_view.append(
                {
                    "id": part,
                    "title": _PART_TITLES[part],
                    "about": _PART_ABOUT[part],
                    "files": files,
                }
            )
    eval_settings = facts.chosen_eval.get("settings", {})
    dims = [
        {"rank": i + 1, "id": d["id"], "name": d.get("name", d["id"]), "description": d["description"]}
        for i, d in enumerate(criteria["dimensions"])
    ]  # fmt: skip
    weakest = min(per_dim, key=lambda kv: kv[1]["accuracy"]) if per_dim else None
    return {
        "meta": {
            "generator": f"rlhfspec {rlhfspec_version}",
            "name": run.name,
            "criteria_version": facts.criteria["version"],
            "criteria_sha256": facts.criteria["sha256"],
            "spec_file": run.plan["spec"]["file"],
        },
        "run": {
            "id": str(run.lineage.get("run_id", run.dir.name)),
            "finished": run.time,
            "fingerprint": run.plan["fingerprint"],
            "seed": _num(spec["seed"]),
        },
        "parts": list(parts),
        "weights": weights,
        "summary": summary_rows,
        "contents": parts_view,
        "batches": facts.batches,
        "checkpoints": checkpoints,
        "guards": chosen_guards,
        "selection": {
            "rule": str(selection.get("rule")),
            "reason": str(selection.get("reason", "")),
            "tie_break": str(selection.get("tie_break", "")),
            "notes": [str(n) for n in selection.get("notes", [])],
            "ranking": ", ".join(str(r) for r in selection.get("ranking", [])),
            "human_present": bool(selection.get("human_present")),
        },
        "chosen": {**chosen, "folder": chosen["path"]},
        "sets": _sets_table(facts.chosen_eval),
        "samples": samples,
        "svg": svg,
        "human": [
            {"label": label, **{k: _num(v) for k, v in result.items()}}
            for label, result in sorted((facts.human or {}).items())
        ],
        "reward": {
            "version": facts.reward["version"],
            "accuracy": _num(holdout.get("accuracy")),
            "pairs": _num(holdout.get("pairs")),
            "per_dimension": [
                {"id": k, "accuracy": _num(v.get("accuracy")), "pairs": _num(v.get("pairs"))}
                for k, v in per_dim
            ],
            "shorter": _num(length.get("preferred_shorter", {}).get("accuracy")),
            "shorter_pairs": _num(length.get("preferred_shorter", {}).get("pairs")),
            "longer": _num(length.get("preferred_longer", {}).get("accuracy")),
            "longer_pairs": _num(length.get("preferred_longer", {}).get("pairs")),
            "pearson": _num(length.get("pearson_reward_length")),
            "gates": [
                {
                    "name": g["name"],
                    "value": _num(g.get("value")),
                    "threshold": _num(g.get("threshold")),
                    "passed": bool(g.get("passed")),
                    "overridden": bool(g.get("overridden")),
                }
                for g in gates
            ],
            "weakest": (
                {"id": weakest[0], "accuracy": _num(weakest[1].get("accuracy"))}
                if weakest
                else None
            ),
            "batches": ", ".join(facts.reward["metadata"].get("annotation_batches", [])),
            "base_model": str(facts.reward["metadata"].get("base_model", "")),
        },
        "policy": {
            "method": facts.policy["method"],
            "method_name": "PPO" if facts.policy["method"] == "ppo" else "DPO",
            "start": str(facts.policy["start"]),
            "base_model": str(facts.policy["base_model"]),
            "kl": [(k, _num(v)) for k, v in sorted(kl.items())],
            "final_kl_coef": _num(facts.policy["final_kl_coef"]),
            "settings": [
                (k, _num(v))
                for k, v in sorted(facts.policy["settings"].items())
                if not isinstance(v, dict)
            ],
            "checkpoint_every": _num(facts.policy["checkpoint_every"]),
            "engine": _engine(facts.policy["engine"]),
        },  # fmt: skip
        "sft": {
            "enabled": bool(spec["sft"]["enabled"]),
            "base_model": str(spec["sft"]["base_model"]),
            "epochs": _num(spec["sft"]["train"]["epochs"]),
            "learning_rate": _num(spec["sft"]["train"]["learning_rate"]),
            "data": str(spec["sft"].get("data", "")),
        },
        "criteria": {
            "summary": str(criteria.get("summary", "")),
            "dimensions": dims,
            "disqualifiers": [
                {"id": q["id"], "description": q["description"], "detected": "detect" in q}
                for q in criteria.get("disqualifiers", [])
            ],
            "tie_rule": str(criteria["tie_breaking"]["rule"]),
            "tie_then": str(criteria["tie_breaking"]["then"]),
            "in_scope": list(criteria["scope"]["in_scope"]),
            "out_of_scope": list(criteria["scope"]["out_of_scope"]),
        },
        "evaluation": {
            "prompt_sets": ", ".join(facts.chosen_eval.get("sets", {})),
            "temperature": _num(eval_settings.get("temperature")),
            "max_new_tokens": _num(eval_settings.get("max_new_tokens")),
            "kl_method": str(facts.chosen_eval.get("kl_method", "")),
            "guards": [(k, _num(v)) for k, v in selection.get("guards", {}).items()],
        },
        "warnings": facts.warnings,
    }


def _front_matter(run: _Run, facts: _Facts) -> str:
    """The model card's YAML front matter, dumped by PyYAML so that any text stays valid YAML."""
    results = []
    for name, block in facts.chosen_eval.get("sets", {}).items():
        metrics = [
            {
                "type": "reward_mean",
                "name": f"Mean reward (reward model {facts.reward['version'][:12]})",
                "value": block["reward"]["mean"],
            },
            {"type": "kl", "name": "Mean KL to the reference", "value": block["kl"]["mean"]},
        ]
        if block.get("win_rate_vs_start") is not None:
            metrics.append(
                {
                    "type": "win_rate",
                    "name": "Win rate against the starting policy (reward-model judge)",
                    "value": block["win_rate_vs_start"],
                }
            )
        results.append(
            {
                "task": {"type": "text-generation", "name": "Text generation"},
                "dataset": {
                    "type": f"rlhfspec/{run.name}-{name}",
                    "name": f"{run.name} {name.replace('_', ' ')} prompts",
                    "split": name,
                },
                "metrics": metrics,
            }
        )
    front = {
        "license": "other",
        "base_model": str(facts.policy["base_model"]),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["rlhf", "rlhfspec", str(facts.policy["method"])],
        "datasets": [],
        "model-index": [{"name": f"{run.name}-{facts.chosen['label']}", "results": results}],
    }
    dumped: str = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return dumped


# ---------------------------------------------------------------------------------------------
# Writing


def _checksums(files: dict[str, str]) -> bytes:
    lines = [f"{files[path]}  {path}\n" for path in sorted(files)]
    return "".join(lines).encode("utf-8")


def _safe_name(path: str) -> bool:
    pure = PurePosixPath(path)
    return (
        bool(path)
        and not pure.is_absolute()
        and ".." not in pure.parts
        and "\\" not in path
        and "\n" not in path
        and "\r" not in path
        and str(pure) == path
    )


def _write_tree(root: Path, entries: list[_Entry]) -> None:
    for entry in entries:
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.data is not None:
            target.write_bytes(entry.data)
        else:
            assert entry.file is not None
            shutil.copyfile(entry.file, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tar_info(name: str, *, size: int = 0, directory: bool, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tarball(tree: Path, target: Path, top: str, mtime: int) -> None:
    """A reproducible tar.gz: sorted entries, fixed owner and time, no name or time in gzip."""
    paths = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_tar_info(top, directory=True, mtime=mtime))
        for rel in paths:
            path = tree / rel
            name = f"{top}/{rel}"
            if path.is_dir():
                tar.addfile(_tar_info(name, directory=True, mtime=mtime))
            else:
                info = _tar_info(name, size=path.stat().st_size, directory=False, mtime=mtime)
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        raw.flush()


def _is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def build_package(
    run_dir: Path,
    out: Path,
    *,
    weights: str | None = None,
    spec_dir: Path | None = None,
    include: Sequence[str] | None = None,
) -> PackageResult:
    """Build the handoff package of a finished run into `out` (a directory, or `.tar.gz`).

    `weights` is `include` (copy the deployment checkpoint's model files) or `reference`
    (record their paths, relative to the run directory, and sha256); by default the plan's
    `handoff.weights`. `spec_dir` is the spec's
    folder, where the gold items are read from (checked against the plan's sha256); by default
    the folder the plan names. `include` lists the parts (default: the plan's
    `handoff.include`). The package is written to a temporary sibling of `out` and renamed
    into place, so a failure never leaves a half-written package; an existing package at
    `out` is replaced, anything else there is refused.
    """
    run = _Run(run_dir, spec_dir)
    weights = str(run.spec["handoff"]["weights"]) if weights is None else weights
    if weights not in WEIGHTS_MODES:
        raise RunError(f"weights must be one of {', '.join(WEIGHTS_MODES)}, got {weights!r}")
    parts = tuple(include if include is not None else run.spec["handoff"]["include"])
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise RunError(f"unknown handoff part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    tarball = _is_tarball(out)
    _check_target(out, tarball)
    try:
        return _build(run, out, parts, weights, tarball)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # run files are data a person may have edited: say so instead of crashing
        raise RunError(
            f"{run_dir}: a run file lacks what the handoff package needs "
            f"({type(exc).__name__}: {exc}); was the run made by this version of rlhfspec?"
        ) from exc


def _build(
    run: _Run, out: Path, parts: tuple[str, ...], weights: str, tarball: bool
) -> PackageResult:
    facts = _facts(run)
    entries = _collect(run, facts, parts, weights)

    # the generated files, named before they are rendered so that the index can list them
    planned: list[tuple[str, str, str, int | None]] = [
        (e.path, e.part, e.description, e.size()) for e in entries
    ]
    if "model_card" in parts:
        planned.append((MODEL_CARD_FILE, "model_card", "Hugging Face model card", None))
    if "lineage" in parts:
        about = "Every file with sha256, size and what produced it"
        planned.append((MANIFEST_FILE, "lineage", about, None))
    planned += [
        ("index.html", "index", "The index as HTML, with the trajectory plot and samples", None),
        ("index.md", "index", "The index in Markdown", None),
        (CHECKSUMS_FILE, "index", "sha256 of every file (sha256sum format)", None),
    ]
    planned.sort()
    descriptions = {path: description for path, _, description, _ in planned}
    context = _context(run, facts, parts, weights, planned)
    if "model_card" in parts:
        card = _render("model_card.md.j2", {**context, "front_matter": _front_matter(run, facts)})
        entries.append(
            _Entry(
                MODEL_CARD_FILE,
                "model_card",
                descriptions[MODEL_CARD_FILE],
                facts.provenance(HANDOFF_STAGE),
                data=card.encode("utf-8"),
            )
        )
    for name, template in (
        ("index.html", "handoff_index.html.j2"),
        ("index.md", "handoff_index.md.j2"),
    ):
        text = _render(template, context)
        entries.append(
            _Entry(
                name,
                "index",
                descriptions[name],
                facts.provenance(HANDOFF_STAGE),
                data=text.encode(),
            )
        )
    hashes = {e.path: e.sha256() for e in entries}
    if "lineage" in parts:
        manifest = _manifest(run, facts, parts, weights, entries, hashes)
        data = _json_bytes(manifest)
        entries.append(
            _Entry(
                MANIFEST_FILE,
                "lineage",
                descriptions[MANIFEST_FILE],
                facts.provenance(HANDOFF_STAGE),
                data=data,
            )
        )
        hashes[MANIFEST_FILE] = sha256_bytes(data)
    bad = [e.path for e in entries if not _safe_name(e.path)]
    if bad:
        raise RunError(f"cannot package file name(s) {bad!r}")
    entries.append(
        _Entry(
            CHECKSUMS_FILE,
            "index",
            descriptions[CHECKSUMS_FILE],
            {"stage": HANDOFF_STAGE},
            data=_checksums(hashes),
        )
    )
    top = f"{run.name}-handoff"
    written = _write(out, entries, tarball, top, _epoch(run.time))
    return PackageResult(
        path=out,
        format="tar.gz" if tarball else "directory",
        files=len(entries),
        total_bytes=written,
        weights=weights,
        parts=parts,
        checkpoint=facts.chosen["label"],
        root=top if tarball else "",
        warnings=tuple(facts.warnings),
    )


def _manifest(
    run: _Run,
    facts: _Facts,
    parts: Sequence[str],
    weights: str,
    entries: list[_Entry],
    hashes: dict[str, str],
) -> dict[str, Any]:
    files = [
        {
            "path": e.path,
            "sha256": hashes[e.path],
            "bytes": e.size(),
            "part": e.part,
            "description": e.description,
            "source": e.source,
            "produced_by": e.producer,
        }
        for e in sorted(entries, key=lambda e: e.path)
    ]
    reward_meta = facts.reward["metadata"]
    return {
        "format": MANIFEST_FORMAT,
        "generator": f"rlhfspec {rlhfspec_version}",
        "run": {
            "run_id": run.lineage.get("run_id"),
            "name": run.name,
            "plan_fingerprint": run.plan["fingerprint"],
            "spec_sha256": run.plan["spec"]["sha256"],
            "seed": run.spec["seed"],
            "started": run.lineage.get("started"),
            "finished": run.time,
            "libraries": run.lineage.get("libraries"),
        },
        "parts": list(parts),
        "criteria": {
            "version": facts.criteria["version"],
            "sha256": facts.criteria["sha256"],
            "history": facts.criteria["history"],
        },
        "annotation_batches": facts.batches,
        "reward_model": {
            "version": facts.reward["version"],
            "version_is": "sha256 of models/reward_model/model.safetensors",
            "criteria_version": reward_meta.get("criteria_version"),
            "annotation_batches": reward_meta.get("annotation_batches"),
            "holdout": facts.reward["eval"].get("holdout", {}).get("accuracy"),
            "gates": reward_meta.get("gates", []),
        },
        "policy": {
            "method": facts.policy["method"],
            "start": facts.policy["start"],
            "base_model": facts.policy["base_model"],
            "kl": facts.policy["kl"],
            "final_kl_coef": facts.policy["final_kl_coef"],
        },
        "deployment_checkpoint": {
            **facts.chosen,
            "rule": facts.selection.get("rule"),
            "reason": facts.selection.get("reason"),
            "weights": weights,
        },
        "checks": "files copied from the run matched the sha256 lineage.json recorded for them; "
        "plan documents matched plan.json; gold items matched the plan's input sha256",
        "files": files,
    }


def _check_target(out: Path, tarball: bool) -> None:
    if tarball:
        if out.is_dir():
            raise RunError(f"{out} is a directory; a .tar.gz package must be a file")
        return
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / CHECKSUMS_FILE).is_file():
        raise RunError(
            f"{out} exists and is not a handoff package (no {CHECKSUMS_FILE}); "
            "choose another path or remove it"
        )


def _write(out: Path, entries: list[_Entry], tarball: bool, top: str, mtime: int) -> int:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tree = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise RunError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        os.chmod(tree, 0o777 & ~_umask())
        _write_tree(tree, entries)
        if tarball:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                os.chmod(tmp, 0o666 & ~_umask())
                _write_tarball(tree, tmp, top, mtime)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
            return out.stat().st_size
        total = sum(e.size() for e in entries)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rename(out, old / "package")
            os.rename(tree, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tree, out)
        return total
    except OSError as exc:
        raise RunError(f"cannot write the handoff package {out}: {exc.strerror or exc}") from None
    finally:
        if tree.exists():
            shutil.rmtree(tree, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The stage


def handoff_stage(ctx: StageContext) -> StageOutcome:
    """The plan's last stage: the package in `handoff/` or `handoff.tar.gz` of the run."""
    settings = ctx.settings["handoff"]
    fmt = settings["format"]
    rel = "handoff.tar.gz" if fmt == "tar.gz" else "handoff"
    result = build_package(
        ctx.run_dir,
        ctx.path(rel),
        weights=settings["weights"],
        spec_dir=ctx.project.folder,
        include=settings["include"],
    )
    for warning in result.warnings:
        ctx.log(f"warning: {warning}")
    index = f"{rel}/index.html" if fmt != "tar.gz" else f"{rel}:{result.root}/index.html"
    return StageOutcome(
        [rel],
        {
            "files": result.files,
            "bytes": result.total_bytes,
            "weights": result.weights,
            "format": result.format,
            "checkpoint": result.checkpoint,
            "parts": list(result.parts),
            "index": index,
        },
        summary=f"handoff package {ctx.path(rel)} ({result.files} files, {_size(result.total_bytes)}); "
        f"index {ctx.path(rel) / 'index.html' if fmt != 'tar.gz' else result.index}",
    )


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass
class _Found:
    sha256: str
    size: int
    data: bytes | None  # kept for the three files verification reads


_KEEP = (CHECKSUMS_FILE, MANIFEST_FILE, REFERENCE_FILE)


#: bounds on what verification reads: metadata files are read whole, tar headers
#: (GNU long names, pax records) are read whole by tarfile, members are counted
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_MEMBERS = 100_000


def _hash_keep(handle: IO[bytes], keep: bool, name: str, problems: list[str]) -> _Found:
    """Hash a member in chunks; keep its bytes (up to MAX_METADATA_BYTES) when verification
    reads it whole."""
    digest = hashlib.sha256()
    size = 0
    kept: list[bytes] | None = [] if keep else None
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
        if kept is not None:
            kept.append(chunk)
            if size > MAX_METADATA_BYTES:
                problems.append(f"{name} is larger than {MAX_METADATA_BYTES // 2**20} MiB")
                kept = None
    return _Found(digest.hexdigest(), size, None if kept is None else b"".join(kept))


def _scan_directory(root: Path, problems: list[str]) -> dict[str, _Found]:
    found: dict[str, _Found] = {}
    for count, path in enumerate(sorted(root.rglob("*"))):
        if count >= MAX_MEMBERS:
            raise RunError(f"{root}: more than {MAX_MEMBERS:,} entries; not a handoff package")
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel} is a symbolic link; a package holds plain files only")
        elif path.is_file():
            with path.open("rb") as handle:
                found[rel] = _hash_keep(handle, rel in _KEEP, rel, problems)
        elif not path.is_dir():
            problems.append(f"{rel} is not a regular file")
    return found


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads GNU long-name and pax headers whole: refuse large ones before reading."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE)
        if (self.type in extended or self.type == tarfile.XGLTYPE) and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"an extended header of {self.size:,} bytes (at most {MAX_HEADER_BYTES:,})"
            )
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def _check_end(gz: gzip.GzipFile, tar: tarfile.TarFile) -> None:
    """After the last member only the end-of-archive zero blocks may follow, then the end
    of the gzip stream: trailing data (or a second gzip member) is not part of the package."""
    gz.seek(tar.offset)
    while chunk := gz.read(1 << 20):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError("data after the end of the archive")


def _tar_members(path: Path, problems: list[str]) -> dict[str, _Found]:
    members: dict[str, _Found] = {}
    with (
        gzip.open(path, "rb") as gz,
        tarfile.open(fileobj=gz, mode="r:", tarinfo=_BoundedTarInfo) as tar,
    ):
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise tarfile.ReadError(f"more than {MAX_MEMBERS:,} members")
            name = member.name.rstrip("/")
            if not _safe_name(name):
                problems.append(f"{member.name[:200]!r}: unsafe path in the archive")
                continue
            if member.isdir():
                continue
            if not member.isreg():
                problems.append(f"{name} is not a regular file")
                continue
            if name in members:
                problems.append(f"{name} appears twice in the archive")
            handle = tar.extractfile(member)
            assert handle is not None
            keep = name.split("/", 1)[-1] in _KEEP or name in _KEEP
            members[name] = _hash_keep(handle, keep, name, problems)
        _check_end(gz, tar)
    return members


def _scan_tarball(path: Path, problems: list[str]) -> dict[str, _Found]:
    try:
        members = _tar_members(path, problems)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise RunError(
            f"{path}: not a readable tar.gz archive (corrupt, truncated or with trailing data): {exc}"
        ) from None
    if CHECKSUMS_FILE in members:
        return members
    roots = [n[: -len(CHECKSUMS_FILE) - 1] for n in members if n.endswith("/" + CHECKSUMS_FILE)]
    if len(roots) != 1 or "/" in roots[0]:
        return members  # no package folder: verification reports the missing checksums
    prefix = roots[0] + "/"
    return {
        n[len(prefix) :] if n.startswith(prefix) else f"(outside {roots[0]}/) {n}": found
        for n, found in members.items()
    }


def _parse_checksums(data: bytes, problems: list[str]) -> dict[str, str]:
    listed: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{CHECKSUMS_FILE} is not UTF-8 text")
        return listed
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line)
        if match is None or not _safe_name(match.group(2)):
            problems.append(f"{CHECKSUMS_FILE} line {number} is not `<sha256>  <path>`")
            continue
        digest, name = match.groups()
        if name in listed:
            problems.append(f"{CHECKSUMS_FILE} lists {name} twice")
        listed[name] = digest
    return listed


def verify_package(path: Path, *, run_dir: Path | None = None) -> VerifyResult:
    """Re-hash every file of a package (directory or .tar.gz) against its checksums.

    A file listed in `CHECKSUMS.sha256` but absent is missing; present but not listed is
    extra; with another sha256 (or, for the manifest, another size) it is altered. The
    manifest (`lineage/manifest.json`) must agree with the checksums file, so editing a file
    and its line in `CHECKSUMS.sha256` is still caught. With `run_dir`, the weights a
    `model/REFERENCE.json` points to are checked too. Raises RunError when the input cannot
    be read as a package at all.
    """
    result = VerifyResult(path)
    if not path.exists():
        raise RunError(f"{path}: no such file or directory", exit_code=2)
    if path.is_dir():
        found = _scan_directory(path, result.problems)
    elif path.is_file():
        found = _scan_tarball(path, result.problems)
    else:
        raise RunError(f"{path} is neither a directory nor a file")
    checksums = found.get(CHECKSUMS_FILE)
    if checksums is None:
        raise RunError(f"{path}: no {CHECKSUMS_FILE}; this is not a handoff package")
    if checksums.data is None:
        raise RunError(
            f"{path}: {CHECKSUMS_FILE} is larger than {MAX_METADATA_BYTES:,} bytes; "
            "this is not a handoff package"
        )
    listed = _parse_checksums(checksums.data, result.problems)
    for name in sorted(listed):
        got = found.get(name)
        if got is None:
            result.missing.append(name)
        elif got.sha256 != listed[name]:
            result.altered.append(name)
            result.details.append(
                f"  {name}: sha256 {got.sha256[:12]}, {CHECKSUMS_FILE} says {listed[name][:12]}"
            )
    result.extra = sorted(n for n in found if n != CHECKSUMS_FILE and n not in listed)
    result.checked = sum(1 for n in listed if n in found)
    manifest = found.get(MANIFEST_FILE)
    if MANIFEST_FILE in listed and manifest is not None and manifest.data is not None:
        _check_manifest(manifest.data, listed, found, result)
    reference = found.get(REFERENCE_FILE)
    if run_dir is not None and reference is not None and reference.data is not None:
        _check_reference(reference.data, run_dir, result)
    return result


def _check_manifest(
    data: bytes, listed: dict[str, str], found: dict[str, _Found], result: VerifyResult
) -> None:
    try:
        manifest = parse_json(data)
        files = {str(f["path"]): f for f in manifest["files"]}
    except (JsonProblem, KeyError, TypeError) as exc:
        result.problems.append(f"{MANIFEST_FILE} is not a readable manifest: {exc}")
        return
    for name, entry in sorted(files.items()):
        if name not in listed:
            result.problems.append(f"{MANIFEST_FILE} lists {name}, {CHECKSUMS_FILE} does not")
            continue
        got = found.get(name)
        if entry.get("sha256") != listed[name] or (
            got is not None and got.size != entry.get("bytes")
        ):
            if name not in result.altered:
                result.altered.append(name)
            result.details.append(f"  {name}: does not match {MANIFEST_FILE}")
    unlisted = sorted(n for n in listed if n not in files and n != MANIFEST_FILE)
    for name in unlisted:
        result.problems.append(f"{CHECKSUMS_FILE} lists {name}, {MANIFEST_FILE} does not")
    result.altered.sort()


def _check_reference(data: bytes, run_dir: Path, result: VerifyResult) -> None:
    try:
        reference = parse_json(data)
        files = list(reference["files"])
    except (JsonProblem, KeyError, TypeError) as exc:
        result.problems.append(f"{REFERENCE_FILE} is not readable: {exc}")
        return
    for item in files:
        rel = str(item["path"])
        shown = f"{rel} (referenced weights in {run_dir})"
        target = run_dir / rel
        if not _safe_name(rel) or not target.is_file():
            result.missing.append(shown)
        elif sha256_file(target) != item["sha256"]:
            result.altered.append(shown)
