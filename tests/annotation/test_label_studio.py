"""Round trip: our Label Studio import -> a Label Studio export -> annotation records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.records import read_batch
from rlhfspec.runtime.annotation.table import AnnotationTable
from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.project import load_project

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "support-assistant.yaml"
RESPONSES = ROOT / "specs" / "support-assistant" / "data" / "responses.jsonl"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ls")
    generate_tasks(
        load_project(SPEC), RESPONSES, out, annotators=["ann-01", "ann-02", "ann-03"], limit=12
    )
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text(encoding="utf-8"))
    key = json.loads((out / "unblinding_key.json").read_text(encoding="utf-8"))["tasks"]
    assert not any("gold" in t["data"] or "prompt_id" in t["data"] for t in tasks)
    # these tests read the reader's own fields, as an export of un-blinded tasks carries them
    # (the un-blinding through the key is tested round the loop in test_loop.py)
    for task in tasks:
        real = key[task["data"].pop("task_id")]
        task["data"].update(
            item_id=real["item_id"],
            prompt_id=real["prompt_id"],
            gold=real["gold"],
            response_a=real["response_a"],
            response_b=real["response_b"],
        )
    assert any(t["data"]["gold"] for t in tasks)
    # Label Studio adds an id to every task on import; the export keeps `data` as imported.
    return [{"id": 100 + i, **task} for i, task in enumerate(tasks)]


def choice(value: str) -> dict[str, Any]:
    return {
        "type": "choices",
        "from_name": "choice",
        "to_name": "prompt",
        "value": {"choices": [value]},
    }


def note(text: str) -> dict[str, Any]:
    return {
        "type": "textarea",
        "from_name": "justification",
        "to_name": "prompt",
        "value": {"text": [text]},
    }


def annotation(
    user: Any, created_at: str, lead_time: Any, result: Any, **extra: Any
) -> dict[str, Any]:
    return {
        "completed_by": user,
        "created_at": created_at,
        "lead_time": lead_time,
        "result": result,
        **extra,
    }


def export(
    imported: list[dict[str, Any]], annotations: list[list[dict[str, Any]]], path: Path
) -> Path:
    tasks = [
        dict(task, annotations=anns) for task, anns in zip(imported, annotations, strict=False)
    ]
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def read(path: Path, **kwargs: Any) -> Any:
    return read_batch(
        path,
        batch="ls-1",
        fmt="label_studio",
        criteria_version="1.2.0",
        display="export.json",
        **kwargs,
    )


def slots(imported: list[dict[str, Any]]) -> tuple[list[int], int]:
    """Indexes of ordinary tasks (in order) and of the first gold task."""
    plain = [i for i, t in enumerate(imported) if not t["data"]["gold"]]
    return plain, next(i for i, t in enumerate(imported) if t["data"]["gold"])


def good_annotations(imported: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    plain, gold_index = slots(imported)
    anns: list[list[dict[str, Any]]] = [[] for _ in imported]
    anns[plain[0]] = [
        annotation(11, "2026-11-02T09:01:00Z", 60, [choice("A"), note("A gives the steps")])
    ]
    anns[plain[1]] = [
        annotation(
            {"id": 12, "email": "ann-02@example.com"},
            "2026-11-02T09:02:30.250Z",
            45.5,
            [choice("tie")],
        )
    ]
    anns[plain[2]] = [annotation(11, "2026-11-02T09:06:00Z", 90, [choice("B")])]
    anns[plain[3]] = [
        annotation(11, "2026-11-02T11:00:00Z", 30, [choice("A")])
    ]  # > 30 min later: new session
    anns[plain[4]] = [
        annotation(13, "2026-11-02T09:10:00Z", 20, [choice("A")], was_cancelled=True),
        annotation(
            {"id": 14},
            "2026-11-02T09:12:00Z",
            20,
            [{"type": "pairwise", "value": {"selected": "right"}}],
        ),
    ]
    anns[plain[5]] = [
        annotation(
            13,
            "2026-11-02T09:20:00+00:00",
            15,
            [{"type": "pairwise", "value": {"selected": "left"}}],
        )
    ]
    anns[gold_index] = [annotation(12, "2026-11-02T09:04:00Z", 40, [choice("b")])]
    return anns


def test_round_trip(imported: list[dict[str, Any]], tmp_path: Path) -> None:
    anns = good_annotations(imported)
    plain, _ = slots(imported)
    data = [imported[i]["data"] for i in plain]
    result = read(export(imported, anns, tmp_path / "export.json"))
    assert result.problems == [] and result.cancelled == 1
    by_task = {(r["item_id"], r["annotator"]): r for r in result.records}
    assert len(result.records) == 7

    first = by_task[(data[0]["item_id"], "ls-user-11")]
    assert (first["choice"], first["justification"]) == ("A", "A gives the steps")
    assert (first["started_at"], first["submitted_at"]) == (
        "2026-11-02T09:00:00Z",
        "2026-11-02T09:01:00Z",
    )
    for key in ("prompt_id", "response_a", "response_b", "criteria_version"):
        assert first[key] == data[0][key]
    assert first["batch"] == "ls-1" and first["gold"] is False

    tie = by_task[(data[1]["item_id"], "ann-02@example.com")]
    assert tie["choice"] == "tie" and tie["justification"] is None
    assert tie["started_at"] == "2026-11-02T09:01:44Z"  # 09:02:30.25 - 45.5 s, whole seconds
    assert by_task[(data[4]["item_id"], "ls-user-14")]["choice"] == "B"
    assert by_task[(data[5]["item_id"], "ls-user-13")]["choice"] == "A"
    gold = [r for r in result.records if r["gold"]]
    assert len(gold) == 1 and gold[0]["choice"] == "B"

    sessions = {
        r["item_id"]: r["session"] for r in result.records if r["annotator"] == "ls-user-11"
    }
    assert [sessions[data[i]["item_id"]] for i in (0, 2, 3)] == [
        "ls-user-11-ls001",
        "ls-user-11-ls001",
        "ls-user-11-ls002",
    ]

    table = AnnotationTable.from_records(result.records)  # the QC's view works on blinded ids
    assert len(table) == 7 and set(table.annotators) == {
        "ls-user-11",
        "ls-user-12",
        "ls-user-13",
        "ls-user-14",
        "ann-02@example.com",
    }


def test_bad_rows_refused_or_skipped(imported: list[dict[str, Any]], tmp_path: Path) -> None:
    anns = good_annotations(imported)
    plain, _ = slots(imported)
    bad = plain[6:9]
    anns[bad[0]] = [annotation(15, "2026-11-02T10:00:00Z", 30, [])]  # no result
    anns[bad[1]] = [annotation(15, "2026-11-02T10:05:00Z", "abc", [choice("A")])]  # bad lead_time
    anns[bad[2]] = [annotation(15, "yesterday", 30, [choice("A")])]
    path = export(imported, anns, tmp_path / "export.json")
    where = [f"task {i + 1} (id {imported[i]['id']}), annotation 0" for i in bad]
    with pytest.raises(RunError) as info:
        read(path)
    message = info.value.message
    assert "batch 'ls-1' refused: 3 bad row(s)" in message
    assert f"export.json: {where[0]}: field 'result'" in message
    assert (
        f"export.json: {where[1]}: field 'lead_time': must be seconds spent, got 'abc'" in message
    )
    assert f"export.json: {where[2]}: field 'created_at'" in message

    result = read(path, skip_bad=True)
    assert len(result.records) == 7
    assert [(p.where, p.field) for p in result.problems] == list(
        zip(where, ("result", "lead_time", "created_at"), strict=True)
    )


def test_json_min_and_csv_exports_are_refused_with_a_hint(tmp_path: Path) -> None:
    from rlhfspec.common.errors import RunError

    minimal = tmp_path / "min.json"
    minimal.write_text(
        json.dumps([{"id": 1, "prompt": "p", "choice": "A", "annotator": 1, "lead_time": 3}])
    )
    with pytest.raises(RunError, match="JSON-MIN export.*Export > JSON"):
        read(minimal)
    csv = tmp_path / "export.csv"
    csv.write_text("id,prompt,choice\n1,p,A\n")
    with pytest.raises(RunError, match="CSV and TSV exports are not read"):
        read(csv)
