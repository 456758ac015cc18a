"""Safe, position-tracking YAML loader for rlhfspec spec files.

A spec file is untrusted input that a person wrote by hand, so this loader has three jobs:
turn YAML into plain Python data, remember where every value came from (so that the
validator can point at ``line:col``), and refuse hostile or accidental inputs cleanly with
one exception type, :class:`YamlLoadError`, carrying user-facing :class:`YamlProblem` s.

Why the event stream and not ``yaml.load``/``yaml.compose``
    PyYAML's composer and constructor are recursive: a 50,000-deep ``[[[[...`` or
    ``{a: {a: ...`` raises ``RecursionError`` (or worse, overflows the C stack) long before
    any limit of ours could apply, and ``yaml.load`` expands aliases eagerly, so a
    "billion laughs" document is fully materialised before anyone can count it. Reading
    ``yaml.parse`` events and building values with an explicit stack lets us check the
    nesting depth at every collection start and the alias expansion size at every alias,
    and stop at the first event that goes over a limit. The parser itself is lazy, so a
    refused file costs only the events read so far.

Why the YAML 1.2 core schema and not PyYAML's resolver
    PyYAML resolves plain scalars with YAML 1.1 rules: ``yes``/``no``/``on``/``off`` become
    booleans (the "Norway problem": ``country: NO`` is ``False``), ``1_000`` is an int,
    ``0755`` is octal, ``2026-11-01`` becomes a ``datetime.date`` and ``1e-4`` is a
    *string* (1.1 floats need a dot). YAML 1.2 (the current spec, and a superset of JSON)
    fixes all of these, and users copying config from modern tools expect it. We resolve
    plain scalars ourselves with the 1.2 core schema (see :func:`_resolve_plain`).

Other decisions
    * Mapping keys must be strings (``Y003``), duplicate keys are errors (``Y002``) rather
      than silently keeping the last value, and only the standard tags ``!!str !!int
      !!float !!bool !!null !!map !!seq`` (and the non-specific ``!``) are accepted
      (``Y005``); no Python objects can ever be constructed.
    * Merge keys (``<<: *base``) are *not* supported: YAML 1.2 dropped them, so ``<<`` is an
      ordinary string key and the validator will reject it as unknown.
    * Aliases are expanded into independent copies, so the result is a plain tree (no
      shared sub-objects) that callers may mutate freely. Positions inside an expanded
      alias point at the anchored original; the alias itself points at its use site.
    * Exactly one document per file (``Y006``); an empty file loads as ``None``.

Problem codes
    ``Y001`` syntax error (including invalid UTF-8, control characters, undefined aliases);
    ``Y002`` duplicate key; ``Y003`` non-string key; ``Y004`` a size/depth/alias limit;
    ``Y005`` unsupported tag or a value its tag rejects; ``Y006`` more than one document;
    ``Y008`` a number that is not finite (``.nan``, ``.inf``, ``1e400``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "LoadedYaml",
    "Path",
    "Pos",
    "YamlLoadError",
    "YamlProblem",
    "load_yaml",
    "load_yaml_file",
]

Path = tuple[str | int, ...]
"""A JSON path: mapping keys (str) and sequence indices (int) from the root."""

# libyaml is much faster than the pure-Python parser; both give the same events and marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SYNTAX: Final = "Y001"
DUPLICATE_KEY: Final = "Y002"
NON_STRING_KEY: Final = "Y003"
LIMIT: Final = "Y004"
BAD_TAG: Final = "Y005"
MULTIPLE_DOCUMENTS: Final = "Y006"
NON_FINITE: Final = "Y008"


@dataclass(frozen=True)
class Pos:
    """A 1-based source position, as editors display it."""

    line: int
    col: int


@dataclass(frozen=True)
class YamlProblem:
    """One user-facing problem. ``line``/``col`` are 1-based."""

    code: str
    line: int
    col: int
    message: str
    hint: str | None = None

    def format(self, filename: str = "<string>") -> str:
        """Render as ``file:line:col: CODE message`` plus an indented hint line."""
        text = f"{filename}:{self.line}:{self.col}: {self.code} {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class YamlLoadError(Exception):
    """Raised by :func:`load_yaml` with every problem found, sorted by position.

    ``args`` are ``(problems, filename)`` so that the exception pickles and re-raises
    intact across processes.
    """

    problems: list[YamlProblem]
    filename: str

    def __init__(self, problems: Sequence[YamlProblem], filename: str = "<string>") -> None:
        ordered = sorted(problems, key=lambda p: (p.line, p.col))
        super().__init__(ordered, filename)
        self.problems = ordered
        self.filename = filename

    def __str__(self) -> str:
        return "\n".join(p.format(self.filename) for p in self.problems)


@dataclass(frozen=True)
class Limits:
    """Resource limits; every one is enforced before the work it guards is done.

    ``max_nodes`` counts nodes after alias expansion (keys, values and collections all
    count one each), which is what bounds the size of the returned data.
    """

    max_bytes: int = 5_000_000
    max_depth: int = 64
    max_nodes: int = 1_000_000
    max_aliases: int = 1_000


DEFAULT_LIMITS: Final = Limits()


@dataclass
class LoadedYaml:
    """The loaded document and where each part of it came from.

    ``positions[path]`` is the start of the *value* node at ``path`` (``()`` is the root);
    ``key_positions[path]`` is the start of the *key* of the mapping entry at ``path``.
    """

    data: Any
    positions: dict[Path, Pos] = field(default_factory=dict)
    key_positions: dict[Path, Pos] = field(default_factory=dict)

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> Pos:
        """Best position for ``path``: its key (if ``key``) or value, else the nearest ancestor.

        Validators report paths that may not exist in the document (a missing required
        key, say); pointing at the closest enclosing node is the useful answer then.
        """
        p: Path = tuple(path)
        if key and p in self.key_positions:
            return self.key_positions[p]
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), Pos(1, 1))


# --------------------------------------------------------------------------------------
# Scalar resolution (YAML 1.2 core schema)

_STR_TAG: Final = "tag:yaml.org,2002:str"
_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_NULL_TAG: Final = "tag:yaml.org,2002:null"
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"

_NULLS: Final = frozenset({"null", "Null", "NULL", "~", ""})
_BOOLS: Final = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
# `[0-9]` rather than `\d`: `\d` matches non-ASCII digits, which YAML does not.
_DEC_INT = re.compile(r"[-+]?[0-9]+")
_OCT_INT = re.compile(r"0o[0-7]+")
_HEX_INT = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_NUMBER_START: Final = frozenset("0123456789+-.")
_NO_MATCH: Final = object()


class _TooLong(Exception):
    """An integer literal Python refuses to convert (``sys.get_int_max_str_digits``)."""


def _parse_int(value: str) -> Any:
    if _DEC_INT.fullmatch(value):
        try:
            return int(value)
        except ValueError as exc:  # more digits than sys.get_int_max_str_digits()
            raise _TooLong from exc
    if _OCT_INT.fullmatch(value):
        return int(value[2:], 8)
    if _HEX_INT.fullmatch(value):
        return int(value[2:], 16)
    return _NO_MATCH


def _parse_float(value: str) -> Any:
    if _FLOAT.fullmatch(value):
        return float(value)
    if _INF.fullmatch(value):
        return float("-inf") if value[0] == "-" else float("inf")
    if _NAN.fullmatch(value):
        return float("nan")
    return _NO_MATCH


def _resolve_plain(value: str) -> Any:
    """Resolve an untagged plain scalar with the YAML 1.2 core schema.

    Why not PyYAML's resolver: it implements YAML 1.1, where ``no`` is ``False`` and
    ``1e-4`` is a string; see the module docstring.
    """
    if value in _NULLS:
        return None
    b = _BOOLS.get(value)
    if b is not None:
        return b
    if value[0] in _NUMBER_START:
        n = _parse_int(value)
        if n is _NO_MATCH:
            n = _parse_float(value)
        if n is not _NO_MATCH:
            return n
    return value


def _resolve_tagged(tag: str, value: str) -> Any:
    """Resolve a scalar carrying an explicit standard tag; ``_NO_MATCH`` if it doesn't fit."""
    if tag == _STR_TAG:
        return value
    if tag == _INT_TAG:
        return _parse_int(value)
    if tag == _FLOAT_TAG:
        f = _parse_float(value)
        if f is _NO_MATCH:
            n = _parse_int(value)
            f = _NO_MATCH if n is _NO_MATCH else float(n)
        return f
    if tag == _BOOL_TAG:
        return _BOOLS.get(value, _NO_MATCH)
    if tag == _NULL_TAG:
        return None if value in _NULLS else _NO_MATCH
    raise AssertionError(tag)  # pragma: no cover


