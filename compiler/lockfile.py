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


GUIDANCE = "guidance"


def hashed_content(criteria: dict[str, Any]) -> dict[str, Any]:
    """The criteria as hashed: empty guidance sections dropped (and `guidance` when all are).

    The guidance slots came after criteria were first locked; an empty section hashes as if
    absent, so a spec that writes no guidance keeps the hash its lock file recorded.
    """
    guidance = {k: v for k, v in dict(criteria.get(GUIDANCE) or {}).items() if str(v).strip()}
    out = {k: v for k, v in criteria.items() if k != GUIDANCE}
    if guidance:
        out[GUIDANCE] = guidance
    return out


def criteria_hash(criteria: dict[str, Any]) -> str:
    return sha256_text(canonical_json(hashed_content(criteria)))


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
    """Say, in words, which dimensions, disqualifiers or rules changed.

    The lock's messages (and validate's C-codes) phrase the same diff the documents' "changes
    since" section renders (`criteria_changes`), with ids rather than names: one diff, two
    audiences.
    """
    return [_phrase(change) for change in criteria_changes(old, new)]


def _phrase(change: dict[str, Any]) -> str:
    kind, state = change["kind"], change["change"]
    if kind in ("dimension", "disqualifier"):
        if state == "changed":
            return f"{kind} '{change['id']}' changed ({', '.join(change['fields'])})"
        return f"{kind} '{change['id']}' was {state}"
    if kind == "ranking":
        was, now = change["order"]
        return f"dimension ranking changed: {' > '.join(was)} became {' > '.join(now)}"
    if kind == "guidance":
        return f"guidance '{change['id']}' was {state}"
    return f"{kind.replace('_', '-')} changed"


def _label(item: dict[str, Any]) -> str:
    return str(item.get("name") or item["id"].replace("_", " ").replace("-", " ").capitalize())


def _item_changes(kind: str, old: list[Any], new: list[Any]) -> list[dict[str, Any]]:
    olds = {d["id"]: d for d in old}
    news = {d["id"]: d for d in new}
    out: list[dict[str, Any]] = []
    for ident, item in news.items():
        before = olds.get(ident)
        fields = sorted(
            k for k in set(item) | set(before or {}) if (before or {}).get(k) != item.get(k)
        )
        if before is None or fields:
            change = "added" if before is None else "changed"
            out.append(_change(kind, ident, _label(item), change, [] if before is None else fields))
    out += [_change(kind, i, _label(d), "removed") for i, d in olds.items() if i not in news]
    if kind == "dimension":
        kept_old = [_label(olds[i]) for i in olds if i in news]
        kept_new = [_label(news[i]) for i in news if i in olds]
        if kept_old != kept_new:
            detail = "was " + ", ".join(kept_old) + "; now " + ", ".join(kept_new)
            ranking = _change("ranking", None, None, "changed", detail=detail)
            ranking["order"] = ([i for i in olds if i in news], [i for i in news if i in olds])
            out.append(ranking)
    return out


def _change(
    kind: str,
    ident: str | None,
    name: str | None,
    change: str,
    fields: list[str] | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": ident,
        "name": name,
        "change": change,
        "fields": fields or [],
        "detail": detail,
    }


def criteria_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """What changed from `old` to `new` criteria, as data the documents phrase.

    One entry per dimension, disqualifier or guidance section added, removed or changed (with
    the fields that changed), the ranking, and the tie-breaking, scope, examples and summary
    blocks. Entries keep the spec's order, so the same two versions give the same list.
    """
    out = _item_changes("dimension", old.get("dimensions", []), new.get("dimensions", []))
    out += _item_changes("disqualifier", old.get("disqualifiers", []), new.get("disqualifiers", []))
    for key in ("tie_breaking", "scope"):
        before, after = dict(old.get(key) or {}), dict(new.get(key) or {})
        fields = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if fields:
            out.append(_change(key, None, None, "changed", fields))
    before_ex, after_ex = old.get("examples", []), new.get("examples", [])
    added = sum(1 for e in after_ex if e not in before_ex)
    removed = sum(1 for e in before_ex if e not in after_ex)
    if added or removed:
        parts = [f"{added} added"] * bool(added) + [f"{removed} removed"] * bool(removed)
        out.append(_change("examples", None, None, ", ".join(parts)))
    elif before_ex != after_ex:
        out.append(_change("examples", None, None, "reordered"))
    if old.get("summary", "") != new.get("summary", ""):
        out.append(_change("summary", None, None, "changed"))
    old_g = hashed_content(old).get(GUIDANCE, {})
    new_g = hashed_content(new).get(GUIDANCE, {})
    for section in [*new_g, *(s for s in old_g if s not in new_g)]:
        if old_g.get(section) != new_g.get(section):
            change = (
                "added"
                if section not in old_g
                else "removed"
                if section not in new_g
                else "changed"
            )
            out.append(_change("guidance", section, None, change))
    return out


def previous_version(entries: list[LockEntry], version: str) -> LockEntry | None:
    """The newest locked version older than `version`: what "changes since" compares with."""
    older = [e for e in entries if version_key(e.version) < version_key(version)]
    return max(older, key=lambda e: version_key(e.version)) if older else None


def changes_since(spec_path: Path, criteria: dict[str, Any]) -> dict[str, Any]:
    """The documents' "changes since version X": the previous locked version and the diff.

    `first` says the lock records this version and nothing older (the section says so rather
    than listing nothing); with no lock file or no older version `since` is None.
    """
    lock = lock_path_for(spec_path)
    entries = read_lock(lock) if lock.exists() else []
    previous = previous_version(entries, str(criteria["version"]))
    if previous is None:
        return {"since": None, "first": bool(entries), "items": []}
    return {
        "since": previous.version,
        "first": False,
        "items": criteria_changes(previous.content, criteria),
    }
