"""`rlhfspec tasks`: overlap, order, blinding, gold mixing, sessions and determinism."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.label_studio import labeling_config
from rlhfspec.runtime.annotation.tasks import TaskSummary, generate_tasks, gold_count
from rlhfspec.runtime.project import Project, load_project

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "support-assistant.yaml"
DATA = ROOT / "specs" / "support-assistant" / "data"
RESPONSES = DATA / "responses.jsonl"
ANNOTATORS = [f"ann-0{i}" for i in range(1, 7)]
FILES = (
    "tasks.jsonl",
    "unblinding_key.json",
    "summary.json",
    "label_studio/tasks.json",
    "label_studio/config.xml",
    *(f"annotators/ann-0{i}.jsonl" for i in range(1, 7)),
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(SPEC)


@pytest.fixture(scope="module")
def run(project: Project, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TaskSummary]:
    out = tmp_path_factory.mktemp("tasks")
    return out, generate_tasks(project, RESPONSES, out, annotators=ANNOTATORS)


@pytest.fixture(scope="module")
def tasks(run: tuple[Path, TaskSummary]) -> list[dict[str, Any]]:
    return read_jsonl(run[0] / "tasks.jsonl")


def with_seed(project: Project, seed: int) -> Project:
    spec = copy.deepcopy(project.spec)
    spec["seed"] = seed
    return Project(spec, project.spec_path, project.display)


def test_example_counts(run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]) -> None:
    _, summary = run
    assert summary.items == 561  # every prompt outside the holdout, one pair each
    assert summary.tasks == len(tasks) == 561 * 3 + summary.data["gold_tasks"]
    assert summary.data["skipped"]["holdout_prompts"] == 39
    assert summary.data["items_per_kind"] == {
        "adversarial": 80,
        "synthetic": 130,
        "usage_logs": 351,
    }
    assert summary.warnings == []
    assert [p.relative_to(run[0]).as_posix() for p in summary.paths] == list(FILES)


def test_overlap_and_nobody_sees_an_item_twice(tasks: list[dict[str, Any]]) -> None:
    per_item: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        if not task["gold"]:
            per_item[task["item_id"]].append(task["annotator"])
    assert all(len(a) == 3 and len(set(a)) == 3 for a in per_item.values())
    seen = Counter((t["annotator"], t["item_id"]) for t in tasks)
    assert max(seen.values()) == 1
    loads = Counter(t["annotator"] for t in tasks if not t["gold"])
    assert max(loads.values()) - min(loads.values()) <= 1
    pairs = Counter()
    for annotators in per_item.values():
        pairs.update((a, b) for a in annotators for b in annotators if a < b)
    assert len(pairs) == 15 and min(pairs.values()) > 0  # every pair of annotators overlaps


def test_no_holdout_prompt_and_distinct_systems(
    project: Project, run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]
) -> None:
    holdout = {f"usage-{n:04d}" for n in range(352, 391)}
    assert not holdout & {t["prompt_id"] for t in tasks}
    key = json.loads((run[0] / "unblinding_key.json").read_text(encoding="utf-8"))["responses"]
    for task in tasks:
        if not task["gold"]:
            assert key[task["response_a"]]["system"] != key[task["response_b"]]["system"]


def test_order_is_balanced_seeded_and_reproducible(
    project: Project, tasks: list[dict[str, Any]], tmp_path: Path
) -> None:
    for annotator in ANNOTATORS:
        mine = [t["swapped"] for t in tasks if t["annotator"] == annotator]
        assert abs(sum(mine) - len(mine) / 2) <= 1
    for task in tasks:
        if not task["gold"]:  # canonical order of an ordinary item: the shown ids sorted
            assert task["swapped"] == (task["response_a"] > task["response_b"])
    again = read_jsonl(
        generate_tasks(project, RESPONSES, tmp_path / "same", annotators=ANNOTATORS).paths[0]
    )
    assert [t["swapped"] for t in again] == [t["swapped"] for t in tasks]
    other = read_jsonl(
        generate_tasks(
            with_seed(project, 7), RESPONSES, tmp_path / "other", annotators=ANNOTATORS
        ).paths[0]
    )
    assert other != tasks
    assert 0.4 < sum(t["swapped"] for t in other) / len(other) < 0.6


def test_blind_outputs_hide_ids_and_systems(run: tuple[Path, TaskSummary]) -> None:
    responses = read_jsonl(RESPONSES)
    systems = sorted({r["system"] for r in responses})
    for name in (
        "tasks.jsonl",
        "label_studio/tasks.json",
        "label_studio/config.xml",
        "summary.json",
    ):
        text = (run[0] / name).read_text(encoding="utf-8")
        assert not re.search(r"\br-\d{6}\b", text), name
        for system in systems:
            assert system not in text, (name, system)


def test_unblinding_key_maps_back(
    run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]
) -> None:
    responses = {r["id"]: r for r in read_jsonl(RESPONSES)}
    key = json.loads((run[0] / "unblinding_key.json").read_text(encoding="utf-8"))
    assert key["blind"] is True
    for task in tasks:
        for side in ("a", "b"):
            entry = key["responses"][task[f"response_{side}"]]
            real = responses[entry["response_id"]]
            assert real["text"] == task[f"text_{side}"]
            assert real["system"] == entry["system"]
            assert real["prompt_id"] == task["prompt_id"] == entry["prompt_id"]


def test_gold_share_and_no_answers_leak(
    project: Project, run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]
) -> None:
    low, high = project.spec["annotation"]["gold"]["share"]
    gold = {g["item_id"]: g for g in read_jsonl(DATA / "gold.jsonl")}
    for annotator in ANNOTATORS:
        mine = [t for t in tasks if t["annotator"] == annotator]
        share = sum(t["gold"] for t in mine) / len(mine)
        assert low <= share <= high
        assert run[1].data["per_annotator"][annotator]["gold_share"] == round(share, 4)
    for task in tasks:
        assert "preferred" not in task and "rationale" not in task
        if task["gold"]:
            g = gold[task["item_id"]]
            texts = (g["text_b"], g["text_a"]) if task["swapped"] else (g["text_a"], g["text_b"])
            assert (task["text_a"], task["text_b"]) == texts
    text = (run[0] / "label_studio" / "tasks.json").read_text(encoding="utf-8")
    assert not any(g["rationale"] in text for g in gold.values())
    positions = [
        i for i, t in enumerate(t for t in tasks if t["annotator"] == "ann-01") if t["gold"]
    ]
    assert positions[0] < 100 and positions[-1] > 200  # spread through the queue, not bunched


@pytest.mark.parametrize(("regular", "expected"), [(280, 23), (100, 8), (20, 2), (0, 0)])
def test_gold_count_aims_for_the_middle(regular: int, expected: int) -> None:
    assert gold_count(regular, (0.05, 0.10), 60) == expected


def test_sessions_fit_the_limit(
    project: Project, run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]
) -> None:
    ann = project.spec["annotation"]
    sessions: dict[str, list[int]] = defaultdict(list)
    for task in tasks:
        sessions[task["session"]].append(task["position"])
        assert task["session"].startswith(f"tasks-1.3.0-{task['annotator']}-s")
    for positions in sessions.values():
        assert positions == list(range(1, len(positions) + 1))
        assert len(positions) * ann["minutes_per_task"] <= ann["session_max_minutes"]
    per = run[1].data["per_annotator"]
    assert sum(a["sessions"] for a in per.values()) == len(sessions)
    assert all(a["longest_session_minutes"] <= 90 for a in per.values())


def test_label_studio_files(run: tuple[Path, TaskSummary], tasks: list[dict[str, Any]]) -> None:
    root = ET.fromstring((run[0] / "label_studio" / "config.xml").read_text(encoding="utf-8"))
    assert root.tag == "View"
    choices = root.find("Choices")
    assert (
        choices is not None
        and choices.get("name") == "choice"
        and choices.get("required") == "true"
    )
    assert [c.get("value") for c in choices.findall("Choice")] == ["A", "B", "tie"]
    textarea = root.find("TextArea")
    assert (
        textarea is not None
        and textarea.get("name") == "justification"
        and textarea.get("required") == "false"
    )
    assert any("1.3.0" in (h.get("value") or "") for h in root.findall("Header"))
    assert {t.get("value") for t in root.findall("Text")} == {"$prompt", "$text_a", "$text_b"}
    imported = json.loads((run[0] / "label_studio" / "tasks.json").read_text(encoding="utf-8"))
    assert len(imported) == len(tasks)
    key = json.loads((run[0] / "unblinding_key.json").read_text(encoding="utf-8"))
    for entry, task in zip(imported, tasks, strict=True):
        real = key["tasks"][entry["data"]["task_id"]]
        assert real["item_id"] == task["item_id"] and real["gold"] == task["gold"]
        assert key["items"][entry["data"]["item_id"]]["item_id"] == task["item_id"]
        # nothing in what annotators see tells a gold item or the prompt's source
        assert not {"gold", "prompt_id", "swapped"} & set(entry["data"])
        assert not entry["data"]["item_id"].startswith("gold")
        assert entry["data"]["response_a"] == task["response_a"]
        assert entry["meta"]["annotator"] == task["annotator"]
        assert entry["meta"]["session"] == task["session"]


def test_labeling_config_follows_the_spec() -> None:
    strict = ET.fromstring(
        labeling_config(criteria_version="2.0.0", allow_tie=False, justification="required")
    )
    assert [c.get("value") for c in strict.iter("Choice")] == ["A", "B"]
    assert strict.find("TextArea").get("required") == "true"  # type: ignore[union-attr]
    bare = ET.fromstring(
        labeling_config(criteria_version="2.0.0", allow_tie=True, justification="none")
    )
    assert bare.find("TextArea") is None


def test_same_inputs_same_bytes(
    project: Project, run: tuple[Path, TaskSummary], tmp_path: Path
) -> None:
    generate_tasks(project, RESPONSES, tmp_path, annotators=list(reversed(ANNOTATORS)))
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (run[0] / name).read_bytes(), name


def test_unblinded_and_fixed_order(project: Project, tmp_path: Path) -> None:
    spec = copy.deepcopy(project.spec)
    spec["annotation"].update(blind=False, randomize_order=False)
    summary = generate_tasks(
        Project(spec, project.spec_path, project.display),
        RESPONSES,
        tmp_path,
        annotators=ANNOTATORS[:3],
        limit=20,
        batch="trial",
    )
    rows = read_jsonl(tmp_path / "tasks.jsonl")
    assert summary.items == 20 and summary.data["skipped"]["over_limit"] == 541
    assert all(not t["swapped"] and t["response_a"].startswith("r-") for t in rows)
    assert all(t["batch"] == "trial" and t["task_id"].startswith("trial-t") for t in rows)


def test_response_problems(project: Project, tmp_path: Path) -> None:
    good = [
        {"id": "x1", "prompt_id": "usage-0001", "system": "s1", "text": "one"},
        {"id": "x2", "prompt_id": "usage-0001", "system": "s2", "text": "two"},
        {"id": "x3", "prompt_id": "usage-0002", "system": "s1", "text": "only one system"},
        {"id": "x4", "prompt_id": "nope-1", "system": "s1", "text": "unknown prompt"},
        {"id": "x5", "prompt_id": "usage-0390", "system": "s1", "text": "holdout"},
        {"id": "x6", "prompt_id": "usage-0390", "system": "s2", "text": "holdout"},
    ]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good), encoding="utf-8")
    summary = generate_tasks(project, path, tmp_path / "out", annotators=ANNOTATORS[:3])
    skipped = summary.data["skipped"]
    assert summary.items == 1
    assert (skipped["unknown_prompts"], skipped["unknown_prompt_ids"]) == (1, ["nope-1"])
    assert (skipped["single_system_prompts"], skipped["holdout_prompts"]) == (1, 1)
    # Too few tasks for the gold range: warned, not silent.
    assert summary.warnings and "gold share" in summary.warnings[0]

    bad = [*good, {"id": "x7", "prompt_id": "usage-0003", "system": "", "text": "t"}, {"id": "x1"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in bad) + "not json\n", encoding="utf-8")
    with pytest.raises(RunError) as info:
        generate_tasks(
            project,
            path,
            tmp_path / "out",
            annotators=ANNOTATORS[:3],
            responses_display="responses.jsonl",
        )
    message = info.value.message
    assert "responses.jsonl: line 7: field 'system': must be a non-empty string" in message
    assert "responses.jsonl: line 8: field 'prompt_id': missing" in message
    assert "responses.jsonl: line 9: not valid JSON" in message


def test_annotator_problems(project: Project, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="annotators_per_item is 3 but only 2"):
        generate_tasks(project, RESPONSES, tmp_path, annotators=ANNOTATORS[:2])
    with pytest.raises(RunError, match="listed twice: ann-01"):
        generate_tasks(project, RESPONSES, tmp_path, annotators=["ann-01", "ann-01", "ann-02"])
