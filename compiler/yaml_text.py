"""The YAML input before and after parsing: size, encoding and character checks, and syntax
errors turned into located problems with a hint."""

from __future__ import annotations

import re
from typing import Final

import yaml

from rlhfspec.compiler.yaml_types import (
    SYNTAX,
    Limits,
    Pos,
    YamlProblem,
    _limit,
    _Stop,
)

# --------------------------------------------------------------------------------------
# Input checks before parsing

# The YAML (1.1 and 1.2) printable set, as enforced by both libyaml and PyYAML's reader.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
# The line breaks PyYAML and libyaml count when they compute marks.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _pos_at(text: str, index: int) -> Pos:
    """1-based position of character ``index`` in ``text``, counting lines as YAML does."""
    line, line_start = 1, 0
    for m in _LINE_BREAK.finditer(text, 0, index):
        line, line_start = line + 1, m.end()
    return Pos(line, index - line_start + 1)


def _decode(data: str | bytes, limits: Limits) -> str:
    """Check the size and encoding of the input and return it as text."""
    if isinstance(data, str):
        size = (
            len(data)
            if len(data) * 4 <= limits.max_bytes
            else len(data.encode("utf-8", "surrogatepass"))
        )
    else:
        size = len(data)
    if size > limits.max_bytes:
        raise _limit(
            Pos(1, 1),
            f"file is {size:,} bytes, larger than the limit of {limits.max_bytes:,} bytes "
            "(max_bytes)",
            "spec files are small; check that this is the right file",
        )
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            head = data[: exc.start].decode("utf-8-sig")
            pos = _pos_at(head, len(head))
            raise _Stop(
                YamlProblem(
                    SYNTAX,
                    pos.line,
                    pos.col,
                    f"file is not valid UTF-8: byte 0x{data[exc.start]:02x} cannot be decoded",
                    "save the file with UTF-8 encoding",
                )
            ) from None
    else:
        text = data[1:] if data.startswith("\ufeff") else data
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        pos = _pos_at(text, bad.start())
        char = ord(bad.group())
        what = "a lone surrogate" if 0xD800 <= char <= 0xDFFF else "a control character"
        raise _Stop(
            YamlProblem(
                SYNTAX,
                pos.line,
                pos.col,
                f"file contains {what} (U+{char:04X}), which YAML does not allow",
                'remove it; inside a double-quoted string write it as an escape, e.g. "\\x07"',
            )
        )
    return text


# --------------------------------------------------------------------------------------
# Syntax errors

_SYNTAX_HINTS: Final = (
    (
        "mapping values are not allowed",
        "check the indentation, or quote a value that contains ': '",
    ),
    (
        "could not find expected ':'",
        "check for a missing ':' after a key, or an unclosed quote or bracket",
    ),
    ("did not find expected key", "check the indentation of this line against the ones above"),
    (
        "did not find expected '-' indicator",
        "check the indentation of this list item against the ones above",
    ),
    ("did not find expected ','", "check for a missing ',' or an unclosed bracket"),
    ("found undefined tag handle", "tags are not supported; remove it"),
    ("while scanning a quoted scalar", "check for an unclosed quote"),
    ("found unexpected end of stream", "check for an unclosed quote or bracket"),
)
_CHAR_HINTS: Final = {
    "\t": "YAML does not allow tabs for indentation; use spaces",
    "@": "'@' is reserved in YAML; quote a value that starts with it",
    "`": "'`' is reserved in YAML; quote a value that starts with it",
    "%": "quote a value that starts with '%'",
}


def _syntax_problem(exc: yaml.YAMLError, text: str) -> YamlProblem:
    """Convert a PyYAML/libyaml error (0-based marks) into a 1-based ``Y001`` problem.

    Both parsers count ``Mark.index`` in characters, so it indexes ``text`` directly; the
    offending character picks the hint (libyaml's messages don't name it).
    """
    hint: str | None = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            cm = exc.context_mark
            where = ""
            if cm is not None and (cm.line, cm.column) != (line - 1, col - 1):
                where = f" at line {cm.line + 1}, column {cm.column + 1}"
            message = f"{exc.problem} ({exc.context}{where})"
        if mark is not None and 0 <= mark.index < len(text):
            hint = _CHAR_HINTS.get(text[mark.index])
    else:
        line, col, message = 1, 1, str(exc)
    if hint is None:
        hint = next((h for needle, h in _SYNTAX_HINTS if needle in message), None)
    return YamlProblem(SYNTAX, line, col, f"invalid YAML: {message}", hint)
