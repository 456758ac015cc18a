"""Reading JSONL data files: one place that turns bad lines into located problems.

Every data file a spec names (prompts, responses, demonstrations, gold
items, scored outputs) is JSONL. Bad input must name the file, the line and
the field, and a refusal lists every bad row at once (up to a limit), so
this module collects problems instead of stopping at the first.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError

MAX_LISTED = 20
#: JSON nested deeper than this is refused before Python's recursion limit is reached.
MAX_JSON_DEPTH = 100


class JsonProblem(ValueError):
    """Text that is not strict JSON; the message says why (and where, when known)."""


def _no_constant(name: str) -> Any:
    raise JsonProblem(f"{name} is not a number JSON allows; every number must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonProblem(f"{text[:20]} is too large to be a finite number")
    return value


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _nesting(text: str) -> int:
    """Bracket depth outside strings, computed without recursion (json's decoder recurses)."""
    brackets = _BRACKET.findall(_STRING.sub("", text))
    steps = (1 if b in "[{" else -1 for b in brackets)
    return max(itertools.accumulate(steps), default=0)


def parse_json(text: str | bytes) -> Any:
    """Strict JSON: finite numbers only, bounded nesting and digits; `JsonProblem` otherwise.

    Python's json accepts NaN and Infinity (a NaN threshold or duration
    silently switches checks off), recurses on nesting (a 200,000-deep array
    is a RecursionError) and raises ValueError past 4,300 digits.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonProblem(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _nesting(text) > MAX_JSON_DEPTH:
        raise JsonProblem(f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise JsonProblem(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except JsonProblem:
        raise
    except (ValueError, RecursionError) as exc:  # more digits than Python converts
        raise JsonProblem(f"not valid JSON: {str(exc).split(':')[0]}") from None


def read_objects(path: Path, display: str, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad lines are added to `problems`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunError(f"{display}: cannot read: {exc.strerror or exc}") from None
    rows = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = parse_json(raw)
        except JsonProblem as exc:
            problems.append(f"{display}: line {number}: {exc}")
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
