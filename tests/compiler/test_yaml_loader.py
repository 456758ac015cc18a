"""Tests for rlhfspec.compiler.yaml_loader: schema, positions, problems and limits."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfspec.compiler import yaml_loader
from rlhfspec.compiler.yaml_loader import (
    DEFAULT_LIMITS,
    Limits,
    LoadedYaml,
    Pos,
    YamlLoadError,
    YamlProblem,
    load_yaml,
    load_yaml_file,
)

LOADERS: list[Any] = [yaml.SafeLoader]
if hasattr(yaml, "CSafeLoader"):
    LOADERS.insert(0, yaml.CSafeLoader)


@pytest.fixture(params=LOADERS, ids=lambda loader: loader.__name__)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run a test with libyaml and with the pure-Python fallback parser."""
    monkeypatch.setattr(yaml_loader, "_Loader", request.param)
    return request.param


def problems(text: str | bytes, **kwargs: Any) -> list[YamlProblem]:
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text, **kwargs)
    found: list[YamlProblem] = info.value.problems
    assert found, "YamlLoadError must carry at least one problem"
    return found


def codes(text: str | bytes, **kwargs: Any) -> list[str]:
    return [p.code for p in problems(text, **kwargs)]


# --------------------------------------------------------------------------------------
# YAML 1.2 core schema


@pytest.mark.parametrize(
    ("plain", "expected"),
    [
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("NO", "NO"),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("tRUE", "tRUE"),
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("~", None),
        ("", None),
        ("nULL", "nULL"),
        ("1e-4", 1e-4),
        ("1.0e-4", 1e-4),
        ("1E+3", 1000.0),
        ("3e10", 3e10),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("5.", 5.0),
        ("+1.5", 1.5),
        ("42", 42),
        ("-42", -42),
        ("+7", 7),
        ("0755", 755),
        ("0o17", 15),
        ("0x1F", 31),
        ("0xff", 255),
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("0o8", "0o8"),
        ("1:30", "1:30"),
        ("2026-11-01", "2026-11-01"),
        ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z"),
        ("inf", "inf"),
        ("nan", "nan"),
        (".", "."),
        ("-x", "-x"),
        ("1e", "1e"),
        ("e5", "e5"),
        ("١٢", "١٢"),
        ("<<", "<<"),
        ("=", "="),
    ],
)
def test_core_schema_plain_scalars(plain: str, expected: Any) -> None:
    value = load_yaml(f"k: {plain}\n").data["k"]
    assert value == expected
    assert type(value) is type(expected)


def test_special_floats_are_refused() -> None:
    """NaN and the infinities parse in YAML 1.2 but a spec refuses them: a NaN threshold
    compares false with everything and would switch its check off (issue 15)."""
    text = "a: .inf\nb: -.Inf\nc: +.INF\nd: .nan\ne: .NaN\nf: .NAN\ng: 1e400\nh: !!float .nan\n"
    with pytest.raises(YamlLoadError) as info:
        load_yaml(text)
    problems = info.value.problems
    assert [(p.code, p.line, p.col) for p in problems] == [("Y008", n, 4) for n in range(1, 9)]
    assert "'.nan' is not a finite number" in problems[3].message
    assert load_yaml("a: 1e300\nb: '.nan'\n").data == {"a": 1e300, "b": ".nan"}


def test_quoted_and_block_scalars_are_strings() -> None:
    text = "a: 'true'\nb: \"1e-4\"\nc: '~'\nd: ''\ne: |\n  12\nf: >-\n  null\n"
    assert load_yaml(text).data == {
        "a": "true",
        "b": "1e-4",
        "c": "~",
        "d": "",
        "e": "12\n",
        "f": "null",
    }


def test_standard_tags_are_honoured() -> None:
    text = (
        "a: !!str 123\nb: !!int '42'\nc: !!float 3\nd: !!bool 'false'\ne: !!null ''\n"
        "f: !!map {x: 1}\ng: !!seq [1]\nh: ! 12\ni: !!float '1e3'\n"
    )
    assert load_yaml(text).data == {
        "a": "123",
        "b": 42,
        "c": 3.0,
        "d": False,
        "e": None,
        "f": {"x": 1},
        "g": [1],
        "h": "12",
        "i": 1000.0,
    }


