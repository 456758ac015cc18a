"""`rlhfspec lock`: append the current criteria version to the lock file's history."""

from __future__ import annotations

from pathlib import Path

from rlhfspec.common.errors import CompilerError
from rlhfspec.compiler.diagnostics import format_text
from rlhfspec.compiler.lockfile import (
    LockEntry,
    criteria_hash,
    describe_changes,
    lock_path_for,
    read_lock,
    today,
    version_key,
    write_lock,
)
from rlhfspec.compiler.validate import validate_file


def lock_spec(spec_path: Path, *, display: str) -> str:
    """Lock the spec's criteria; refuse a changed criteria block that kept its version."""
    result = validate_file(spec_path, display=display)
    if result.resolved is None:
        raise CompilerError(
            "the spec is not valid, so its criteria cannot be locked:\n"
            + format_text(result.diagnostics)
        )
    criteria = result.resolved["criteria"]
    version = criteria["version"]
    digest = criteria_hash(criteria)
    lock_path = lock_path_for(spec_path)
    entries = read_lock(lock_path) if lock_path.exists() else []
    for entry in entries:
        if entry.version == version:
            if entry.sha256 == digest:
                return f"{lock_path.name}: criteria {version} already locked ({digest[:12]})"
            changes = "; ".join(describe_changes(entry.content, criteria)) or "content changed"
            raise CompilerError(
                f"criteria {version} is already locked with different content ({changes}); "
                "bump criteria.version before locking"
            )
    if entries and version_key(version) < max(version_key(e.version) for e in entries):
        raise CompilerError(
            f"criteria version {version} is older than the lock file's newest; versions only move forward"
        )
    entries.append(LockEntry(version, digest, today(), criteria))
    write_lock(lock_path, spec_path.name, entries)
    return f"{lock_path.name}: locked criteria {version} ({digest[:12]}); commit it beside the spec"
