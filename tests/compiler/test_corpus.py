"""Every spec in tests/corpus/ yields exactly the diagnostics written at its end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlhfspec.compiler.validate import validate_file
from tests.conftest import CORPUS

EXPECT = re.compile(r"^# expect: (?:(none)|(error|warning) ([A-Z]\d{3}) (\d+):(\d+))$")
CASES = sorted(CORPUS.glob("*.yaml"))


def expected(path: Path) -> list[tuple[str, str, int, int]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = EXPECT.match(line)
        if match and not match.group(1):
            out.append((match.group(2), match.group(3), int(match.group(4)), int(match.group(5))))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_corpus_case(case: Path) -> None:
    result = validate_file(case)
    got = [(d.severity, d.code, d.line, d.col) for d in result.diagnostics]
    assert got == expected(case)


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 20
    codes = {code for case in CASES for _, code, _, _ in expected(case)}
    # the corpus covers every family of checks
    assert {"Y001", "Y002", "Y003", "S001", "S002", "S003", "S004", "S005"} <= codes
    assert {
        "C001",
        "C002",
        "C008",
        "P001",
        "P005",
        "A001",
        "A002",
        "R001",
        "O001",
        "O002",
        "F001",
        "F002",
    } <= codes


def test_messages_are_actionable() -> None:
    typo = validate_file(CORPUS / "unknown_nested_key.yaml").diagnostics
    assert "did you mean 'epochs'" in typo[0].message
    assert typo[0].path == "reward_model.train.epocs"
    yes = [
        d for d in validate_file(CORPUS / "yes_is_not_boolean.yaml").diagnostics if d.code == "S003"
    ]
    assert yes[0].hint is not None and "true and false" in yes[0].hint
    enum = validate_file(CORPUS / "enum_typo.yaml").diagnostics
    assert "did you mean 'ppo'" in enum[0].message
    dup = validate_file(CORPUS / "duplicate_key.yaml").diagnostics
    assert "line 2" in dup[0].message and dup[0].line == 4
    missing = validate_file(CORPUS / "missing_required.yaml").diagnostics
    assert missing[0].path == "criteria.version"


def test_strict_turns_warnings_into_errors() -> None:
    case = CORPUS / "shares_outside_recommended.yaml"
    assert validate_file(case).ok
    strict = validate_file(case, strict=True)
    assert not strict.ok
    assert {d.code for d in strict.diagnostics} == {"C006", "A001", "R001"}
    assert all(d.severity == "error" for d in strict.diagnostics)