def test_merge_key_is_an_ordinary_key() -> None:
    data = load_yaml("base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n").data
    assert data["child"] == {"<<": {"x": 1}, "y": 2}


def test_empty_document_is_none() -> None:
    for text in ["", "\n\n", "# just a comment\n", "---\n", "--- \n...\n", b"", b"\xef\xbb\xbf"]:
        loaded = load_yaml(text)
        assert loaded.data is None
        assert () in loaded.positions
    assert load_yaml("").positions == {(): Pos(1, 1)}


def test_bom_and_bytes() -> None:
    assert load_yaml(b"\xef\xbb\xbfa: 1\n").data == {"a": 1}
    assert load_yaml("\ufeffa: 1\n").data == {"a": 1}
    assert load_yaml("name: café ☕\n".encode()).data == {"name": "café ☕"}


# --------------------------------------------------------------------------------------
# Positions

BLOCK_DOC = """\
# comment
model:
  name: tiny
  layers: [1, {deep: x, 'q': "y"}]
  opts:
    - a
    - b: 2
      c:
        - null
    -
      - nested
  empty:
data: {train: {path: t.jsonl, n: 3}, eval: [e1, e2]}
"""


def test_positions_block_and_flow(parser: Any) -> None:
    loaded = load_yaml(BLOCK_DOC)
    pos, keys = loaded.positions, loaded.key_positions
    assert pos[()] == Pos(2, 1)
    assert keys[("model",)] == Pos(2, 1)
    assert pos[("model",)] == Pos(3, 3)
    assert keys[("model", "name")] == Pos(3, 3)
    assert pos[("model", "name")] == Pos(3, 9)
    assert pos[("model", "layers")] == Pos(4, 11)
    assert pos[("model", "layers", 0)] == Pos(4, 12)
    assert pos[("model", "layers", 1)] == Pos(4, 15)
    assert keys[("model", "layers", 1, "deep")] == Pos(4, 16)
    assert pos[("model", "layers", 1, "deep")] == Pos(4, 22)
    assert keys[("model", "layers", 1, "q")] == Pos(4, 25)
    assert pos[("model", "layers", 1, "q")] == Pos(4, 30)
    assert pos[("model", "opts", 0)] == Pos(6, 7)
    assert keys[("model", "opts", 1, "b")] == Pos(7, 7)
    assert pos[("model", "opts", 1, "b")] == Pos(7, 10)
    assert pos[("model", "opts", 1, "c", 0)] == Pos(9, 11)
    assert pos[("model", "opts", 2, 0)] == Pos(11, 9)
    assert keys[("model", "empty")] == Pos(12, 3)
    assert keys[("data", "train", "path")] == Pos(13, 16)
    assert pos[("data", "train", "path")] == Pos(13, 22)
    assert pos[("data", "eval", 1)] == Pos(13, 49)
    assert loaded.data["model"]["opts"] == ["a", {"b": 2, "c": [None]}, ["nested"]]


