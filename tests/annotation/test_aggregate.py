"""Aggregation: majority vote, tie-breaking, exclusions and provenance, on hand-made votes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.runtime.annotation.aggregate import (
    aggregate,
    compare_with_truth,
    load_records,
    write_pairs,
)
from rlhfspec.runtime.project import Project, load_project
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "support-assistant.yaml"
TRUTH = ROOT / "specs" / "support-assistant" / "data" / "truth" / "pairs.jsonl"
# two responses to usage-0001 in the example data: r-000001 (lo) and r-000002 (hi)
LO, HI, PROMPT = "r-000001", "r-000002", "usage-0001"


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(SPEC)


def with_settings(project: Project, **aggregation: Any) -> Project:
    spec = copy.deepcopy(project.spec)
    spec["annotation"]["aggregation"].update(aggregation)
    return Project(spec, project.spec_path, project.display)


def vote(
    annotator: str,
    picked: str | None,
    *,
    lo_first: bool = True,
    item: str = "item-x",
    dims: dict[str, str] | None = None,
    gold: bool = False,
    prompt: str = PROMPT,
) -> dict[str, Any]:
    a, b = (LO, HI) if lo_first else (HI, LO)
    choice = "tie" if picked is None else ("A" if picked == a else "B")
    record = {
        "item_id": item,
        "prompt_id": prompt,
        "response_a": a,
        "response_b": b,
        "choice": choice,
        "annotator": annotator,
        "session": f"{annotator}-s1",
        "started_at": "2026-11-02T09:00:00Z",
        "submitted_at": "2026-11-02T09:01:00Z",
        "justification": None,
        "criteria_version": "1.2.0",
        "batch": "b1",
        "gold": gold,
    }
    if dims is not None:
        # dims are given in canonical terms (lo/hi/tie) and converted to the shown order
        shown = {"lo": "A" if lo_first else "B", "hi": "B" if lo_first else "A", "tie": "tie"}
        record["dimension_choices"] = {k: shown[v] for k, v in dims.items()}
    return record


def test_majority_regardless_of_shown_order(project: Project) -> None:
    records = [vote("a1", HI, lo_first=True), vote("a2", HI, lo_first=False), vote("a3", LO)]
    result = aggregate(project, records)
    assert len(result.pairs) == 1
    pair = result.pairs[0]
    assert (pair.chosen_id, pair.rejected_id) == (HI, LO)
    assert pair.votes == {"chosen": 2, "rejected": 1, "tie": 0}
    assert pair.agreement == pytest.approx(2 / 3)
    assert pair.decided_by == "majority" and pair.annotators == ["a1", "a2", "a3"]


def test_split_votes_dropped_or_broken_by_rank(project: Project) -> None:
    dims_hi_accuracy = {"accuracy": "hi", "helpfulness": "lo", "tone": "tie", "conciseness": "lo"}
    records = [
        vote("a1", HI, dims=dims_hi_accuracy),
        vote("a2", LO, dims=dims_hi_accuracy),
        vote("a3", None, dims=dims_hi_accuracy),
    ]
    dropped = aggregate(with_settings(project, drop_split_votes=True), records)
    assert dropped.pairs == [] and dropped.counts["split_votes"] == 1
    kept = aggregate(with_settings(project, drop_split_votes=False), records)
    assert kept.pairs[0].chosen_id == HI and kept.pairs[0].decided_by == "dimension:accuracy"


def test_split_without_dimensions_falls_back_to_shorter(project: Project) -> None:
    records = [vote("a1", HI), vote("a2", LO)]
    result = aggregate(with_settings(project, drop_split_votes=False), records)
    texts = {
        r["id"]: r["text"]
        for r in map(
            json.loads,
            (ROOT / "specs/support-assistant/data/responses.jsonl").read_text().splitlines()[:2],
        )
    }
    shorter = min((LO, HI), key=lambda r: len(texts[r].split()))
    assert result.pairs[0].chosen_id == shorter and result.pairs[0].decided_by == "shorter"


def test_tie_majority_is_not_a_pair(project: Project) -> None:
    result = aggregate(project, [vote("a1", None), vote("a2", None), vote("a3", HI)])
    assert result.pairs == [] and result.counts["ties"] == 1


def test_exclusions_gold_and_holdout(project: Project) -> None:
    records = [
        vote("good1", HI),
        vote("good2", HI),
        vote("bad", LO),
        vote("bad2", LO),
        vote("good1", HI, item="gold-1", gold=True),
        vote("good1", HI, item="held", prompt="usage-0390"),
    ]
    result = aggregate(
        project, records, failed_annotators=["bad", "bad2"], holdout_prompts=["usage-0390"]
    )
    assert [p.item_id for p in result.pairs] == ["item-x"]
    assert result.pairs[0].votes == {"chosen": 2, "rejected": 0, "tie": 0}
    assert result.counts["votes_excluded"] == 2
    assert result.counts["gold_records_skipped"] == 1
    assert result.counts["holdout_items_dropped"] == 1
    # without exclusion the 2-2 split is dropped
    kept = aggregate(with_settings(project, exclude_failed_annotators=False), records[:4])
    assert kept.pairs == [] and kept.counts["split_votes"] == 1


def test_written_pairs_are_trl_format_with_aligned_provenance(
    project: Project, tmp_path: Path
) -> None:
    one_vote = with_settings(project, min_votes=1)
    result = aggregate(one_vote, [vote("a1", HI), vote("a2", HI, item="item-y")])
    write_pairs(result, tmp_path)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    prov = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    assert [p["item_id"] for p in prov] == ["item-x", "item-y"]
    assert json.loads((tmp_path / "summary.json").read_text())["pairs"] == 2


def test_example_recovers_the_ground_truth(project: Project) -> None:
    records = load_records(project)
    everyone = aggregate(project, records)
    careful = aggregate(project, records, failed_annotators=["ann-04", "ann-05", "ann-06"])
    acc_all = compare_with_truth(everyone.pairs, TRUTH, "truth")["accuracy"]
    acc_careful = compare_with_truth(careful.pairs, TRUTH, "truth")["accuracy"]
    assert acc_all > 0.85
    assert acc_careful > acc_all


def test_min_votes_holds_items_back_for_requeue(project: Project, tmp_path: Path) -> None:
    records = [vote("a1", HI), vote("a2", HI), vote("a1", HI, item="item-y")]
    result = aggregate(project, records)  # the example's min_votes is 2
    assert [p.item_id for p in result.pairs] == ["item-x"]
    assert result.counts["held_back_min_votes"] == 1
    assert [h["item_id"] for h in result.held_back] == ["item-y"]
    assert result.held_back[0]["reason"] == "too_few_votes"
    write_pairs(result, tmp_path)
    requeue = [json.loads(x) for x in (tmp_path / "requeue.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in requeue] == ["item-y"]
    assert requeue[0]["annotators"] == ["a1"]


def test_split_items_are_exported_for_review(project: Project, tmp_path: Path) -> None:
    records = [
        vote("a1", HI),
        vote("a2", LO),
        vote("a3", HI, item="item-y"),
        vote("a4", HI, item="item-y"),
    ]
    result = aggregate(project, records)
    write_pairs(result, tmp_path)
    split = [json.loads(x) for x in (tmp_path / "split_items.jsonl").read_text().splitlines()]
    assert [s["item_id"] for s in split] == ["item-x"] and split[0]["votes"] == {
        "lo": 1,
        "hi": 1,
        "tie": 0,
    }
    requeue = [json.loads(x) for x in (tmp_path / "requeue.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in requeue] == ["split"]


def test_zero_pairs_and_unknown_responses_are_errors(project: Project) -> None:
    from rlhfspec.common.errors import RunError
    from rlhfspec.runtime.annotation.aggregate import require_pairs

    result = aggregate(project, [vote("a1", HI), vote("a2", LO)])
    with pytest.raises(RunError, match="0 preference pairs from 1 items .*1 split"):
        require_pairs(result, "spec")
    blinded = [dict(vote(a, HI), response_a="resp-0123456789ab") for a in ("a1", "a2")]
    with pytest.raises(RunError, match="blinded ids: list the batch's unblinding_key.json"):
        aggregate(project, blinded)
    with pytest.raises(RunError, match="no usable votes"):
        aggregate(project, [vote("a1", HI)], failed_annotators=["a1"])
