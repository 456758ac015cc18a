"""Property tests: mutated or random specs never crash and always get located diagnostics."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema, walk, with_defaults
from rlhfspec.compiler.validate import validate_text
from rlhfspec.compiler.yaml_loader import load_yaml_file
from tests.conftest import CORPUS

BASE_PATH = CORPUS / "valid.yaml"
# our loader, not yaml.safe_load: YAML 1.1 would turn the key `on` into True
BASE = load_yaml_file(BASE_PATH).data
SCHEMA = load_schema(SPEC_SCHEMA)
NODES = list(walk(SCHEMA, BASE))

WRONG_VALUES: dict[str, list[Any]] = {
    "string": [7, [], {"a": 1}, True],
    "number": ["x", [1], {"a": 1}],
    "integer": [1.5, "x", [1]],
    "boolean": ["yes", "on", 1, None],
    "object": [[1], "x", 3],
    "array": ["x", 3, {"a": 1}],
}
PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def get_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def check_invalid(data: Any) -> None:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    result = validate_text(text, file="mutant.yaml", spec_path=BASE_PATH)
    assert not result.ok, text
    lines = text.count("\n") + 1
    for d in result.diagnostics:
        assert 1 <= d.line <= lines and d.col >= 1


typed_nodes = [
    (p, s)
    for p, s, _ in NODES
    if p and isinstance(s.get("type"), str) and s["type"] in WRONG_VALUES
]
closed_objects = [
    (p, s) for p, s, v in NODES if isinstance(v, dict) and s.get("additionalProperties") is False
]
with_required = [(p, s) for p, s, v in NODES if isinstance(v, dict) and s.get("required")]


@PROFILE
@given(st.sampled_from(typed_nodes), st.data())
def test_wrong_type_is_reported(node: tuple[Any, Any], data: st.DataObject) -> None:
    path, sub = node
    mutant = copy.deepcopy(BASE)
    set_at(mutant, path, data.draw(st.sampled_from(WRONG_VALUES[sub["type"]])))
    check_invalid(mutant)


@PROFILE
@given(
    st.sampled_from(closed_objects),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
def test_unknown_key_is_reported(node: tuple[Any, Any], key: str) -> None:
    path, sub = node
    if key in sub.get("properties", {}):
        key += "_x"
    mutant = copy.deepcopy(BASE)
    get_at(mutant, path)[key] = 1
    check_invalid(mutant)


@PROFILE
@given(st.sampled_from(with_required), st.data())
def test_missing_required_key_is_reported(node: tuple[Any, Any], data: st.DataObject) -> None:
    path, sub = node
    mutant = copy.deepcopy(BASE)
    target = get_at(mutant, path)
    present = [k for k in sub["required"] if k in target]
    del target[data.draw(st.sampled_from(present))]
    check_invalid(mutant)


@PROFILE
@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    result = validate_text(text, file="random.yaml", spec_path=BASE_PATH)
    assert not result.ok
    assert result.diagnostics and all(d.line >= 1 for d in result.diagnostics)


@PROFILE
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_random_yaml_structures_never_crash(value: Any) -> None:
    result = validate_text(yaml.safe_dump(value), file="random.yaml", spec_path=BASE_PATH)
    assert not result.ok and result.diagnostics


def test_defaults_are_idempotent() -> None:
    once = with_defaults(SCHEMA, BASE)
    assert with_defaults(SCHEMA, once) == once
    # resolved specs are themselves valid specs that resolve to themselves
    text = yaml.safe_dump(once, sort_keys=False)
    result = validate_text(text, file="resolved.yaml", spec_path=BASE_PATH)
    assert result.ok, [d.message for d in result.diagnostics]
    assert result.resolved == once