def _compose_marks(node: yaml.Node) -> tuple[dict[Any, Pos], dict[Any, Pos]]:
    """Paths -> 1-based marks from PyYAML's (recursive) composer, for comparison."""
    values: dict[Any, Pos] = {}
    keys: dict[Any, Pos] = {}
    todo: list[tuple[yaml.Node, tuple[Any, ...]]] = [(node, ())]
    while todo:
        current, path = todo.pop()
        values[path] = Pos(current.start_mark.line + 1, current.start_mark.column + 1)
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                child = (*path, key_node.value)
                keys[child] = Pos(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                todo.append((value_node, child))
        elif isinstance(current, yaml.SequenceNode):
            todo.extend((item, (*path, i)) for i, item in enumerate(current.value))
    return values, keys


def test_positions_match_pyyaml_compose_marks(parser: Any) -> None:
    text = BLOCK_DOC + (
        "multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\n"
        "quoted: 'it''s'\n\"dq key\": \"v\"\nlist:\n- {a: [1, 2], b: ~}\n- - x\n  - y\n"
    )
    loaded = load_yaml(text)
    node = yaml.compose(text, Loader=parser)
    assert node is not None
    values, keys = _compose_marks(node)
    assert loaded.positions == values
    assert loaded.key_positions == keys


def test_alias_positions() -> None:
    loaded = load_yaml("base: &b\n  x: 1\n  y: [1, 2]\nc: *b\nd: [*b]\n")
    assert loaded.positions[("c",)] == Pos(4, 4)  # the alias use site
    assert loaded.positions[("d", 0)] == Pos(5, 5)
    # Inside the expansion, positions point at the anchored original.
    assert loaded.positions[("c", "y", 1)] == loaded.positions[("base", "y", 1)] == Pos(3, 10)
    assert loaded.key_positions[("d", 0, "x")] == Pos(2, 3)
    assert set(loaded.positions) >= {("d", 0, "y", 0), ("c", "x")}


def test_locate_falls_back_to_nearest_ancestor() -> None:
    loaded = load_yaml("a:\n  b: 1\n")
    assert loaded.locate(("a", "b")) == Pos(2, 6)
    assert loaded.locate(("a", "b"), key=True) == Pos(2, 3)
    assert loaded.locate(("a", "missing", 3)) == Pos(2, 3)
    assert loaded.locate(("zzz",)) == Pos(1, 1)
    assert LoadedYaml(None).locate(("x",)) == Pos(1, 1)


# --------------------------------------------------------------------------------------
# Problems


def test_duplicate_key_names_both_lines(parser: Any) -> None:
    (problem,) = problems("a: 1\nb: 2\nname: x\nc: 3\n\nname: y\n")
    assert problem.code == "Y002"
    assert (problem.line, problem.col) == (6, 1)
    assert "duplicate key 'name'" in problem.message
    assert "line 3" in problem.message


def test_duplicate_keys_in_flow_and_nested_mappings() -> None:
    found = problems("outer:\n  inner: {k: 1, k: 2}\n  inner2: 1\n  inner2: 2\n")
    assert [(p.code, p.line) for p in found] == [("Y002", 2), ("Y002", 4)]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1: x\n", "quote it: '1': ..."),
        ("1.5: x\n", "quote it: '1.5': ..."),
        ("true: x\n", "quote it: 'true': ..."),
        ("null: x\n", "quote it: 'null': ..."),
        ("~: x\n", "quote it: '~': ..."),
        ("? [a, b]\n: x\n", "sequence cannot be used as a key"),
        ("{[a]: x}\n", "sequence cannot be used as a key"),
        ("? {a: 1}\n: x\n", "mapping cannot be used as a key"),
        ("!!int '3': x\n", "integer"),
        ("a: &n 5\n*n : x\n", "integer"),
        ("? \n: x\n", "empty"),
    ],
)
def test_non_string_keys(text: str, fragment: str) -> None:
    (problem,) = problems(text)
    assert problem.code == "Y003"
    assert "keys must be strings" in problem.message
    assert fragment in problem.message


def test_string_like_keys_are_fine() -> None:
    data = load_yaml("yes: 1\n'1': 2\n\"true\": 3\nno: 4\n!!str 5: 6\non: 7\n").data
    assert data == {"yes": 1, "1": 2, "true": 3, "no": 4, "5": 6, "on": 7}


def test_all_problems_collected_and_sorted() -> None:
    text = (
        "a: 1\n"
        "b: !custom x\n"
        "1: bad\n"
        "a: 2\n"
        "c: !!int nope\n"
        "d: {x: 1, x: 2, 2: y}\n"
        "e: !!python/object:os.system ls\n"
    )
    found = problems(text)
    assert [(p.code, p.line) for p in found] == [
        ("Y005", 2),
        ("Y003", 3),
        ("Y002", 4),
        ("Y005", 5),
        ("Y002", 6),
        ("Y003", 6),
        ("Y005", 7),
    ]
    assert found == sorted(found, key=lambda p: (p.line, p.col))


