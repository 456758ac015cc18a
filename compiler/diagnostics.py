"""Located diagnostics and their stable codes.

Codes are part of the public interface: CI configurations and suppressions
refer to them, so a code is never reused for another meaning. They are
registered with every other family's in common/codes.py, the single source
of docs/diagnostics.md (a test keeps the two in sync).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

from rlhfspec.common.codes import Code, family
from rlhfspec.common.findings import Finding

# The compiler's codes: every group but the prompt check's and QC's (common/codes.py holds them).
CODES: dict[str, Code] = family("Y", "S", "C", "P", "V", "A", "R", "O", "E", "M", "X", "F")

Diagnostic = Finding
"""A located finding: file, line, col, and the spec path in `subject` (also `path`)."""

JSON_KEYS = ("code", "severity", "message", "file", "line", "col", "path", "hint")
"""The keys of one diagnostic in `validate --format json`, in order."""


def make(
    code: str,
    message: str,
    *,
    file: str,
    line: int,
    col: int,
    path: str = "",
    hint: str | None = None,
) -> Diagnostic:
    """Build a diagnostic; its severity is the code's registered one."""
    if code not in CODES:
        raise ValueError(f"{code} is not a compiler code")
    return Finding(code, message, hint, subject=path, file=file, line=line, col=col)


def json_path(parts: Iterable[str | int]) -> str:
    """Render a JSON path the way users write it: `a.b[2].c`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def strictify(diags: Sequence[Diagnostic]) -> list[Diagnostic]:
    """`--strict`: every warning becomes an error, keeping its code."""
    return [replace(d, escalated=True) for d in diags]


def count(diags: Sequence[Diagnostic]) -> tuple[int, int]:
    errors = sum(1 for d in diags if d.severity == "error")
    return errors, len(diags) - errors


def format_text(diags: Sequence[Diagnostic]) -> str:
    lines = []
    for d in diags:
        lines.append(f"{d.file}:{d.line}:{d.col}: {d.severity}[{d.code}]: {d.message}")
        if d.path:
            lines.append(f"    at {d.path}")
        if d.hint:
            lines.append(f"    hint: {d.hint}")
    errors, warnings = count(diags)
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(lines)


def _gh_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def format_github(diags: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands, so problems show inline on the PR diff."""
    lines = []
    for d in diags:
        msg = (
            d.message
            + (f" (at {d.path})" if d.path else "")
            + (f" Hint: {d.hint}" if d.hint else "")
        )
        lines.append(
            f"::{d.severity} file={_gh_escape(d.file, prop=True)},line={d.line},col={d.col},"
            f"title={d.code}::{_gh_escape(msg)}"
        )
    errors, warnings = count(diags)
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(lines)


def format_json(diags: Sequence[Diagnostic], *, file: str) -> str:
    errors, warnings = count(diags)
    doc = {
        "file": file,
        "valid": errors == 0,
        "errors": errors,
        "warnings": warnings,
        "diagnostics": [d.to_dict(JSON_KEYS) for d in diags],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)
