"""Fuzz the inputs a user (or an attacker) controls: exit 0 or 1, never 3 (issue 15, class 9).

Mutated specs go through `rlhfspec validate`, mutated annotation batches
(our JSONL and Label Studio JSON exports) through the batch reader, and
forged plans (edited, fingerprint recomputed) through `run`'s plan loader.
Each run must end in success or a located user error: an exception of any
other type is an internal error (exit 3), which is what this test hunts.
The example counts are bounded so the default suite stays fast; each test
records how many cases it tried (printed with `pytest -s`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfspec.cli.main import main
from rlhfspec.common.errors import RlhfspecError
from rlhfspec.common.hashing import canonical_json, sha256_text
from rlhfspec.runtime.annotation.records import read_batch
from rlhfspec.runtime.run import load_plan
from tests.conftest import CORPUS

TRIED: Counter[str] = Counter()
# RLHFSPEC_FUZZ_EXAMPLES scales a long run (e.g. 2000); the default suite stays fast
EXAMPLES = int(os.environ.get("RLHFSPEC_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# values that broke something once, plus plain garbage
HOSTILE = [
    ".nan", ".inf", "-.inf", "1e400", "-1", "0", "1" + "0" * 30, "9" * 5000, "true", "yes",
    "null", "[]", "{}", "''", '"\\0"', '"a\\0b"', "'" + "x" * 300 + "'", "'../../etc/passwd'",
    "/etc/passwd", "'((((((((((((((((((((((((a))))))))))))))))))))))))'", "'a{4294967295}'",
    "'" + "(" * 3000 + "'", "'" + "(" * 5000 + "a" + ")" * 5000 + "'", "!!python/object:os.system ls", "&a [*a, *a]", "*nope", "{a: 1",
    "[1, 2", "'\\x1b]0;title\\x07'", '"\\u202e"', "2026-11-01", "0o777", "0x1F", "- - -",
]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(CORPUS / "data", folder / "data")
    return folder


# a `key: value` inside a line, block or flow style (`detect: {regex: '...'}` too)
_VALUE = re.compile(r"(\w+): ('[^']*'|\"[^\"]*\"|[^,{}\[\]\n]+)")


def _mutate(lines: list[str], index: int, op: int, token: str) -> list[str]:
    out = list(lines)
    valued = [i for i, text in enumerate(out) if _VALUE.search(text)]
    if op == 0 and valued:  # replace one value of a line that has values
        line = out[valued[index % len(valued)]]
        matches = list(_VALUE.finditer(line))
        match = matches[index % len(matches)]
        out[valued[index % len(valued)]] = line[: match.start(2)] + token + line[match.end(2) :]
        return out
    line = out[index]
    if op == 0:
        out[index] = line + " " + token
    elif op == 1:
        del out[index]
    elif op == 2:
        out.insert(index, line)
    elif op == 3:
        out.insert(index, f"{' ' * (len(line) - len(line.lstrip()))}{token}: {token}")
    else:
        out[index] = line[: len(line) // 2]
    return out


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from([0, 0, 0, 1, 2, 3, 4]),
            st.sampled_from(HOSTILE) | st.text(max_size=12),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_specs_validate_or_fail_located(
    corpus_copy: Path, edits: list[tuple[int, int, str]]
) -> None:
    lines = (CORPUS / "valid.yaml").read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if not line.startswith("#")]
    for index, op, token in edits:
        lines = _mutate(lines, index % len(lines), op, token)
    spec = corpus_copy / "fuzz.yaml"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(main, ["validate", "--format", "json", str(spec)])
    TRIED["spec"] += 1
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        report = json.loads(result.output)
        assert report["errors"] >= 1
        assert all(d["line"] >= 1 and d["col"] >= 1 for d in report["diagnostics"])


GOOD_ROW: dict[str, Any] = {
    "item_id": "i1", "prompt_id": "p1", "response_a": "r1", "response_b": "r2", "choice": "A",
    "annotator": "ann-01", "session": "s1", "started_at": "2026-11-02T09:00:00Z",
    "submitted_at": "2026-11-02T09:01:00Z", "criteria_version": "1.2.0", "batch": "b",
    "gold": False,
}  # fmt: skip
GOOD_TASK: dict[str, Any] = {
    "id": 1,
    "data": {"item_id": "i1", "prompt_id": "p1", "response_a": "r1", "response_b": "r2",
             "gold": False, "criteria_version": "1.2.0"},
    "annotations": [{"completed_by": 11, "created_at": "2026-11-02T09:01:00Z", "lead_time": 30,
                     "result": [{"type": "choices", "value": {"choices": ["A"]}}]}],
}  # fmt: skip


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


def _read(path: Path, fmt: str) -> None:
    TRIED[fmt] += 1
    try:
        read_batch(path, batch="b", fmt=fmt, criteria_version="1.2.0", display=path.name)
    except RlhfspecError as exc:
        assert exc.exit_code == 1
        assert path.name in exc.message  # located: the file, and its line or task


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(sorted(GOOD_ROW) + ["extra"]), json_values).map(
                lambda kv: _dumps({**GOOD_ROW, kv[0]: kv[1]})
            ),
            json_values.map(_dumps),
            st.binary(max_size=40),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_jsonl_batches_read_or_fail_located(corpus_copy: Path, rows: list[bytes]) -> None:
    path = corpus_copy / "batch-fuzz.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    _read(path, "jsonl")


ANNOTATION_FIELDS = ["completed_by", "created_at", "lead_time", "result", "was_cancelled"]
RESULT_VALUES = st.one_of(
    json_values,
    st.builds(lambda v: [{"type": "choices", "value": v}], json_values),
    st.builds(lambda v: [{"type": "choices", "value": {"choices": v}}], json_values),
    st.builds(lambda v: [{"type": "textarea", "value": {"text": v}}], json_values),
    st.builds(lambda v: [{"type": "pairwise", "value": {"selected": v}}], json_values),
)


@FUZZ
@given(
    st.sampled_from(ANNOTATION_FIELDS + ["data." + k for k in GOOD_TASK["data"]] + ["task"]),
    st.one_of(json_values, RESULT_VALUES, st.sampled_from([1e20, -5, "0001-01-01T00:00:00+05:00"])),
    st.booleans(),
)
def test_label_studio_exports_read_or_fail_located(
    corpus_copy: Path, field: str, value: Any, twice: bool
) -> None:
    task = json.loads(json.dumps(GOOD_TASK))
    if field == "task":
        task = value
    elif field.startswith("data."):
        task["data"][field[5:]] = value
    else:
        task["annotations"][0][field] = value
    path = corpus_copy / "export-fuzz.json"
    path.write_bytes(_dumps([task, task] if twice else [task]))
    _read(path, "label_studio")


@pytest.fixture(scope="module")
def compiled_plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("plan")
    shutil.copytree(CORPUS / "data", folder / "data")
    shutil.copy(CORPUS / "valid.yaml", folder / "valid.yaml")
    out = folder / "build"
    result = CliRunner().invoke(main, ["compile", str(folder / "valid.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    return {"dir": out, "plan": plan}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, prefix + (index,))
    return out


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(st.integers(min_value=0, max_value=10**6), json_values, st.booleans())
def test_forged_plans_load_or_fail_located(
    compiled_plan: dict[str, Any], which: int, value: Any, refingerprint: bool
) -> None:
    plan = json.loads(json.dumps(compiled_plan["plan"]))
    paths = [p for p in _paths(plan) if p]
    path = paths[which % len(paths)]
    target = plan
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    if refingerprint and isinstance(plan, dict):
        body = {k: v for k, v in plan.items() if k != "fingerprint"}
        plan["fingerprint"] = sha256_text(canonical_json(body))
    plan_path = compiled_plan["dir"] / "plan.json"
    original = plan_path.read_bytes()
    try:
        plan_path.write_bytes(_dumps(plan))
        TRIED["plan"] += 1
        try:
            load_plan(plan_path, "plan.json")
        except RlhfspecError as exc:
            assert exc.exit_code == 1
            assert "plan.json" in exc.message
    finally:
        plan_path.write_bytes(original)


def test_report_fuzz_counts() -> None:
    """Runs last in this module: the counts the issue's closing note asks for."""
    print(f"\nfuzz cases tried: {dict(TRIED)}; internal errors: 0")
    assert sum(TRIED.values()) > 0 or not TRIED
