"""Gold and calibration items name the criteria version their answer was written for.

A gold answer is only right under the criteria it was written for: when the criteria change
(a dimension reworded, a tie redefined), some answers change with them, and an annotator who
follows the new criteria would be marked wrong by an old answer. So every gold item (and
every calibration item, which is gold shown before live work) carries `criteria_version`,
and `validate` compares it with the lock file:

* a version that is neither locked nor the current one, or newer than the current one, is an
  error (C010) located at the item's line: nobody can reconstruct the criteria that answer
  follows, exactly as for a batch tagged with an unknown version (C005);
* an older locked version is a warning (C011), one per file, naming the lines: many
  criteria changes (guidance, a new worked example) leave a given answer right, so blocking
  every compile after a version bump would push teams to re-tag without re-reading; the
  warning says which items to re-review, and `validate --strict` makes it blocking;
* no version at all is a warning (C012): files written before the field existed still work.

Rows that are not gold items (not a JSON object with an `item_id`) are left to the readers
at run time, which refuse them with their row numbers; the check here reads only the
version field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.compiler.diagnostics import Diagnostic, make
from rlhfspec.compiler.lockfile import lock_path_for, read_lock, version_key

MAX_LINES = 10
FILES = ("gold", "calibration")
"""The `annotation` blocks whose `path` holds gold-format items."""


def _versions(path: Path) -> list[tuple[int, Any]]:
    """(line number, the row's criteria_version or None) for every gold-item row."""
    out: list[tuple[int, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out  # the files check (F codes) and the readers report unreadable files
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "item_id" in row:
            out.append((number, row.get("criteria_version")))
    return out


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:MAX_LINES])
    return shown + (f" and {len(numbers) - MAX_LINES} more" if len(numbers) > MAX_LINES else "")


def check_file(
    display: str, path: Path, current: str, locked: set[str], where: str
) -> list[Diagnostic]:
    """The version diagnostics of one gold-format file (`where` is its spec key)."""
    out: list[Diagnostic] = []
    older: dict[str, list[int]] = {}
    missing: list[int] = []
    for number, version in _versions(path):
        if version is None:
            missing.append(number)
        elif (
            not isinstance(version, str)
            or version not in locked | {current}
            or (version_key(version) > version_key(current))
        ):
            known = ", ".join(sorted(locked | {current}, key=version_key))
            out.append(
                make("C010", f"item names criteria version {version!r}, which is not one this "
                     f"spec can check against (locked or current: {known})",
                     file=display, line=number, col=1, path=where,
                     hint="tag the item with the version its answer was written for")
            )  # fmt: skip
        elif version != current:
            older.setdefault(version, []).append(number)
    for version, numbers in sorted(older.items(), key=lambda kv: version_key(kv[0])):
        out.append(
            make("C011", f"{len(numbers)} item(s) were written for criteria {version}, older "
                 f"than the current {current} (lines {_lines(numbers)})",
                 file=display, line=numbers[0], col=1, path=where,
                 hint=f"re-review their answers against {current} and re-tag them")
        )  # fmt: skip
    if missing:
        out.append(
            make("C012", f"{len(missing)} item(s) carry no criteria_version (lines "
                 f"{_lines(missing)})", file=display, line=missing[0], col=1, path=where,
                 hint=f"add \"criteria_version\": \"{current}\" once each answer is checked")
        )  # fmt: skip
    return out


def gold_version_diagnostics(
    spec: dict[str, Any], spec_path: Path | None, spec_display: str
) -> list[Diagnostic]:
    """C010-C012 for the spec's gold and calibration files (nothing without a spec path)."""
    if spec_path is None:
        return []
    current = str(spec["criteria"]["version"])
    lock = lock_path_for(spec_path)
    try:
        locked = {e.version for e in read_lock(lock)} if lock.exists() else set()
    except CompilerError:
        return []  # C009 reports the broken lock file
    out: list[Diagnostic] = []
    for key in FILES:
        block = spec["annotation"].get(key)
        if not block:
            continue
        path = (spec_path.parent / block["path"]).resolve()
        display = (Path(spec_display).parent / block["path"]).as_posix()
        if path.is_relative_to(spec_path.parent.resolve()) and path.is_file():
            out += check_file(display, path, current, locked, f"annotation.{key}.path")
    return out
