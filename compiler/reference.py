"""Generate the spec reference and the diagnostic-code table for the README.

The schema's descriptions and defaults are the single source; the README
carries the generated text between markers, and a test fails when it is
stale. Regenerate with `python -m rlhfspec.compiler.reference README.md`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.compiler.diagnostics import CODES
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema

BEGIN_SPEC = "<!-- BEGIN GENERATED SPEC REFERENCE -->"
END_SPEC = "<!-- END GENERATED SPEC REFERENCE -->"
BEGIN_CODES = "<!-- BEGIN GENERATED DIAGNOSTIC CODES -->"
END_CODES = "<!-- END GENERATED DIAGNOSTIC CODES -->"


def _type(schema: dict[str, Any]) -> str:
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "")
    if kind == "array":
        items = schema.get("items", {})
        inner = _type(items) if items else "any"
        return f"list of {inner}"
    if (
        kind == "object"
        and "additionalProperties" in schema
        and isinstance(schema["additionalProperties"], dict)
    ):
        return "mapping of " + _type(schema["additionalProperties"])
    return str(kind) if kind else "any"


def _bounds(schema: dict[str, Any]) -> str:
    parts = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            parts.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def spec_reference() -> str:
    """One table row per key, in schema order, with type, default and description."""
    schema = load_schema(SPEC_SCHEMA)
    rows: list[str] = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def visit(node: dict[str, Any], prefix: str, required: list[str]) -> None:
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            default = (
                f"`{json.dumps(sub['default'], ensure_ascii=False)}`"
                if "default" in sub
                else ("**required**" if key in required else "—")
            )
            kind = _type(sub)
            bounds = _bounds(sub)
            rows.append(
                f"| `{path}` | {_cell(kind)}{' (' + _cell(bounds) + ')' if bounds else ''} | "
                f"{_cell(default)} | {_cell(sub.get('description', ''))} |"
            )
            if sub.get("type") == "object" and "properties" in sub:
                visit(sub, path + ".", sub.get("required", []))
            items = sub.get("items")
            if sub.get("type") == "array" and isinstance(items, dict) and "properties" in items:
                visit(items, path + "[].", items.get("required", []))

    visit(schema, "", schema.get("required", []))
    return "\n".join(rows)


def codes_table() -> str:
    rows = ["| code | severity | name | meaning |", "| --- | --- | --- | --- |"]
    for code, info in CODES.items():
        rows.append(f"| `{code}` | {info.severity} | {info.title} | {_cell(info.explanation)} |")
    return "\n".join(rows)


def _replace(text: str, begin: str, end: str, body: str) -> str:
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def render_readme(text: str) -> str:
    text = _replace(text, BEGIN_SPEC, END_SPEC, spec_reference())
    return _replace(text, BEGIN_CODES, END_CODES, codes_table())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    text = path.read_text(encoding="utf-8")
    new = render_readme(text)
    if new != text:
        atomic_write_text(path, new)
        print(f"updated {path}")
    else:
        print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
