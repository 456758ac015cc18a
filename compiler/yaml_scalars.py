"""Plain and tagged scalars resolved with the YAML 1.2 core schema, and message helpers.

Why not PyYAML's resolver: it implements YAML 1.1, where ``no`` is ``False`` and ``1e-4`` is
a string; see compiler/yaml_loader.py's docstring.
"""

from __future__ import annotations

import re
from typing import Any, Final

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
