"""Reading JSONL data files: one place that turns bad lines into located problems.

Every data file a spec names (prompts, responses, demonstrations, gold
items, scored outputs) is JSONL. Bad input must name the file, the line and
the field, and a refusal lists every bad row at once (up to a limit), so
this module collects problems instead of stopping at the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError

MAX_LISTED = 20


def read_objects(path: Path, display: str, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad lines are added to `problems`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunError(f"{display}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RunError(f"{display}: not UTF-8 text: {exc.reason}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                f"{display}: line {number}: not valid JSON: {exc.msg} at column {exc.colno}"
            )
            continue
        if not isinstance(row, dict):
            problems.append(
                f"{display}: line {number}: expected a JSON object, got {type(row).__name__}"
            )
            continue
        rows.append((number, row))
    return rows


def missing_strings(row: dict[str, Any], names: Iterable[str]) -> list[tuple[str, str]]:
    """(field, problem) for each field that is not a non-empty string."""
    out = []
    for name in names:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            out.append(
                (
                    name,
                    "missing" if name not in row else f"must be a non-empty string, got {value!r}",
                )
            )
    return out


def refusal(what: str, problems: list[Any], hint: str = "") -> RunError:
    """One error listing the bad rows (the first MAX_LISTED of them)."""
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    return RunError(
        f"{what}: {len(problems)} bad row(s)\n{shown}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + (f"\n{hint}" if hint else "")
    )


def read_rows(
    path: Path, display: str, required: Iterable[str], *, what: str | None = None
) -> list[dict[str, Any]]:
    """Rows whose required fields are non-empty strings; any bad row refuses the file."""
    need = tuple(required)
    problems: list[str] = []
    rows = []
    for number, row in read_objects(path, display, problems):
        bad = missing_strings(row, need)
        problems.extend(f"{display}: line {number}: field '{f}': {m}" for f, m in bad)
        if not bad:
            rows.append(row)
    if problems:
        raise refusal(what or f"{display} refused", problems)
    return rows