@pytest.mark.parametrize(
    "text",
    [
        "a: !custom 1\n",
        "a: !!python/object:os.system x\n",
        "a: !!binary aGk=\n",
        "a: !!timestamp 2026-01-01\n",
        "a: !!set {x}\n",
        "a: !!omap [{x: 1}]\n",
        "a: !!str [1]\n",
        "a: !!map [1]\n",
        "a: !!seq {x: 1}\n",
        "a: !!map x\n",
        "a: !!int abc\n",
        "a: !!int 1.5\n",
        "a: !!float abc\n",
        "a: !!bool yes\n",
        "a: !!null 0\n",
        "a: !<tag:example.com:x> 1\n",
    ],
)
def test_bad_tags(text: str) -> None:
    (problem,) = problems(text)
    assert problem.code == "Y005"
    assert (problem.line, problem.col) == (1, 4)


def test_unknown_tag_message() -> None:
    (problem,) = problems("model:\n  cls: !!python/object/apply:os.system [ls]\n")
    assert problem.code == "Y005"
    assert "!!python/object/apply:os.system" in problem.message
    assert (problem.line, problem.col) == (2, 8)


@pytest.mark.parametrize(
    "text", ["a: 1\n---\nb: 2\n", "--- 1\n--- 2\n", "a: 1\n...\n---\nb: 2\n", "a: 1\n---\n"]
)
def test_multiple_documents(parser: Any, text: str) -> None:
    found = problems(text)
    assert [p.code for p in found] == ["Y006"]


def test_multiple_documents_keeps_earlier_problems() -> None:
    assert codes("a: 1\na: 2\n---\nb: [\n") == ["Y002", "Y006"]


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ("a: [1, 2\nb: 3\n", 2, 2),
        ("a: b: c\n", 1, 5),
        ("a: 'unclosed\n", 2, 1),
        ("a:\n  b: 1\n c: 2\n", 3, 2),
        ("- a\nb: 1\n", 2, 1),
        ("a: @x\n", 1, 4),
    ],
)
def test_syntax_errors(parser: Any, text: str, line: int, col: int) -> None:
    (problem,) = problems(text)
    assert problem.code == "Y001"
    assert (problem.line, problem.col) == (line, col)
    assert problem.message.startswith("invalid YAML: ")


def test_tab_indentation_hint(parser: Any) -> None:
    (problem,) = problems("a:\n\tb: 1\n")
    assert (problem.code, problem.line, problem.col) == ("Y001", 2, 1)
    assert problem.hint is not None and "tab" in problem.hint


def test_syntax_error_keeps_earlier_problems() -> None:
    assert codes("a: 1\na: 2\nb: [\n") == ["Y002", "Y001"]


def test_invalid_utf8() -> None:
    (problem,) = problems(b"a: 1\nb: caf\xe9\n")
    assert problem.code == "Y001"
    assert (problem.line, problem.col) == (2, 7)
    assert "UTF-8" in problem.message
    (problem,) = problems(b"\xff\xfea\x00:\x00")  # UTF-16 is refused, not guessed
    assert problem.code == "Y001" and "UTF-8" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [("a: 1\nb: x\x00y\n", 2, 5), ("a: \x1b[31m\n", 1, 4), ("k: \ud800\n", 1, 4)],
)
def test_control_characters_and_surrogates(text: str, line: int, col: int) -> None:
    (problem,) = problems(text)
    assert (problem.code, problem.line, problem.col) == ("Y001", line, col)
    assert "U+" in problem.message


def test_undefined_alias() -> None:
    (problem,) = problems("a: *nowhere\n")
    assert (problem.code, problem.line, problem.col) == ("Y001", 1, 4)
    assert "*nowhere" in problem.message


def test_error_formatting_and_pickling() -> None:
    with pytest.raises(YamlLoadError) as info:
        load_yaml("x: 1\nx: 2\n", filename="spec.yaml")
    err = info.value
    assert err.filename == "spec.yaml"
    assert str(err).startswith("spec.yaml:2:1: Y002 duplicate key 'x' (first defined at line 1)")
    clone = pickle.loads(pickle.dumps(err))
    assert clone.problems == err.problems and clone.filename == "spec.yaml"


# --------------------------------------------------------------------------------------
# Aliases and limits


