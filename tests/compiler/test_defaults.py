"""Defaults live once, in the spec schema: the compiler writes every one into the plan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.schemas import SPEC_SCHEMA, default_of, load_schema, with_defaults
from rlhfspec.compiler.yaml_loader import load_yaml
from tests.conftest import SPECS

# minimal.yaml has no gold file; `annotation.gold` has no default, so neither do its fields
ABSENT_IN_MINIMAL = {"annotation.gold.share", "annotation.gold.min_accuracy"}


def schema_defaults(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, subschema) of every property with a default; "[]" marks array items."""
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if "default" in sub:
            yield here, sub
        yield from schema_defaults(sub, here)
        if isinstance(sub.get("items"), dict):
            yield from schema_defaults(sub["items"], here + "[]")


def parents(resolved: Any, raw: Any, parts: list[str]) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every object the path's last key lives in, in the resolved spec and as the YAML wrote
    it (None where the YAML left the object out)."""
    if not parts:
        yield resolved, raw
        return
    part, rest = parts[0], parts[1:]
    key, items = (part[:-2], True) if part.endswith("[]") else (part, False)
    if not isinstance(resolved, dict) or key not in resolved:
        return
    child, raw_child = resolved[key], raw.get(key) if isinstance(raw, dict) else None
    if not items:
        yield from parents(child, raw_child, rest)
        return
    for index, element in enumerate(child):
        raw_element = raw_child[index] if isinstance(raw_child, list) else None
        yield from parents(element, raw_element, rest)


def check_defaults(spec: Path) -> set[str]:
    """Assert every schema default is in the spec's compiled plan; return those whose
    enclosing object the spec leaves out (no place to write them)."""
    result = compile_spec(spec, spec.parent / "build")
    assert result.plan is not None
    resolved = result.plan["resolved"]
    raw = load_yaml(spec.read_bytes(), filename=spec.name).data
    absent = set()
    for dotted, sub in schema_defaults(load_schema(SPEC_SCHEMA)):
        *outer, key = dotted.split(".")
        found = list(parents(resolved, raw, outer))
        if not found:
            absent.add(dotted)
        for obj, raw_obj in found:
            assert key in obj, f"{dotted}: the default is missing from the plan of {spec.name}"
            if not isinstance(raw_obj, dict) or key not in raw_obj:
                # not written in the spec: the plan holds the schema's default
                assert obj[key] == with_defaults(sub, sub["default"]), dotted
    return absent


def test_every_schema_default_is_written_into_the_plan_of_the_minimal_spec() -> None:
    absent = check_defaults(SPECS / "minimal.yaml")
    # nor a calibration set (`annotation.calibration` has no default either)
    calibration = {a for a in absent if a.startswith("annotation.calibration.")}
    assert "annotation.calibration.pass_mark" in calibration
    assert absent - calibration == ABSENT_IN_MINIMAL


def test_the_example_spec_has_a_place_for_every_default() -> None:
    absent = check_defaults(SPECS / "support-assistant.yaml")
    # the example lists no calibration answers yet, so a batch's defaults have no place
    assert absent and all(a.startswith("annotation.calibration.batches[].") for a in absent)


def test_stage_settings_come_with_their_defaults() -> None:
    result = compile_spec(SPECS / "minimal.yaml", SPECS / "build")
    assert result.plan is not None
    stages = {s["name"]: s for s in result.plan["stages"]}
    ppo = stages["policy"]["settings"]["policy"]["ppo"]
    assert ppo == default_of("policy.ppo")  # minimal.yaml writes no PPO settings
    assert stages["handoff"]["settings"]["handoff"] == default_of("handoff")
    assert stages["annotation_qc"]["settings"]["annotation"]["agreement"] == default_of(
        "annotation.agreement"
    )
