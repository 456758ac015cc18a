"""Access to the shipped JSON Schemas and a walker over schema and data together.

The schema is the one source of truth for editors, validation, defaults and
the generated reference, so the compiler reads defaults and path fields
(`x-path`) from it instead of restating them in code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

SPEC_SCHEMA = "rlhf-spec.v1.schema.json"
PLAN_SCHEMA = "rlhf-plan.v1.schema.json"
ANNOTATION_SCHEMA = "annotation-record.v1.schema.json"

JsonPath = tuple[str | int, ...]


def schema_text(name: str) -> str:
    return resources.files("rlhfspec.schemas").joinpath(name).read_text(encoding="utf-8")


@cache
def load_schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text(name))
    return loaded


def _subschemas(
    schema: dict[str, Any], value: Any
) -> Iterator[tuple[str | int, Any, dict[str, Any]]]:
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if isinstance(sub, dict):
                yield key, child, sub
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            yield index, child, schema["items"]


def walk(schema: dict[str, Any], data: Any) -> Iterator[tuple[JsonPath, dict[str, Any], Any]]:
    """Yield (path, subschema, value) for every node of `data` the schema describes."""
    stack: list[tuple[JsonPath, dict[str, Any], Any]] = [((), schema, data)]
    while stack:
        path, sub, value = stack.pop()
        yield path, sub, value
        children = list(_subschemas(sub, value))
        for key, child, child_schema in reversed(children):
            stack.append((path + (key,), child_schema, child))


def with_defaults(schema: dict[str, Any], data: Any) -> Any:
    """Return a copy of `data` with every schema default written out.

    Defaults apply top-down: an absent object with a default of `{}` is
    created and then filled, so the plan shows every value that will run.
    """
    result = copy.deepcopy(data)
    _fill(schema, result)
    return result


def _fill(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        # keep the schema's key order so resolved output reads like the reference
        order = list(schema.get("properties", {}))
        ordered = sorted(
            value.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
        )
        value.clear()
        value.update(ordered)
    for _key, child, child_schema in _subschemas(schema, value):
        _fill(child_schema, child)


def schema_node(dotted: str, name: str = SPEC_SCHEMA) -> dict[str, Any]:
    """The subschema of a spec field: "policy.ppo.gamma"; "[]" steps into array items
    ("annotation.batches[].format")."""
    node = load_schema(name)
    for part in dotted.split("."):
        key, items = (part[:-2], True) if part.endswith("[]") else (part, False)
        node = node["properties"][key]
        if items:
            node = node["items"]
    return node


def default_of(dotted: str) -> Any:
    """The schema's default for a spec field, with an object default's own defaults filled in.

    The one way code outside the compiler gets a default (a dataclass field for callers that
    build settings by hand): the schema stays the single source of every default.
    """
    node = schema_node(dotted)
    if "default" not in node:
        raise KeyError(f"the spec schema has no default for {dotted}")
    return with_defaults(node, node["default"])
