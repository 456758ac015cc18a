"""The run's lineage record: every stage's inputs and outputs with sha256.

`lineage.json` is what makes a run auditable and resumable: it says which
bytes each stage consumed and produced, with which libraries, seed and plan,
and whether a gate was overridden. A stage whose recorded input signature
matches is skipped on `--resume`; any change to its inputs, settings or
upstream outputs runs it again.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def describe(path: Path, name: str) -> dict[str, Any]:
    """One artifact: a file with its hash, or a folder with a hash over its files."""
    files = hash_path(path)
    if path.is_file():
        return {"path": name, **files[0]}
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
        self.doc: dict[str, Any] = (
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

    def stage(self, name: str) -> dict[str, Any]:
        stages: dict[str, Any] = self.doc.setdefault("stages", {})
        return dict(stages.get(name, {}))

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.doc.setdefault("stages", {})[name] = entry
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=2, ensure_ascii=False) + "\n")


def signature(parts: Iterable[Any]) -> str:
    return sha256_text(canonical_json(list(parts)))
