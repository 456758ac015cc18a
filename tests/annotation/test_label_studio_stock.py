"""Exports of Label Studio's stock pairwise templates, read by text (`label_studio_pairwise`).

The fixtures are JSON exports recorded from a real Label Studio 1.23.2 server by
test_label_studio_server.py (RLHFSPEC_RECORD_STOCK=1): a "Human Preference collection for
RLHF" project (`prompt` / `answer1` / `answer2`) and a "Pairwise classification" project
(`pairText1` / `pairText2`, no prompt), annotated with `<Pairwise>` clicks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.aggregate import aggregate, load_records
from rlhfspec.runtime.annotation.blinding import opaque_id
from rlhfspec.runtime.annotation.qc import run_qc
from rlhfspec.runtime.project import load_project
from rlhfspec.runtime.prompts.check import check_prompts
from tests.annotation import stock_data
from tests.annotation.test_loop import PLACEHOLDER, project_copy

FIXTURES = Path(__file__).parent / "fixtures"
RLHF = json.loads((FIXTURES / "ls_stock_rlhf.json").read_text(encoding="utf-8"))
PAIRWISE = json.loads((FIXTURES / "ls_stock_pairwise.json").read_text(encoding="utf-8"))
PW_FIELDS = "fields: {prompt: null, response_a: pairText1, response_b: pairText2}"


def flat(text: str) -> str:
    return " ".join(text.split())


BY_TEXT = {flat(text): i for text, i in stock_data.response_ids().items()}


def stock_spec(
    tmp_path: Path, exports: dict[str, tuple[list[dict[str, Any]], str]], extra: str = ""
) -> Path:
    """A copy of the example whose batches are the given exports: id -> (tasks, options)."""
    spec = project_copy(tmp_path, PLACEHOLDER)
    folder = tmp_path / "support-assistant" / "stock"
    folder.mkdir()
    lines = [extra, "  batches:\n"]
    for batch, (tasks, options) in exports.items():
        (folder / f"{batch}.json").write_text(json.dumps(tasks), encoding="utf-8")
        lines.append(
            f"    - {{id: {batch}, path: support-assistant/stock/{batch}.json, "
            f"format: label_studio_pairwise, criteria_version: 1.2.0{options}}}\n"
        )
    text = spec.read_text(encoding="utf-8").replace(PLACEHOLDER, "".join(lines))
    spec.write_text(text, encoding="utf-8")
    return spec


def expected(tasks: list[dict[str, Any]], sides: tuple[str, str]) -> dict[tuple[str, str], str]:
    """(response A id, response B id) -> choice, from the texts and the Pairwise clicks."""
    out = {}
    for task in tasks:
        pair = (BY_TEXT[flat(task["data"][sides[0]])], BY_TEXT[flat(task["data"][sides[1]])])
        selected = task["annotations"][0]["result"][0]["value"]["selected"]
        out[pair] = "A" if selected == "left" else "B"
    return out


def votes(spec: Path) -> dict[tuple[str, str], str]:
    return {
        (r["response_a"], r["response_b"]): r["choice"] for r in load_records(load_project(spec))
    }


def test_recorded_exports_read_back_as_the_clicked_votes(tmp_path: Path) -> None:
    spec = stock_spec(tmp_path, {"rlhf": (RLHF, ""), "pw": (PAIRWISE, ", " + PW_FIELDS)})
    want = expected(RLHF, ("answer1", "answer2")) | expected(PAIRWISE, ("pairText1", "pairText2"))
    assert votes(spec) == want and len(want) == len(RLHF) + len(PAIRWISE) == 18
    records = load_records(load_project(spec))
    prompts = {flat(t): p for p, t in stock_data.prompt_texts().items()}
    for record, task in zip(records[: len(RLHF)], RLHF, strict=True):
        assert record["prompt_id"] == prompts[flat(task["data"]["prompt"])]
    # without a mapping, Label Studio's numeric user id names the annotator
    assert {r["annotator"] for r in records} == {"ls-user-1"}
    gold = [r for r in records if r["gold"]]
    assert "gold-001" in {r["item_id"] for r in gold}


def test_items_are_those_rlhfspec_tasks_gives_the_same_pair(tmp_path: Path) -> None:
    spec = stock_spec(tmp_path, {"rlhf": (RLHF, "")})
    project = load_project(spec)
    for r in load_records(project):
        if not r["gold"]:
            lo, hi = sorted((r["response_a"], r["response_b"]))
            assert r["item_id"] == opaque_id(
                project.seed, "item", r["prompt_id"], lo, hi, prefix="item"
            )


def test_qc_and_aggregation_run_on_a_stock_batch(tmp_path: Path) -> None:
    extra = "  annotator_ids: {'1': ann-09}\n"
    spec = stock_spec(tmp_path, {"rlhf": (RLHF, "")}, extra)
    text = spec.read_text(encoding="utf-8").replace(
        "method: majority,", "method: majority, min_votes: 1,"
    )
    spec.write_text(text, encoding="utf-8")
    project = load_project(spec)
    records = load_records(project)
    assert {r["annotator"] for r in records} == {"ann-09"}  # mapped through annotator_ids
    report = run_qc(project)
    assert report.metrics["annotators"]["ann-09"]["gold"]["scored"] >= 1  # gold recognised
    result = aggregate(project, records)
    want = expected(RLHF, ("answer1", "answer2"))
    gold = sum(r["gold"] for r in records)
    assert len(result.pairs) == len(RLHF) - gold
    clicked = {frozenset(p): p[0] if c == "A" else p[1] for p, c in want.items()}
    for pair in result.pairs:  # the chosen response is the one clicked
        assert clicked[frozenset((pair.chosen_id, pair.rejected_id))] == pair.chosen_id


def with_data(tasks: list[dict[str, Any]], index: int, **data: Any) -> list[dict[str, Any]]:
    out = copy.deepcopy(tasks)
    out[index]["data"].update(data)
    return out


def refusal(tmp_path: Path, tasks: list[dict[str, Any]], options: str = "") -> str:
    spec = stock_spec(tmp_path, {"rlhf": (tasks, options)})
    with pytest.raises(RunError) as caught:
        load_records(load_project(spec))
    return str(caught.value)


def test_an_unmatched_answer_is_a_located_error(tmp_path: Path) -> None:
    message = refusal(tmp_path, with_data(RLHF, 2, answer2="An answer nobody wrote."))
    assert "support-assistant/stock/rlhf.json: task 3 (id 3): field 'data.answer2':" in message
    assert (
        "'An answer nobody wrote.' matches no response in support-assistant/data/responses.jsonl"
        in message
    )
    assert "import the response texts unchanged" in message


def test_an_unmatched_prompt_is_a_located_error(tmp_path: Path) -> None:
    message = refusal(tmp_path, with_data(RLHF, 1, prompt="Where is my parcel?"))
    assert "task 2 (id 2): field 'data.prompt': 'Where is my parcel?' matches no prompt" in message


def test_answers_of_another_prompt_are_an_error(tmp_path: Path) -> None:
    tasks = with_data(RLHF, 1, prompt=RLHF[2]["data"]["prompt"])
    assert "is a response to" in refusal(tmp_path, tasks)


def test_the_same_text_twice_is_ambiguous(tmp_path: Path) -> None:
    spec = stock_spec(tmp_path, {"rlhf": (RLHF, "")})
    responses = tmp_path / "support-assistant" / "data" / "responses.jsonl"
    rows = stock_data.rows(responses)
    twin = next(r for r in rows if flat(r["text"]) == flat(RLHF[3]["data"]["answer1"]))
    rows.append(dict(twin, id="r-twin", system="other-v9"))
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(RunError) as caught:
        load_records(load_project(spec))
    assert "task 4 (id 4): field 'data.answer1': the text is responses r-" in str(caught.value)
    assert "r-twin of prompt" in str(caught.value) and "ambiguous" in str(caught.value)


def test_wrong_fields_name_the_fields_the_task_has(tmp_path: Path) -> None:
    message = refusal(tmp_path, PAIRWISE)  # the RLHF template's defaults on a Pairwise export
    assert "field 'data.answer1': must hold the response a text" in message
    assert "the task's data fields: pairText1, pairText2" in message
    assert "set the batch's `fields.response_a`" in message


def test_choices_naming_the_answers_are_read(tmp_path: Path) -> None:
    tasks = copy.deepcopy(RLHF)
    for task, value in zip(tasks, ["answer2", "Answer1", "left", "tie"] * 3, strict=False):
        task["annotations"][0]["result"] = [
            {
                "from_name": "preferred",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [value]},
            }
        ]
    spec = stock_spec(tmp_path, {"rlhf": (tasks, "")})
    got = [r["choice"] for r in load_records(load_project(spec))]
    assert got == (["B", "A", "A", "tie"] * 3)[: len(tasks)]


def test_leak_check_matches_stock_prompts_by_text(tmp_path: Path) -> None:
    holdout = stock_data.prompt_texts()["usage-0360"]
    tasks = with_data(RLHF, 0, prompt=holdout)
    spec = stock_spec(tmp_path, {"rlhf": (tasks, ""), "pw": (PAIRWISE, ", " + PW_FIELDS)})
    report = check_prompts(load_project(spec))
    assert [f.code for f in report.errors] == ["PR008"]
    assert report.metrics["leaks"]["batches"] == {"rlhf": ["usage-0360"]}
    assert "PR012" not in [f.code for f in report.findings]  # every task matched a prompt


def test_a_multi_turn_prompt_matches_by_messages_or_transcript(tmp_path: Path) -> None:
    """A prompt row with `messages` only (no `text`): a task may hold the conversation as
    `{role, content}` messages (Label Studio's Chat data) or as its transcript."""
    tasks = copy.deepcopy(RLHF)
    spec = stock_spec(tmp_path, {"rlhf": (tasks, "")})
    source = tmp_path / "support-assistant" / "data" / "prompts" / "adversarial.jsonl"
    rows = stock_data.rows(source)
    turns = [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi, how can I help?"},
    ]
    for row in rows[:2]:  # the prompts of the fixture's first two tasks
        row["messages"] = [*turns, {"role": "user", "content": row.pop("text")}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tasks[0]["data"]["prompt"] = rows[0]["messages"]
    tasks[1]["data"]["prompt"] = (
        f"User: Hello?\nAssistant: Hi, how can I help?\nUser: {rows[1]['messages'][-1]['content']}"
    )
    (tmp_path / "support-assistant" / "stock" / "rlhf.json").write_text(json.dumps(tasks))
    records = load_records(load_project(spec))
    assert [r["prompt_id"] for r in records[:2]] == [rows[0]["id"], rows[1]["id"]]
    assert votes(spec) == expected(RLHF, ("answer1", "answer2"))


def test_a_stock_export_listed_as_our_format_says_which_format_to_use(tmp_path: Path) -> None:
    spec = stock_spec(tmp_path, {"rlhf": (RLHF, "")})
    text = spec.read_text(encoding="utf-8").replace(
        "format: label_studio_pairwise", "format: label_studio"
    )
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(RunError) as caught:
        load_records(load_project(spec))
    message = str(caught.value)
    assert "task 1 (id 1): field 'data': has none of task_id, item_id" in message
    assert "(its fields: answer1, answer2, prompt)" in message
    assert "`format: label_studio_pairwise`" in message
    assert message.count("field 'data.") == 0  # one problem per task, not one per field
