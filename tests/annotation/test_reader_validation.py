"""Annotation readers refuse bad rows with located errors (issue 15, classes 4 and 5).

Each input here once crashed the reader (exit 3) or was silently misread:
invalid UTF-8, deep nesting, huge numbers, non-finite or absurd durations,
timestamps that overflow, results of the wrong type, "false" read as gold,
`true` read as a user id, and votes counted twice across batches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.aggregate import load_records
from rlhfspec.runtime.annotation.qc import run_qc
from rlhfspec.runtime.annotation.records import read_batch, read_batches
from rlhfspec.runtime.project import load_project

GOOD: dict[str, Any] = {
    "item_id": "i1",
    "prompt_id": "p1",
    "response_a": "r1",
    "response_b": "r2",
    "choice": "A",
    "annotator": "ann-01",
    "session": "s1",
    "started_at": "2026-11-02T09:00:00Z",
    "submitted_at": "2026-11-02T09:01:00Z",
    "criteria_version": "1.2.0",
    "batch": "b",
    "gold": False,
}
TASK: dict[str, Any] = {
    "id": 7,
    "data": {
        "item_id": "i1",
        "prompt_id": "p1",
        "response_a": "r1",
        "response_b": "r2",
        "gold": False,
        "criteria_version": "1.2.0",
    },
}
ANN: dict[str, Any] = {
    "completed_by": 11,
    "created_at": "2026-11-02T09:01:00Z",
    "lead_time": 30,
    "result": [{"type": "choices", "value": {"choices": ["A"]}}],
}


def refused(path: Path, fmt: str) -> str:
    with pytest.raises(RunError) as info:
        read_batch(path, batch="b", fmt=fmt, criteria_version="1.2.0", display=path.name)
    assert info.value.exit_code == 1
    return info.value.message


JSONL_CASES = {
    "invalid UTF-8": (b'\xff\xfe{"a": 1}\n', "line 1: not UTF-8"),
    "200,000-deep array": (b"[" * 200_000 + b"]" * 200_000, "line 1: nested more than"),
    "5,000-digit number": (b'{"x": 1' + b"0" * 5000 + b"}", "line 1: not valid JSON"),
    "NaN literal": (b'{"x": NaN}', "line 1: NaN is not a number"),
    "1e400": (b'{"x": 1e400}', "line 1: 1e400 is too large"),
    "gold as a string": (json.dumps({**GOOD, "gold": "false"}).encode(), "line 1: field 'gold'"),
    "year 1": (
        json.dumps({**GOOD, "started_at": "0001-01-01T00:00:00Z"}).encode(),
        "line 1: field 'started_at': year outside",
    ),
    "three-day task": (
        json.dumps({**GOOD, "submitted_at": "2026-11-05T09:01:00Z"}).encode(),
        "line 1: field 'submitted_at': is more than a day",
    ),
}


@pytest.mark.parametrize("name", sorted(JSONL_CASES))
def test_jsonl_bad_rows_are_located(tmp_path: Path, name: str) -> None:
    data, expected = JSONL_CASES[name]
    path = tmp_path / "batch.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + data + b"\n")
    message = refused(path, "jsonl")
    assert f"batch.jsonl: {expected.replace('line 1', 'line 2')}" in message


LS_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "lead_time 1e20": ({"lead_time": 1e20}, "field 'lead_time'"),
    "lead_time negative": ({"lead_time": -1}, "field 'lead_time'"),
    "lead_time a boolean": ({"lead_time": True}, "field 'lead_time'"),
    "created_at year 1 with an offset": (
        {"created_at": "0001-01-01T00:00:00+05:00"},
        "field 'created_at'",
    ),
    "value a string": (
        {"result": [{"type": "choices", "value": "A"}]},
        "field 'result[0].value': must be an object",
    ),
    "choices an object": (
        {"result": [{"type": "choices", "value": {"choices": {}}}]},
        "field 'result[0].value.choices'",
    ),
    "result not a list": ({"result": "A"}, "field 'result'"),
    "completed_by true": ({"completed_by": True}, "field 'completed_by'"),
    "was_cancelled a string": ({"was_cancelled": "no"}, "field 'was_cancelled'"),
}


@pytest.mark.parametrize("name", sorted(LS_CASES))
def test_label_studio_fields_are_checked(tmp_path: Path, name: str) -> None:
    patch, expected = LS_CASES[name]
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{**TASK, "annotations": [{**ANN, **patch}]}]), encoding="utf-8")
    message = refused(path, "label_studio")
    assert f"export.json: task 1 (id 7), annotation 0: {expected}" in message


def test_label_studio_gold_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    task = {**TASK, "data": {**TASK["data"], "gold": "false"}, "annotations": [ANN]}
    path.write_text(json.dumps([task]), encoding="utf-8")
    assert "field 'data.gold': must be true or false" in refused(path, "label_studio")


def test_label_studio_non_finite_export_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(
        json.dumps([{**TASK, "annotations": [{**ANN, "lead_time": float("inf")}]}]),
        encoding="utf-8",
    )
    assert "export.json: not a Label Studio JSON export: Infinity" in refused(path, "label_studio")


def test_label_studio_duplicate_vote_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    other = {**TASK, "id": 8, "annotations": [{**ANN, "lead_time": 12}]}
    path.write_text(json.dumps([{**TASK, "annotations": [ANN]}, other]), encoding="utf-8")
    message = refused(path, "label_studio")
    assert (
        "export.json: task 2 (id 8), annotation 0: field 'item_id': annotator ls-user-11 already "
        "voted on item i1 at export.json: task 1 (id 7), annotation 0" in message
    )


def _two_batches(tmp_path: Path, second: str) -> list[dict[str, Any]]:
    (tmp_path / "w1.jsonl").write_text(json.dumps({**GOOD, "batch": "w1"}) + "\n")
    if second == "jsonl":
        (tmp_path / "w2.jsonl").write_text(json.dumps({**GOOD, "batch": "w2", "choice": "B"}))
        path = "w2.jsonl"
    else:
        path = "w2.json"
        (tmp_path / path).write_text(json.dumps([{**TASK, "annotations": [ANN]}]))
    return [
        {"id": "w1", "path": "w1.jsonl", "format": "jsonl", "criteria_version": "1.2.0"},
        {"id": "w2", "path": path, "format": second, "criteria_version": "1.2.0"},
    ]


def test_duplicate_vote_across_batches_is_refused(tmp_path: Path) -> None:
    entries = _two_batches(tmp_path, "jsonl")
    with pytest.raises(RunError) as info:
        read_batches(entries, tmp_path)
    assert (
        "batch 'w2' refused: 1 bad row(s)\n  w2.jsonl: line 1: field 'item_id': annotator "
        "ann-01 already voted on item i1 at w1.jsonl: line 1" in info.value.message
    )
    reads = read_batches(entries, tmp_path, skip_bad=True)
    assert [len(r.records) for r in reads] == [1, 0]  # the first vote is kept, the later listed
    assert len(reads[1].problems) == 1


def test_duplicate_vote_across_formats_is_refused(tmp_path: Path) -> None:
    entries = _two_batches(tmp_path, "label_studio")
    # the Label Studio user must map to the same annotator id for it to be the same vote
    (tmp_path / "w1.jsonl").write_text(
        json.dumps({**GOOD, "batch": "w1", "annotator": "ls-user-11"}) + "\n"
    )
    with pytest.raises(RunError) as info:
        read_batches(entries, tmp_path)
    assert "already voted on item i1 at w1.jsonl: line 1" in info.value.message


def test_qc_and_aggregate_refuse_a_vote_repeated_in_another_batch(project: Path) -> None:
    folder = project.parent / "support-assistant" / "data" / "annotations"
    first = (folder / "2026-11-w1.jsonl").read_text(encoding="utf-8").splitlines()[0]
    row = json.loads(first)
    row["batch"] = "2026-11-w2"
    with (folder / "2026-11-w2.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    spec = load_project(project)
    for read_all in (lambda: run_qc(spec), lambda: load_records(spec)):
        with pytest.raises(RunError) as info:
            read_all()
        assert "already voted on item" in info.value.message
        assert "at support-assistant/data/annotations/2026-11-w1.jsonl: line 1" in (
            info.value.message
        )


def test_example_batches_read_unchanged(tmp_path: Path, project: Path) -> None:
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    records = load_records(load_project(project))
    assert len(records) == len({(r["item_id"], r["annotator"]) for r in records}) > 1000