def billion_laughs(levels: int = 9) -> str:
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_refused_quickly(parser: Any) -> None:
    start = time.perf_counter()
    (problem,) = problems(billion_laughs())
    elapsed = time.perf_counter() - start
    assert problem.code == "Y004"
    assert "max_nodes" in problem.message and "1,000,000" in problem.message
    assert elapsed < 2.0


def test_alias_expansion_within_limits_is_counted() -> None:
    text = billion_laughs(2)  # 10 + 91 + 820 nodes plus keys
    assert load_yaml(text, limits=Limits(max_nodes=1000)).data["lol2"][8][8] == ["lol"] * 9
    assert codes(text, limits=Limits(max_nodes=900)) == ["Y004"]


def test_aliases_are_independent_copies() -> None:
    data = load_yaml("a: &a {x: [1]}\nb: *a\nc: [*a, *a]\n").data
    assert data["a"] == data["b"] == data["c"][0] == data["c"][1] == {"x": [1]}
    data["b"]["x"].append(2)
    data["c"][0]["y"] = 1
    assert data["a"] == {"x": [1]} and data["c"][1] == {"x": [1]}
    assert data["a"]["x"] is not data["c"][1]["x"]


def test_nested_aliases_are_copied() -> None:
    data = load_yaml("a: &a [1]\nb: &b {p: *a, q: *a}\nc: [*b, *b]\n").data
    data["c"][1]["q"].append(9)
    assert data == {
        "a": [1],
        "b": {"p": [1], "q": [1]},
        "c": [{"p": [1], "q": [1]}, {"p": [1], "q": [1, 9]}],
    }


def test_recursive_alias_refused() -> None:
    (problem,) = problems("a: &a\n  b: *a\n")
    assert problem.code == "Y004" and "recursive" in problem.message


def test_max_aliases() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 11) + "]\n"
    assert load_yaml(text, limits=Limits(max_aliases=11)).data["b"] == [1] * 11
    (problem,) = problems(text, limits=Limits(max_aliases=10))
    assert problem.code == "Y004" and "max_aliases" in problem.message


@pytest.mark.parametrize("opener", ["[", "{a: ", "- ", "{"])
def test_deep_nesting_refused_quickly(parser: Any, opener: str) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": "", "{": "}"}[opener]
    text = opener * 50_000 + "x" + closer * 50_000
    start = time.perf_counter()
    (problem,) = problems(text)
    elapsed = time.perf_counter() - start
    assert problem.code == "Y004"
    assert "max_depth" in problem.message and "64" in problem.message
    assert elapsed < 2.0


def test_depth_limit_is_exact() -> None:
    assert load_yaml("[" * 64 + "]" * 64).positions[(0,) * 63] == Pos(1, 64)
    assert codes("[" * 65 + "]" * 65) == ["Y004"]
    nested_maps = "\n".join(" " * i + "a:" for i in range(64)) + " x\n"
    assert load_yaml(nested_maps).positions[("a",) * 64] == Pos(64, 67)
    assert codes(nested_maps.replace(" x\n", "\n" + " " * 64 + "a: x\n")) == ["Y004"]
    # Aliases count towards depth where they are used: root mapping + 53 + 10 levels = 64.
    shallow = "a: &a " + "[" * 10 + "]" * 10 + "\nb: " + "[" * 53 + "*a" + "]" * 53 + "\n"
    assert load_yaml(shallow).data["b"] is not None
    deep = "a: &a " + "[" * 10 + "]" * 10 + "\nb: " + "[" * 54 + "*a" + "]" * 54 + "\n"
    (problem,) = problems(deep)
    assert problem.code == "Y004" and "*a" in problem.message


def test_oversized_input_refused(tmp_path: Path) -> None:
    small = Limits(max_bytes=100)
    assert load_yaml("a: " + "x" * 90, limits=small).data == {"a": "x" * 90}
    oversized: list[str | bytes] = ["a: " + "x" * 98, ("a: " + "x" * 98).encode(), "a: " + "é" * 49]
    for text in oversized:
        (problem,) = problems(text, limits=small)
        assert problem.code == "Y004" and "max_bytes" in problem.message
    start = time.perf_counter()
    (problem,) = problems("x" * (DEFAULT_LIMITS.max_bytes + 1))
    assert problem.code == "Y004" and time.perf_counter() - start < 1.0
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 200)
    with pytest.raises(YamlLoadError) as info:
        load_yaml_file(big, limits=small)
    assert info.value.problems[0].code == "Y004" and info.value.filename == str(big)