_SCALAR_TAGS: Final = frozenset({_STR_TAG, _INT_TAG, _FLOAT_TAG, _BOOL_TAG, _NULL_TAG})


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a sequence"
    return "a string"


def _quote(text: str, limit: int = 60) -> str:
    """Single-quote ``text`` as YAML would, truncated for messages."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "'" + text.replace("'", "''") + "'"


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


class _Stop(Exception):
    """Internal: a problem that ends loading at once (syntax or limit)."""

    def __init__(self, problem: YamlProblem) -> None:
        super().__init__(problem)
        self.problem = problem


def _limit(pos: Pos, message: str, hint: str | None = None) -> _Stop:
    return _Stop(YamlProblem(LIMIT, pos.line, pos.col, message, hint))


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


# --------------------------------------------------------------------------------------
# Event-driven construction


class _Frame:
    """An open mapping or sequence on the construction stack."""

    __slots__ = (
        "value",
        "is_map",
        "path",
        "anchor",
        "start_nodes",
        "height",
        "expect_key",
        "key",
        "key_ok",
        "first_seen",
        "pos",
    )

    def __init__(
        self,
        value: dict[str, Any] | list[Any],
        path: Path | None,
        anchor: str | None,
        nodes: int,
        pos: Pos,
    ) -> None:
        self.pos = pos
        self.value = value
        self.is_map = isinstance(value, dict)
        self.path = path  # None: inside a rejected key/entry; no positions are recorded
        self.anchor = anchor
        self.start_nodes = nodes
        self.height = 1  # collections nested in this one, counting itself
        self.expect_key = True
        self.key: str = ""
        self.key_ok = False
        self.first_seen: dict[str, int] = {}  # key -> line of first definition


class _Anchor:
    __slots__ = ("value", "path", "nodes", "height", "done")

    def __init__(self, value: Any, path: Path | None, nodes: int, height: int, done: bool) -> None:
        self.value = value
        self.path = path
        self.nodes = nodes
        self.height = height
        self.done = done


def _pos(event: yaml.Event) -> Pos:
    mark = event.start_mark
    return Pos(mark.line + 1, mark.column + 1) if mark is not None else Pos(1, 1)


class _Builder:
    """Turns a PyYAML event stream into data + positions, enforcing limits as it goes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.problems: list[YamlProblem] = []
        self.positions: dict[Path, Pos] = {}
        self.key_positions: dict[Path, Pos] = {}
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor] = {}
        self.alias_sources: dict[Path, Path] = {}  # alias use site -> anchored node's path
        self.nodes = 0
        self.aliases = 0
        self.documents = 0
        self.root: Any = None

    # -- helpers -----------------------------------------------------------------------

    def problem(self, code: str, pos: Pos, message: str, hint: str | None = None) -> None:
        self.problems.append(YamlProblem(code, pos.line, pos.col, message, hint))

    def count_nodes(self, n: int, pos: Pos) -> None:
        self.nodes += n
        if self.nodes > self.limits.max_nodes:
            raise _limit(
                pos,
                f"document has more than {self.limits.max_nodes:,} nodes after alias expansion "
                "(max_nodes)",
                "aliases (*name) inside anchored nodes multiply the data"
                if self.aliases
                else "spec files are small; check that this is the right file",
            )

    def child_path(self) -> Path | None:
        """Path of the node about to start; None for keys and inside rejected entries."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.path is None:
            return None
        if top.is_map:
            if top.expect_key or not top.key_ok:
                return None
            return (*top.path, top.key)
        return (*top.path, len(top.value))

    def set_key(self, top: _Frame, key: Any, pos: Pos, raw: str | None) -> None:
        """Accept ``key`` for the entry ``top`` is building, or record why it is rejected."""
        top.key_ok = False
        if not isinstance(key, str):
            if isinstance(key, dict | list):
                message = f"{_type_name(key)} cannot be used as a key; keys must be strings"
            elif raw is None:
                message = f"a key here is {_type_name(key)}, but keys must be strings"
            elif raw == "":
                message = "a key here is empty (null), but keys must be strings"
            else:
                message = (
                    f"key {raw} is {_type_name(key)}, but keys must be strings; "
                    f"quote it: {_quote(raw)}: ..."
                )
            self.problem(
                NON_STRING_KEY, pos, message, "write every key as a plain word or quote it"
            )
            return
        first = top.first_seen.get(key)
        if first is not None:
            self.problem(
                DUPLICATE_KEY,
                pos,
                f"duplicate key {_quote(key)} (first defined at line {first})",
                "remove one of them; YAML loaders that accept this silently keep only the last",
            )
            return
        top.first_seen[key] = pos.line
        top.key = key
        top.key_ok = True
        if top.path is not None:
            self.key_positions[(*top.path, key)] = pos

    def finish(self, value: Any, height: int, pos: Pos, raw: str | None) -> None:
        """Hand a completed node to its parent (or make it the root)."""
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if height + 1 > top.height:
            top.height = height + 1
        if not top.is_map:
            top.value.append(value)  # type: ignore[union-attr]
        elif top.expect_key:
            top.expect_key = False
            self.set_key(top, value, pos, raw)
        else:
            top.expect_key = True
            if top.key_ok:
                top.value[top.key] = value  # type: ignore[call-overload]

    # -- events ------------------------------------------------------------------------

    def scalar(self, ev: yaml.ScalarEvent) -> None:
        pos = _pos(ev)
        self.count_nodes(1, pos)
        path = self.child_path()
        tag, value = ev.tag, ev.value
        if tag is None:
            try:
                resolved: Any = _resolve_plain(value) if ev.implicit[0] else value
            except _TooLong:
                raise _limit(
                    pos,
                    f"integer has {len(value):,} digits, more than Python converts "
                    f"({sys.get_int_max_str_digits():,})",
                    "quote it if it is meant as a string",
                ) from None
        elif tag == "!":  # the non-specific tag: "just a string"
            resolved = value
        elif tag in _SCALAR_TAGS:
            try:
                resolved = _resolve_tagged(tag, value)
            except _TooLong:
                resolved = _NO_MATCH
            if resolved is _NO_MATCH:
                self.problem(
                    BAD_TAG,
                    pos,
                    f"{_quote(value)} is not a valid {_short_tag(tag)}",
                    "fix the value or remove the tag",
                )
                resolved = value
        else:
            self.bad_tag(tag, "a scalar", pos)
            resolved = value
        if isinstance(resolved, float) and not math.isfinite(resolved):
            # NaN compares false with every bound, so it would switch a gate off unseen
            self.problem(
                NON_FINITE,
                pos,
                f"{_quote(value)} is not a finite number",
                "every number in a spec must be finite; write the value you mean "
                "(quote it if it is meant as a string)",
            )
            resolved = value
        if path is not None:
            self.positions[path] = pos
        if ev.anchor is not None:
            self.anchors[ev.anchor] = _Anchor(resolved, path, 1, 0, True)
        raw = value if tag is None and ev.implicit[0] else None
        self.finish(resolved, 0, pos, raw)

    def bad_tag(self, tag: str, where: str, pos: Pos) -> None:
        short = _short_tag(tag)
        if tag in _SCALAR_TAGS or tag in (_MAP_TAG, _SEQ_TAG):
            message = f"tag {short} cannot be applied to {where}"
        else:
            message = f"unsupported tag {short}; only plain YAML values are allowed in a spec"
        self.problem(BAD_TAG, pos, message, "remove the tag")

    def start(self, ev: yaml.CollectionStartEvent, is_map: bool) -> None:
        pos = _pos(ev)
        if len(self.stack) >= self.limits.max_depth:
            raise _limit(
                pos,
                f"nesting is deeper than {self.limits.max_depth} levels (max_depth)",
                "check for unbalanced '[' or '{', or flatten the structure",
            )
        self.count_nodes(1, pos)
        tag = ev.tag
        if tag is not None and tag != "!" and tag != (_MAP_TAG if is_map else _SEQ_TAG):
            self.bad_tag(tag, "a mapping" if is_map else "a sequence", pos)
        path = self.child_path()
        if path is not None:
            self.positions[path] = pos
        value: dict[str, Any] | list[Any] = {} if is_map else []
        frame = _Frame(value, path, ev.anchor, self.nodes - 1, pos)
        if ev.anchor is not None:
            # Registered now (not at the end) so that an alias inside it is seen as recursive.
            self.anchors[ev.anchor] = _Anchor(value, path, 0, 0, False)
        self.stack.append(frame)

    def end(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            anchor = self.anchors.get(frame.anchor)
            if anchor is not None and anchor.value is frame.value:
                anchor.nodes = self.nodes - frame.start_nodes
                anchor.height = frame.height
                anchor.done = True
        self.finish(frame.value, frame.height, frame.pos, None)

    def alias(self, ev: yaml.AliasEvent) -> None:
        pos = _pos(ev)
        name = ev.anchor or ""
        anchor = self.anchors.get(name)
        if anchor is None:
            raise _Stop(
                YamlProblem(
                    SYNTAX,
                    pos.line,
                    pos.col,
                    f"invalid YAML: alias *{name} refers to no anchor (&{name}) defined before it",
                    "define the anchor before using it, or check the spelling",
                )
            )
        if not anchor.done:
            raise _limit(
                pos,
                f"alias *{name} is used inside the node it refers to; recursive structures "
                "are not allowed",
            )
        self.aliases += 1
        if self.aliases > self.limits.max_aliases:
            raise _limit(
                pos,
                f"document uses more than {self.limits.max_aliases:,} aliases (max_aliases)",
            )
        # Count and check before expanding anything: this is what makes "billion laughs" cheap.
        self.count_nodes(anchor.nodes, pos)
        if len(self.stack) + anchor.height > self.limits.max_depth:
            raise _limit(
                pos,
                f"alias *{name} makes nesting deeper than {self.limits.max_depth} levels "
                "(max_depth)",
            )
        path = self.child_path()
        if path is not None:
            self.positions[path] = pos
            if anchor.height and anchor.path is not None:
                self.alias_sources[path] = anchor.path
        self.finish(anchor.value, anchor.height, pos, None)

    def document_start(self, ev: yaml.DocumentStartEvent) -> None:
        self.documents += 1
        if self.documents > 1:
            pos = _pos(ev)
            raise _Stop(
                YamlProblem(
                    MULTIPLE_DOCUMENTS,
                    pos.line,
                    pos.col,
                    "file contains more than one YAML document; a spec is exactly one document",
                    "remove the '---' (or '...') separating documents, or split the file",
                )
            )

    def run(self, events: Iterator[yaml.Event]) -> None:
        for ev in events:
            cls = type(ev)
            if cls is yaml.ScalarEvent:
                self.scalar(ev)  # type: ignore[arg-type]
            elif cls is yaml.MappingStartEvent:
                self.start(ev, True)  # type: ignore[arg-type]
            elif cls is yaml.SequenceStartEvent:
                self.start(ev, False)  # type: ignore[arg-type]
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                self.end()
            elif cls is yaml.AliasEvent:
                self.alias(ev)  # type: ignore[arg-type]
            elif cls is yaml.DocumentStartEvent:
                self.document_start(ev)  # type: ignore[arg-type]

    def expand_aliases(self) -> None:
        """Replace shared (aliased) containers by copies and fill in their positions.

        Runs only after the whole document has been accepted, so its cost is bounded by
        ``max_nodes``. Walks in document order: an anchored node always precedes (and never
        contains) its aliases, so the positions being copied are already known.
        """
        if not self.alias_sources:
            return
        positions, key_positions, sources = self.positions, self.key_positions, self.alias_sources
        seen: set[int] = {id(self.root)}
        todo: list[tuple[Any, Path, Path | None]] = [(self.root, (), None)]
        while todo:
            node, path, src = todo.pop()
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            children: list[tuple[Any, Path, Path | None]] = []
            for k, child in items:
                cpath = (*path, k)
                csrc = sources.get(cpath)
                if csrc is None and src is not None:
                    csrc = (*src, k)
                    pos = positions.get(csrc)
                    if pos is not None:
                        positions[cpath] = pos
                    kpos = key_positions.get(csrc)
                    if kpos is not None:
                        key_positions[cpath] = kpos
                if isinstance(child, dict | list):
                    if id(child) in seen:
                        child = dict(child) if isinstance(child, dict) else list(child)
                        node[k] = child
                    else:
                        seen.add(id(child))
                    children.append((child, cpath, csrc))
            todo.extend(reversed(children))


def load_yaml(
    text: str | bytes, *, filename: str = "<string>", limits: Limits = DEFAULT_LIMITS
) -> LoadedYaml:
    """Load one YAML document into plain data plus source positions.

    ``bytes`` must be UTF-8 (a BOM is allowed). Returns ``LoadedYaml(data=None)`` for an
    empty document. Raises :class:`YamlLoadError` carrying every duplicate-key,
    non-string-key and tag problem in the document, or the first syntax or limit problem
    (after which nothing further can be trusted), always sorted by position.
    """
    builder = _Builder(limits)
    try:
        source = _decode(text, limits)
        events: Iterator[yaml.Event] = yaml.parse(source, Loader=_Loader)
        try:
            builder.run(events)
        except yaml.YAMLError as exc:
            problem = _syntax_problem(exc, source)
            if "maximum nesting depth" in problem.message:
                # newer libyaml refuses depth > 1000 while scanning ahead, before our
                # event-level depth check sees level max_depth + 1: the same limit hit
                problem = YamlProblem(
                    LIMIT,
                    problem.line,
                    problem.col,
                    f"nesting is deeper than {limits.max_depth} levels (max_depth)",
                    "flatten the structure; specs need only a few levels",
                )
            raise _Stop(problem) from None
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
    except _Stop as stop:
        raise YamlLoadError([*builder.problems, stop.problem], filename) from None
    if builder.problems:
        raise YamlLoadError(builder.problems, filename)
    builder.expand_aliases()
    positions = builder.positions
    positions.setdefault((), Pos(1, 1))
    return LoadedYaml(builder.root, positions, builder.key_positions)


def load_yaml_file(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> LoadedYaml:
    """Read and load a spec file; see :func:`load_yaml`.

    The size limit is checked against the file's size before it is read (and the read is
    capped, for files that grow or lie about their size). ``OSError`` (missing file,
    permissions) propagates unchanged: it is not a problem *in* the YAML.
    """
    name = os.fspath(path)
    with open(name, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_bytes:
            raise YamlLoadError(
                [
                    YamlProblem(
                        LIMIT,
                        1,
                        1,
                        f"file is {size:,} bytes, larger than the limit of "
                        f"{limits.max_bytes:,} bytes (max_bytes)",
                        "spec files are small; check that this is the right file",
                    )
                ],
                name,
            )
        data = fh.read(limits.max_bytes + 1)
    return load_yaml(data, filename=name, limits=limits)
