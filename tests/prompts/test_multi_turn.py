"""Multi-turn prompts: a prompt row's `messages`, read, validated and carried to the pairs.

Before, a prompt was one string; a conversation could only be declared out of scope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rlhfspec.cli.main import main
from rlhfspec.common.errors import RunError
from rlhfspec.common.prompt_messages import messages_problem, transcript
from rlhfspec.runtime.project import load_project
from rlhfspec.runtime.prompts.pool import load_prompt_pool
from rlhfspec.runtime.train.formatting import plain_prompt
from tests.prompts.test_prompt_check import copy_example

CONVERSATION = [
    {"role": "system", "content": "You answer for the shop."},
    {"role": "user", "content": "Where is order 48213?"},
    {"role": "assistant", "content": "It left on Friday."},
    {"role": "user", "content": "It has still not arrived, what now?"},
]


def edit_rows(spec: Path, name: str, edit: Any) -> Path:
    path = spec.parent / "support-assistant" / "data" / "prompts" / name
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_rows_are_read_with_a_transcript_as_text(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)

    def edit(rows: list[dict[str, Any]]) -> None:
        rows[0]["messages"] = CONVERSATION  # messages only
        del rows[0]["text"]
        rows[1]["messages"] = CONVERSATION[1:]  # messages and its own text

    edit_rows(spec, "synthetic.jsonl", edit)
    pool = load_prompt_pool(load_project(spec))
    first, second = [p for p in pool.prompts if p.source == "synthetic"][:2]
    assert first.messages == CONVERSATION and first.chat == CONVERSATION
    assert first.text == (
        "System: You answer for the shop.\nUser: Where is order 48213?\n"
        "Assistant: It left on Friday.\nUser: It has still not arrived, what now?"
    )
    assert second.messages == CONVERSATION[1:] and second.text == second.row["text"]
    one_turn = [p for p in pool.prompts if p.source == "synthetic"][2]
    assert one_turn.messages is None and one_turn.chat == one_turn.text
    # the plain model format renders them turn by turn
    assert plain_prompt(first.chat).endswith(
        "User: It has still not arrived, what now?\nAssistant:"
    )


BAD = [
    ([], "non-empty list"),
    ([{"role": "user"}], "'content' must be a non-empty string"),
    ([{"role": "bot", "content": "x"}], "'role' must be one of"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "last turn"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "may only come first"),
    ([{"role": "user", "content": "x", "name": "n"}], "unknown key"),
    ("hello", "non-empty list"),
]


@pytest.mark.parametrize(("messages", "problem"), BAD)
def test_bad_messages_are_a_located_error_exit_1(
    tmp_path: Path, messages: Any, problem: str
) -> None:
    spec = copy_example(tmp_path)

    def edit(rows: list[dict[str, Any]]) -> None:
        rows[2]["messages"] = messages

    edit_rows(spec, "synthetic.jsonl", edit)
    with pytest.raises(RunError, match="synthetic.jsonl: line 3: field 'messages'") as caught:
        load_prompt_pool(load_project(spec))
    assert problem in str(caught.value)
    result = CliRunner().invoke(main, ["prompts", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "synthetic.jsonl: line 3: field 'messages'" in result.output
    assert "Traceback" not in result.output


def test_a_row_with_neither_text_nor_messages_is_refused(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    edit_rows(spec, "synthetic.jsonl", lambda rows: rows[4].pop("text"))
    with pytest.raises(RunError, match="line 5: field 'text': missing"):
        load_prompt_pool(load_project(spec))


roles = st.sampled_from(["system", "user", "assistant", "tool", ""])
contents = st.one_of(st.text(max_size=8), st.integers(), st.none())
message = st.fixed_dictionaries({"role": roles, "content": contents})


@given(st.lists(message, max_size=5))
def test_messages_problem_accepts_exactly_well_formed_conversations(value: list[Any]) -> None:
    ok = (
        bool(value)
        and all(m["role"] in ("system", "user", "assistant") for m in value)
        and all(isinstance(m["content"], str) and m["content"].strip() for m in value)
        and all(m["role"] != "system" or i == 0 for i, m in enumerate(value))
        and value[-1]["role"] == "user"
    )
    assert (messages_problem(value) is None) == ok
    if ok:
        assert transcript(value).count("\n") == len(value) - 1


def test_pairs_carry_the_messages_of_a_multi_turn_prompt(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    # make every usage prompt multi-turn: some of them are annotated in the example's batches
    edit_rows(
        spec,
        "usage.jsonl",
        lambda rows: [
            r.update(messages=[*CONVERSATION[:3], {"role": "user", "content": r["text"]}])
            for r in rows
        ],
    )
    out = tmp_path / "pref"
    result = CliRunner().invoke(main, ["aggregate", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    multi = [p for p in pairs if "messages" in p]
    assert multi and len(multi) < len(pairs)  # the synthetic and adversarial ones stay one-turn
    for pair in multi:
        assert pair["messages"][:3] == CONVERSATION[:3]
        assert pair["messages"][-1]["content"] == pair["prompt"]
    provenance = (out / "provenance.jsonl").read_text()
    assert "messages" not in provenance


def test_multi_turn_prompts_declared_out_of_scope_are_flagged(tmp_path: Path) -> None:
    from rlhfspec.runtime.prompts.check import check_prompts

    spec = copy_example(tmp_path)
    edit_rows(spec, "synthetic.jsonl", lambda rows: rows[0].update(messages=CONVERSATION))
    report = check_prompts(load_project(spec))
    (finding,) = [f for f in report.findings if f.code == "PR013"]
    assert finding.severity == "warning" and "multi-turn conversations" in finding.message
    assert report.metrics["multi_turn"] == 1
    # the example's scope excludes them; admitting them silences the warning (a criteria
    # change: without the lock file, no version bump is asked for here)
    spec.with_name("support-assistant.lock.json").unlink()
    text = spec.read_text()
    text = text.replace("out_of_scope: [multi-turn conversations, ", "out_of_scope: [")
    text = text.replace(
        'in_scope: ["single-turn', 'in_scope: ["multi-turn conversations", "single-turn'
    )
    spec.write_text(text)
    assert "PR013" not in [f.code for f in check_prompts(load_project(spec)).findings]


def test_bad_messages_in_demonstrations_are_a_located_error(tmp_path: Path) -> None:
    from rlhfspec.common.prompt_messages import check_messages_file

    path = tmp_path / "demonstrations.jsonl"
    good = {"prompt": "p", "response": "r", "messages": CONVERSATION}
    bad = {"prompt": "p", "response": "r", "messages": CONVERSATION[:3]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RunError, match="demos.jsonl: line 2: field 'messages': the last turn"):
        check_messages_file(path, "demos.jsonl")
    path.write_text(json.dumps(good) + "\n")
    check_messages_file(path, "demos.jsonl")
