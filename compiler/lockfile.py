"""The criteria lock file: the version history of what "better" means.

Criteria drift is the failure mode where the preference framework changes
informally and annotation batches become incomparable. The lock file,
committed beside the spec, records each criteria version with a hash of its
canonical content (and the content itself, so a change can be explained
dimension by dimension). `validate` compares the spec against it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import canonical_json, sha256_text

LOCK_VERSION = 1
LOCK_FORMAT = "rlhfspec.criteria_lock/1"
"""Lock files written before the format field say only `lock_version: 1`; both read."""
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def criteria_hash(criteria: dict[str, Any]) -> str:
    return sha256_text(canonical_json(criteria))


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """Order semantic versions; a pre-release sorts before its release."""
    match = _SEMVER.match(version)
    if not match:
        return (0, 0, 0, 0, version)
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def lock_path_for(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.stem + ".lock.json")


@dataclass(frozen=True)
class LockEntry:
    version: str
    sha256: str
    locked_on: str
    content: dict[str, Any]


def read_lock(path: Path) -> list[LockEntry]:
    """Read a lock file; a malformed one raises CompilerError naming the problem."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompilerError(f"{path}: cannot read the lock file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("lock_version") != LOCK_VERSION:
        raise CompilerError(
            f"{path}: not an rlhfspec lock file (expected lock_version {LOCK_VERSION})"
        )
    entries = []
    for i, item in enumerate(doc.get("criteria", [])):
        try:
            entry = LockEntry(
                str(item["version"]),
                str(item["sha256"]),
                str(item.get("locked_on", "")),
                dict(item["content"]),
            )
        except (KeyError, TypeError, ValueError):
            raise CompilerError(
                f"{path}: criteria entry {i} lacks version, sha256 or content"
            ) from None
        if criteria_hash(entry.content) != entry.sha256:
            raise CompilerError(
                f"{path}: criteria entry {entry.version} has content that does not match its sha256; "
                "the lock file was edited by hand"
            )
        entries.append(entry)
    return entries


def today() -> str:
    """The lock date; SOURCE_DATE_EPOCH makes it reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.strftime("%Y-%m-%d")


def write_lock(path: Path, spec_name: str, entries: list[LockEntry]) -> None:
    doc = {
        "format": LOCK_FORMAT,
        "lock_version": LOCK_VERSION,
        "spec": spec_name,
        "note": "Criteria version history written by `rlhfspec lock`. Commit it beside the spec; do not edit.",
        "criteria": [
            {
                "version": e.version,
                "sha256": e.sha256,
                "locked_on": e.locked_on,
                "content": e.content,
            }
            for e in entries
        ],
    }
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Say, in words, which dimensions, disqualifiers or rules changed."""
    changes: list[str] = []
    for kind in ("dimensions", "disqualifiers"):
        old_items = {d["id"]: d for d in old.get(kind, [])}
        new_items = {d["id"]: d for d in new.get(kind, [])}
        singular = kind[:-1]
        for ident in new_items.keys() - old_items.keys():
            changes.append(f"{singular} '{ident}' was added")
        for ident in old_items.keys() - new_items.keys():
            changes.append(f"{singular} '{ident}' was removed")
        for ident in sorted(new_items.keys() & old_items.keys()):
            fields = sorted(
                k
                for k in set(old_items[ident]) | set(new_items[ident])
                if old_items[ident].get(k) != new_items[ident].get(k)
            )
            if fields:
                changes.append(f"{singular} '{ident}' changed ({', '.join(fields)})")
        common_old = [i for i in old_items if i in new_items]
        common_new = [i for i in new_items if i in old_items]
        if kind == "dimensions" and common_old != common_new:
            changes.append(
                "dimension ranking changed: "
                + " > ".join(common_old)
                + " became "
                + " > ".join(common_new)
            )
    for key in ("tie_breaking", "scope", "examples", "summary"):
        if old.get(key) != new.get(key):
            changes.append(f"{key.replace('_', '-')} changed")
    return sorted(set(changes), key=changes.index)