def test_load_yaml_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: demo\nlr: 1e-5\n", encoding="utf-8")
    loaded = load_yaml_file(spec)
    assert loaded.data == {"name": "demo", "lr": 1e-5}
    assert loaded.positions[("lr",)] == Pos(2, 5)
    spec.write_text("name: a\nname: b\n", encoding="utf-8")
    with pytest.raises(YamlLoadError) as info:
        load_yaml_file(str(spec))
    assert str(info.value).startswith(f"{spec}:2:1: Y002")
    with pytest.raises(FileNotFoundError):
        load_yaml_file(tmp_path / "missing.yaml")


def test_huge_integer_literal_is_a_problem_not_a_crash() -> None:
    found = problems("a: " + "9" * 5000 + "\n")
    assert [p.code for p in found] == ["Y004"]
    assert load_yaml("a: 0x" + "f" * 5000 + "\n").data["a"] == 16**5000 - 1


def test_module_does_not_import_ml_stacks() -> None:
    code = (
        "import sys, rlhfspec.compiler.yaml_loader as m; "
        "bad = {'torch', 'transformers', 'trl'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------
# Properties

# JSON is YAML 1.2, but PyYAML's *lexer* is YAML 1.1: NEL/LS/PS are line breaks (folded
# inside quoted strings), C1 controls and U+FFFE/U+FFFF are refused, and libyaml refuses
# "\ud83d\ude00" surrogate-pair escapes. The strategies avoid exactly those characters.
_YAML_UNSAFE = {"\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff"}


def _yaml_safe_char(c: str) -> bool:
    return c not in _YAML_UNSAFE and not ("\x80" <= c <= "\x9f")


raw_text = st.text(st.characters(exclude_categories=["Cs"]).filter(_yaml_safe_char), max_size=30)
# Escaped by json.dumps except DEL; astral characters would become surrogate-pair escapes.
bmp_chars = st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]).filter(
    lambda c: c != "\x7f"
)
bmp_text = st.text(bmp_chars, max_size=30)
keys = st.text(max_size=12).filter(lambda s: all(map(_yaml_safe_char, s)))
bmp_keys = st.text(bmp_chars, max_size=12)


def json_values(
    text: st.SearchStrategy[str], keys: st.SearchStrategy[str] = keys
) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=25,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values(raw_text), indent=st.sampled_from([None, 2]))
def test_json_round_trips_unicode(value: Any, indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    assert load_yaml(text).data == value


@settings(max_examples=100, deadline=None)
@given(value=json_values(bmp_text, bmp_keys))
def test_json_round_trips_ascii_escaped(value: Any) -> None:
    assert load_yaml(json.dumps(value)).data == value


def _never_crashes(text: str) -> None:
    try:
        loaded = load_yaml(text)
    except YamlLoadError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.code in {"Y001", "Y002", "Y003", "Y004", "Y005", "Y006"}
            assert p.line >= 1 and p.col >= 1
    else:
        assert isinstance(loaded, LoadedYaml)
        assert () in loaded.positions


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_only_raises_yaml_load_error(text: str) -> None:
    _never_crashes(text)


YAML_TOKENS = [*"ab1.-:?,[]{}&*!|>'\"#%@`~ \n\t\\", "- ", ": ", "&a ", "*a", "!!", "---", "  "]
YAMLISH = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_yamlish_text_only_raises_yaml_load_error(text: str) -> None:
    _never_crashes(text)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


@settings(max_examples=100, deadline=None)
@given(value=json_values(raw_text))
def test_every_path_has_a_position(value: Any) -> None:
    loaded = load_yaml(json.dumps(value, ensure_ascii=False, indent=1))
    assert set(loaded.positions) == set(_paths(value))
    assert set(loaded.key_positions) == {p for p in _paths(value) if p and isinstance(p[-1], str)}
