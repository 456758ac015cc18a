"""The run's lineage record: every stage's inputs and outputs with sha256.

`lineage.json` is what makes a run auditable and resumable: it says which
bytes each stage consumed and produced, with which libraries, seed and plan,
and whether a gate was overridden. A stage whose recorded input signature
matches is skipped on `--resume`; any change to its inputs, settings or
upstream outputs runs it again.
"""

import importlib.metadata
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import canonical_json, sha256_file, sha256_text

LINEAGE_FILE = "lineage.json"
LINEAGE_FORMAT = "rlhfspec.lineage/1"
"""Older records say `lineage_version: 1` instead; both read the same."""
LIBRARIES = (
    "rlhfspec",
    "numpy",
    "jsonschema",
    "jinja2",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
)


# no `from __future__ import annotations` here: TypedDict reads NotRequired from the
# evaluated annotations (Python 3.11), which postponed annotations would hide
class Artifact(TypedDict):
    """A stage output as recorded: a file (sha256, bytes) or a folder (a hash over its files)."""

    path: str
    sha256: str
    bytes: int
    files: NotRequired[int]  # folders only: how many files the hash covers


# A file a stage read: a spec input (`from: spec`) or an upstream output (`from`: the stage
# that wrote it). `from` is a keyword, hence the functional form.
InputRecord = TypedDict("InputRecord", {"path": str, "sha256": str, "from": str})


class GateRecord(TypedDict):
    """A gate's verdict as the stage returned it (runtime/stage_api.py, Gate)."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str
    overridden: bool


class StageRecord(TypedDict):
    """One stage's entry in lineage.json; a running or failed stage has only some fields."""

    status: str  # running, done, failed, interrupted
    started: NotRequired[str]
    finished: NotRequired[str]
    seconds: NotRequired[float]
    signature: NotRequired[str]
    inputs: NotRequired[list[InputRecord]]
    outputs: NotRequired[list[Artifact]]
    metrics: NotRequired[dict[str, Any]]
    gates: NotRequired[list[GateRecord]]
    message: NotRequired[str]


class PlanRef(TypedDict):
    """Which plan a run directory ran: its fingerprint and the spec and criteria it pins."""

    fingerprint: str
    name: str
    spec_sha256: str
    criteria_version: str
    criteria_sha256: str


class LineageRecord(TypedDict, total=False):
    """lineage.json: absent keys in a record that `start` has not yet filled in."""

    format: str
    run_id: str
    started: str
    plan: PlanRef
    seed: int
    libraries: dict[str, str | None]
    stages: dict[str, StageRecord]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hash_path(path: Path) -> list[dict[str, Any]]:
    """sha256 of a file, or of every file under a folder (sorted, relative names)."""
    if path.is_file():
        return [{"sha256": sha256_file(path), "bytes": path.stat().st_size}]
    entries = []
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        entries.append(
            {
                "file": child.relative_to(path).as_posix(),
                "sha256": sha256_file(child),
                "bytes": child.stat().st_size,
            }
        )
    return entries


def describe(path: Path, name: str) -> Artifact:
    """One artifact: a file with its hash, or a folder with a hash over its files."""
    files = hash_path(path)
    if path.is_file():
        return {"path": name, "sha256": files[0]["sha256"], "bytes": files[0]["bytes"]}
    return {
        "path": name,
        "sha256": sha256_text(canonical_json(files)),
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
    }


class Lineage:
    """Read-modify-write of lineage.json; every write is atomic."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LINEAGE_FILE
        self.doc: LineageRecord = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )

    def start(self, *, run_id: str, plan: dict[str, Any], started: str) -> None:
        self.doc.setdefault("format", LINEAGE_FORMAT)
        self.doc.setdefault("run_id", run_id)
        self.doc.setdefault("started", started)
        self.doc["plan"] = {
            "fingerprint": plan["fingerprint"],
            "name": plan["spec"]["name"],
            "spec_sha256": plan["spec"]["sha256"],
            "criteria_version": plan["criteria"]["version"],
            "criteria_sha256": plan["criteria"]["sha256"],
        }
        self.doc["seed"] = plan["resolved"]["seed"]
        self.doc["libraries"] = library_versions()
        self.doc.setdefault("stages", {})
        self.save()

    def stage(self, name: str) -> StageRecord | None:
        """A copy of the stage's record; None when the stage never ran here."""
        record = self.doc.get("stages", {}).get(name)
        return None if record is None else record.copy()

    def status(self, name: str) -> str | None:
        record = self.stage(name)
        return None if record is None else record["status"]

    def record(self, name: str, entry: StageRecord) -> None:
        self.doc.setdefault("stages", {})[name] = entry
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=2, ensure_ascii=False) + "\n")


def signature(parts: Iterable[Any]) -> str:
    return sha256_text(canonical_json(list(parts)))
