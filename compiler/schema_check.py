"""JSON Schema validation turned into located, actionable diagnostics.

jsonschema reports errors against the JSON path of the offending instance;
users need a file position and a fix. This module maps each error to the
line and column of the exact key or value at fault, names unknown and
missing keys themselves (not their parent), and offers "did you mean" for
misspelt keys and enum values.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from rlhfspec.compiler.diagnostics import Diagnostic, json_path, make
from rlhfspec.compiler.schemas import JsonPath

YAML11_BOOLEANS = {
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Yes",
    "No",
    "On",
    "Off",
    "YES",
    "NO",
    "ON",
    "OFF",
}
JSON_TYPES = {
    dict: "mapping",
    list: "list",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
RANGE_VALIDATORS = {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
}
FORMAT_VALIDATORS = {"pattern", "minLength", "maxLength", "format"}


class Locator:
    """Finds the best source position for a JSON path."""

    def __init__(self, positions: dict[JsonPath, Any], key_positions: dict[JsonPath, Any]) -> None:
        self.positions = positions
        self.key_positions = key_positions

    def value(self, path: JsonPath) -> tuple[int, int]:
        """Position of the value at `path`, or of its nearest existing ancestor."""
        while True:
            pos = self.positions.get(path)
            if pos is not None:
                return pos.line, pos.col
            if not path:
                return 1, 1
            path = path[:-1]

    def key(self, path: JsonPath) -> tuple[int, int]:
        """Position of the key of the entry at `path` (the value's for list items)."""
        pos = self.key_positions.get(path)
        if pos is not None:
            return pos.line, pos.col
        return self.value(path)


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _type_name(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expected_types(schema: dict[str, Any]) -> str:
    expected = schema.get("type")
    if isinstance(expected, list):
        return " or ".join(expected)
    return str(expected)


#: Integers beyond 64 bits are never a sensible setting and overflow numpy and torch.
INT_LIMIT = 2**63


def check(data: Any, schema: dict[str, Any], locator: Locator, *, file: str) -> list[Diagnostic]:
    """Validate `data` and return one diagnostic per problem, located (each once)."""
    validator = Draft202012Validator(schema)
    out: list[Diagnostic] = list(unbounded_numbers(data, locator, file=file))
    for error in validator.iter_errors(data):
        out.extend(_convert(error, locator, file))
    # jsonschema reports a `required` error per missing key, each naming them all
    return list(dict.fromkeys(out))


def unbounded_numbers(data: Any, locator: Locator, *, file: str) -> list[Diagnostic]:
    """NaN, infinities and integers past 64 bits, wherever they are.

    JSON Schema bounds never catch NaN (every comparison with it is false), so
    a NaN threshold would switch its check off; data that did not come through
    our YAML loader (a plan.json) is checked here as well.
    """
    out = []
    stack: list[tuple[JsonPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((path + (k,), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            line, col = locator.value(path)
            out.append(
                make("S005", f"{value} is not a finite number", file=file, line=line, col=col,
                     path=json_path(path), hint="every number must be finite")
            )  # fmt: skip
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
            line, col = locator.value(path)
            out.append(
                make("S005", f"integer with {len(str(abs(value)))} digits is out of range",
                     file=file, line=line, col=col, path=json_path(path),
                     hint="integers must fit in 64 bits")
            )  # fmt: skip
    return out


def _convert(error: ValidationError, locator: Locator, file: str) -> list[Diagnostic]:
    """One jsonschema error as diagnostics: key errors point at the key, the rest at the value."""
    path: JsonPath = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        return _unknown_keys(instance, path, schema, locator, file)
    if kind == "propertyNames":
        return _unknown_property_name(error, path, locator, file)
    if kind == "required" and isinstance(instance, dict):
        return _missing_keys(error, instance, path, schema, locator, file)
    line, col = locator.value(path)
    where = json_path(path)
    if kind == "type":
        return [_type_mismatch(instance, schema, file=file, line=line, col=col, where=where)]
    if kind in ("enum", "const"):
        return [_not_allowed(error, file=file, line=line, col=col, where=where)]
    if kind in RANGE_VALIDATORS:
        message = f"{_short(instance)} is out of range: {error.message}"
        hint = schema.get("description") or None
        return [make("S005", message, file=file, line=line, col=col, path=where, hint=hint)]
    if kind in FORMAT_VALIDATORS:
        if kind == "pattern":
            message = f"{_short(instance)} does not have the required form (pattern {error.validator_value})"
        else:
            message = error.message
        hint = schema.get("description") or None
        return [make("S006", message, file=file, line=line, col=col, path=where, hint=hint)]
    if kind == "uniqueItems":
        message = f"items must be unique: {error.message}"
        return [make("S007", message, file=file, line=line, col=col, path=where)]
    return [make("S008", error.message, file=file, line=line, col=col, path=where)]


def _unknown_keys(
    instance: dict[str, Any],
    path: JsonPath,
    schema: dict[str, Any],
    locator: Locator,
    file: str,
) -> list[Diagnostic]:
    """S001 for each key the schema does not allow, with the closest allowed key."""
    allowed = list(schema.get("properties", {}))
    return [
        _unknown_key(key, path, allowed, locator, file, hint_with_guess=False)
        for key in instance
        if key not in allowed
    ]


def _unknown_key(
    key: Any,
    path: JsonPath,
    allowed: list[str],
    locator: Locator,
    file: str,
    *,
    hint_with_guess: bool,
) -> Diagnostic:
    """One S001 at the key itself, with the closest allowed key; the allowed keys as the hint
    always (`hint_with_guess`) or only when nothing is close."""
    key_path = path + (key,)
    line, col = locator.key(key_path)
    guess = suggest(str(key), allowed)
    message = f"unknown key '{key}' in {json_path(path)}"
    message += f"; did you mean '{guess}'?" if guess else ""
    hint = "allowed keys: " + ", ".join(allowed) if hint_with_guess or not guess else None
    return make("S001", message, file=file, line=line, col=col, path=json_path(key_path), hint=hint)


def _unknown_property_name(
    error: ValidationError, path: JsonPath, locator: Locator, file: str
) -> list[Diagnostic]:
    """S001 for a key outside a propertyNames enum (maps keyed by dimension ids and such)."""
    allowed = [str(v) for v in error.validator_value.get("enum", [])]
    return [_unknown_key(str(error.instance), path, allowed, locator, file, hint_with_guess=True)]


def _missing_keys(
    error: ValidationError,
    instance: dict[str, Any],
    path: JsonPath,
    schema: dict[str, Any],
    locator: Locator,
    file: str,
) -> list[Diagnostic]:
    """S002 for each required key that is absent, with the key's description as the hint."""
    where = json_path(path)
    diags = []
    for key in error.validator_value:
        if key in instance:
            continue
        key_path = path + (key,)
        line, col = locator.key(path) if path else (1, 1)
        description = schema.get("properties", {}).get(key, {}).get("description", "")
        diags.append(
            make(
                "S002",
                f"missing required key '{key}' in {where}",
                file=file,
                line=line,
                col=col,
                path=json_path(key_path),
                hint=f"add '{key}': {description}" if description else None,
            )
        )
    return diags


def _type_mismatch(
    instance: Any, schema: dict[str, Any], *, file: str, line: int, col: int, where: str
) -> Diagnostic:
    """S003, with a hint for the two usual YAML slips: yes/no booleans and quoted numbers."""
    expected = _expected_types(schema)
    message = f"expected {expected}, got {_type_name(instance)} {_short(instance)}"
    hint = None
    if "boolean" in expected and isinstance(instance, str) and instance in YAML11_BOOLEANS:
        hint = "YAML 1.2 booleans are only true and false; 'yes', 'no', 'on' and 'off' are strings"
    elif ("number" in expected or "integer" in expected) and isinstance(instance, str):
        hint = "write the number without quotes"
    return make("S003", message, file=file, line=line, col=col, path=where, hint=hint)


def _not_allowed(
    error: ValidationError, *, file: str, line: int, col: int, where: str
) -> Diagnostic:
    """S004 for a value outside an enum or const, with the closest allowed value."""
    instance = error.instance
    kind = error.validator
    allowed_values = error.validator_value if kind == "enum" else [error.validator_value]
    allowed_text = ", ".join(repr(v) for v in allowed_values)
    guess = (
        suggest(str(instance), [str(v) for v in allowed_values])
        if isinstance(instance, str)
        else None
    )
    message = f"{_short(instance)} is not allowed here; expected one of {allowed_text}"
    if guess:
        message += f"; did you mean '{guess}'?"
    return make("S004", message, file=file, line=line, col=col, path=where)
