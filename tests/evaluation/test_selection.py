"""Deployment-checkpoint selection and blinded human evaluation (`rlhfspec.runtime.evaluation.selection`)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.evaluation.selection import (
    DEFAULT_GUARDS,
    HUMAN_RULE,
    export_human_eval,
    import_human_eval,
    select_checkpoint,
)

GUARDS = {"max_kl": 8.0, "max_length_correlation": 0.4, "max_disqualifier_rate": 0.05}


def evaluation(
    step: int,
    reward: float,
    *,
    kl: float = 1.0,
    correlation: float | None = 0.1,
    disqualified: float = 0.0,
    win: float | None = None,
    eos_rate: float | None = 1.0,
) -> dict[str, Any]:
    """The part of an `evaluate_checkpoint` result that selection reads."""
    return {
        "label": f"step-{step}",
        "step": step,
        "overall": {
            "reward": {"mean": reward},
            "kl": {"mean": kl},
            "length_reward_correlation": correlation,
            "length_reward_correlation_undefined": correlation is None,
            "disqualifier_rate": disqualified,
            "eos_rate": eos_rate,
            "win_rate_vs_start": win,
        },
    }


def worked_example() -> list[dict[str, Any]]:
    return [
        evaluation(0, 0.10, kl=0.0),
        evaluation(4, 0.45, kl=3.0, disqualified=0.10),  # flagged responses
        evaluation(8, 0.70, kl=6.5),  # the best that passes every guard
        evaluation(12, 0.95, kl=11.2, correlation=0.62),  # best reward, but hacked
    ]


def test_best_by_reward_that_breaks_a_guard_is_passed_over() -> None:
    decision = select_checkpoint(worked_example(), maximize="reward_mean", guards=GUARDS)
    assert decision["rule"] == "reward_mean"
    assert decision["chosen"] == {"label": "step-8", "step": 8, "value": 0.70}
    assert decision["failed"] == {
        "step-4": ["max_disqualifier_rate"],
        "step-12": ["max_kl", "max_length_correlation"],
    }
    assert decision["ranking"] == ["step-8", "step-0"]
    rows = {r["label"]: r for r in decision["candidates"]}
    assert [r["step"] for r in decision["candidates"]] == [0, 4, 8, 12]
    assert rows["step-12"]["guards"]["max_kl"] == {
        "value": 11.2,
        "threshold": 8.0,
        "passed": False,
    }
    assert rows["step-8"]["passed"] and not rows["step-12"]["passed"]
    assert "highest reward_mean" in decision["reason"]


def test_all_checkpoints_failing_gives_no_candidate_and_says_why() -> None:
    evals = [evaluation(4, 0.5, kl=9.0), evaluation(8, 0.9, disqualified=0.5)]
    decision = select_checkpoint(evals, guards=GUARDS)
    assert decision["chosen"] is None
    assert "all 2 checkpoint(s) failed" in decision["reason"]
    assert "step-4 (max_kl)" in decision["reason"]
    assert "step-8 (max_disqualifier_rate)" in decision["reason"]
    assert decision["ranking"] == []


def test_human_win_rate_decides_when_present() -> None:
    human = {"step-0": 0.5, "step-4": 0.9, "step-8": {"win_rate": 0.6, "n": 40}}
    decision = select_checkpoint(
        worked_example(), guards={**GUARDS, "max_disqualifier_rate": 0.2}, human=human
    )
    assert decision["rule"] == HUMAN_RULE
    assert decision["chosen"]["label"] == "step-4"  # reward prefers step-8
    assert decision["chosen"]["value"] == 0.9
    rows = {r["label"]: r for r in decision["candidates"]}
    assert rows["step-8"]["human_n"] == 40
    assert rows["step-8"]["value"] == 0.70  # the metric is still recorded


def test_human_data_is_ignored_when_not_preferred() -> None:
    human = {"step-0": 0.9}
    decision = select_checkpoint(worked_example(), guards=GUARDS, human=human, prefer_human=False)
    assert decision["rule"] == "reward_mean"
    assert decision["chosen"]["label"] == "step-8"
    assert decision["human_present"] is True


def test_human_data_only_for_failing_checkpoints_falls_back_to_the_metric() -> None:
    decision = select_checkpoint(worked_example(), guards=GUARDS, human={"step-12": 0.99})
    assert decision["rule"] == "reward_mean"
    assert decision["chosen"]["label"] == "step-8"
    assert any("failed a guard" in note for note in decision["notes"])


def test_checkpoints_without_human_data_are_not_ranked_by_humans() -> None:
    decision = select_checkpoint(worked_example(), guards=GUARDS, human={"step-0": 0.5})
    assert decision["chosen"]["label"] == "step-0"
    assert decision["ranking"] == ["step-0"]
    assert any("step-8" in note for note in decision["notes"])


def test_ties_go_to_the_earlier_step() -> None:
    evals = [evaluation(12, 0.8), evaluation(4, 0.8), evaluation(8, 0.3)]
    decision = select_checkpoint(evals, guards=GUARDS)
    assert decision["chosen"]["label"] == "step-4"
    assert decision["ranking"] == ["step-4", "step-12", "step-8"]
    assert "earlier step wins" in decision["reason"]


def test_win_rate_metric_and_missing_values() -> None:
    evals = [
        evaluation(0, 0.1, win=None),
        evaluation(4, 0.9, win=0.55),
        evaluation(8, 0.5, win=0.7),
    ]
    decision = select_checkpoint(evals, maximize="win_rate_vs_start", guards=GUARDS)
    assert decision["chosen"]["label"] == "step-8"
    assert any("no win_rate_vs_start value" in note for note in decision["notes"])


def test_undefined_correlation_passes_and_defaults_fill_missing_guards() -> None:
    decision = select_checkpoint([evaluation(4, 0.2, correlation=None)], guards={"max_kl": 2.0})
    (row,) = decision["candidates"]
    assert row["passed"]
    assert row["guards"]["max_length_correlation"]["value"] is None
    assert decision["guards"] == {**DEFAULT_GUARDS, "max_kl": 2.0}


@pytest.mark.parametrize(
    ("changes", "guard"),
    [
        ({"kl": float("nan")}, "max_kl"),
        ({"kl": float("inf")}, "max_kl"),
        ({"kl": None}, "max_kl"),  # evaluate writes a non-finite value as null
        ({"disqualified": float("nan")}, "max_disqualifier_rate"),
        ({"eos_rate": None}, "max_no_eos_rate"),
        ({"eos_rate": 0.2}, "max_no_eos_rate"),  # 80% of the responses ran to the limit
    ],
)
def test_guards_fail_closed_on_nan_inf_and_missing_values(
    changes: dict[str, Any], guard: str
) -> None:
    decision = select_checkpoint(
        [evaluation(4, 0.9, **changes), evaluation(8, 0.2)],
        guards={**GUARDS, "max_no_eos_rate": 0.5},
    )
    assert decision["failed"] == {"step-4": [guard]}
    assert decision["chosen"]["label"] == "step-8"


def test_a_non_finite_correlation_is_not_an_undefined_one() -> None:
    row = evaluation(4, 0.9, correlation=None)
    row["overall"]["length_reward_correlation_undefined"] = False  # NaN rewards, not constant
    decision = select_checkpoint([row], guards=GUARDS)
    assert decision["failed"] == {"step-4": ["max_length_correlation"]}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(RunError, match="metric"):
        select_checkpoint([evaluation(0, 0.1)], maximize="accuracy")
    with pytest.raises(RunError, match="guard"):
        select_checkpoint([evaluation(0, 0.1)], guards={"max_words": 3})
    with pytest.raises(RunError, match="unique"):
        select_checkpoint([evaluation(0, 0.1), evaluation(0, 0.2)])


# ---------------------------------------------------------------------------------------------
# Human evaluation


PROMPTS = [f"Customer question number {i}?" for i in range(30)]
BASELINE = [(p, f"start answer {i}") for i, p in enumerate(PROMPTS)]
CHECKPOINTS = {
    "ckpt-step-0008": [(p, f"eight says {i}") for i, p in enumerate(PROMPTS)],
    "ckpt-step-0016": [(p, f"sixteen says {i}") for i, p in enumerate(PROMPTS)],
}


def export(tmp_path: Path, **overrides: Any) -> Path:
    kwargs: dict[str, Any] = {"seed": 3, "per_checkpoint": 20, "criteria_version": "1.2.0"}
    kwargs.update(overrides)
    export_human_eval(CHECKPOINTS, BASELINE, tmp_path, **kwargs)
    return tmp_path / "human_eval"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_is_blinded_and_order_randomised(tmp_path: Path) -> None:
    folder = export(tmp_path)
    tasks = read_jsonl(folder / "tasks.jsonl")
    key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    assert len(tasks) == 40
    text = (folder / "tasks.jsonl").read_text(encoding="utf-8")
    text += (folder / "label_studio.json").read_text(encoding="utf-8")
    for label in CHECKPOINTS:
        assert label not in text and "step" not in text
    assert set(tasks[0]) == {"task_id", "prompt", "text_a", "text_b", "criteria_version"}
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    assert set(key["tasks"]) == {t["task_id"] for t in tasks}
    for label in CHECKPOINTS:
        sides = [v["checkpoint_side"] for v in key["tasks"].values() if v["label"] == label]
        assert sorted(sides) == ["A"] * 10 + ["B"] * 10
    # the key is right about which side is which
    for task in tasks:
        entry = key["tasks"][task["task_id"]]
        mine = task["text_a"] if entry["checkpoint_side"] == "A" else task["text_b"]
        assert mine == CHECKPOINTS[entry["label"]][entry["prompt_index"]][1]
    # checkpoints are interleaved, not in blocks
    labels = [key["tasks"][t["task_id"]]["label"] for t in tasks]
    assert labels != sorted(labels)


def test_export_writes_a_label_studio_import_and_config(tmp_path: Path) -> None:
    folder = export(tmp_path)
    tasks = read_jsonl(folder / "tasks.jsonl")
    imported = json.loads((folder / "label_studio.json").read_text(encoding="utf-8"))
    assert imported == [{"data": t} for t in tasks]
    config = ET.fromstring((folder / "config.xml").read_text(encoding="utf-8"))
    assert [c.get("value") for c in config.iter("Choice")] == ["A", "B", "tie"]
    assert {t.get("value") for t in config.iter("Text")} == {"$prompt", "$text_a", "$text_b"}


def test_export_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = export(tmp_path / "one")
    second = export(tmp_path / "two")
    third = export(tmp_path / "three", seed=4)
    for name in ("tasks.jsonl", "key.json", "label_studio.json", "config.xml"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "tasks.jsonl").read_bytes() != (third / "tasks.jsonl").read_bytes()


def test_round_trip_choosing_the_checkpoint_every_time(tmp_path: Path) -> None:
    folder = export(tmp_path)
    key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    judgements = tmp_path / "judgements.jsonl"
    rows = [
        {"task_id": task_id, "choice": entry["checkpoint_side"]}
        for task_id, entry in key["tasks"].items()
    ]
    judgements.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = import_human_eval(judgements, folder / "key.json")
    assert set(result) == set(CHECKPOINTS)
    for label in CHECKPOINTS:
        assert result[label]["win_rate"] == 1.0
        assert result[label]["n"] == 20


def test_round_trip_through_a_label_studio_export(tmp_path: Path) -> None:
    """Two annotators per task; one always picks the start, the other calls every pair a tie."""
    folder = export(tmp_path)
    key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    imported = json.loads((folder / "label_studio.json").read_text(encoding="utf-8"))
    exported = []
    for number, task in enumerate(imported, start=1):
        side = key["tasks"][task["data"]["task_id"]]["checkpoint_side"]
        start_side = "B" if side == "A" else "A"
        exported.append(
            {
                "id": number,
                "data": task["data"],
                "annotations": [
                    {"result": [{"type": "choices", "value": {"choices": [start_side]}}]},
                    {"result": [{"type": "choices", "value": {"choices": ["tie"]}}]},
                    {"was_cancelled": True, "result": []},
                ],
            }
        )
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    result = import_human_eval(path, folder / "key.json")
    for label in CHECKPOINTS:
        assert result[label] == {
            "win_rate": 0.25,
            "n": 40,
            "wins": 0,
            "ties": 20,
            "losses": 20,
            "identical": 0,
        }


def test_identical_pairs_are_not_shown_and_count_as_ties(tmp_path: Path) -> None:
    same = {"unchanged": list(BASELINE)}
    export_human_eval(same, BASELINE, tmp_path, seed=1, per_checkpoint=10, criteria_version="1")
    folder = tmp_path / "human_eval"
    assert (folder / "tasks.jsonl").read_text(encoding="utf-8") == ""
    judgements = tmp_path / "none.jsonl"
    judgements.write_text("", encoding="utf-8")
    result = import_human_eval(judgements, folder / "key.json")
    assert result == {
        "unchanged": {
            "win_rate": 0.5,
            "n": 10,
            "wins": 0,
            "ties": 0,
            "losses": 0,
            "identical": 10,
        }
    }


def test_bad_judgements_are_listed(tmp_path: Path) -> None:
    folder = export(tmp_path)
    task_id = next(iter(json.loads((folder / "key.json").read_text(encoding="utf-8"))["tasks"]))
    judgements = tmp_path / "bad.jsonl"
    judgements.write_text(
        json.dumps({"task_id": "he-nope", "choice": "A"})
        + "\n"
        + json.dumps({"task_id": task_id, "choice": "C"})
        + "\nnot json\n",
        encoding="utf-8",
    )
    with pytest.raises(RunError) as caught:
        import_human_eval(judgements, folder / "key.json")
    message = caught.value.message
    assert "3 problem(s)" in message
    assert "unknown task_id 'he-nope'" in message and "got 'C'" in message
    assert "line 3: not valid JSON" in message


def test_export_refuses_misaligned_responses(tmp_path: Path) -> None:
    shifted = {"x": [(f"other {p}", r) for p, r in BASELINE]}
    with pytest.raises(RunError, match="differs from the baseline"):
        export_human_eval(
            shifted, BASELINE, tmp_path, seed=0, per_checkpoint=5, criteria_version="1"
        )
    with pytest.raises(RunError, match="responses"):
        export_human_eval(
            {"x": BASELINE[:3]}, BASELINE, tmp_path, seed=0, per_checkpoint=5, criteria_version="1"
        )
