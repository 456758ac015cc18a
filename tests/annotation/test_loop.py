"""Round the loop under blinding: tasks -> simulated annotators answering the generated tasks
-> qc -> aggregate -> reward-model pairs.

The simulated annotators see only what `tasks` gives them (annotators/<id>.jsonl: opaque
ids and texts) and answer by the example's ground-truth rule (generate.py's `compare`),
looked up by the texts they were shown; one of them always picks the first-shown response.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.aggregate import aggregate, load_records, write_pairs
from rlhfspec.runtime.annotation.qc import run_qc
from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.project import load_project
from tests.conftest import ROOT

EXAMPLE = ROOT / "specs" / "support-assistant"
SPEC = ROOT / "specs" / "support-assistant.yaml"
DIMENSIONS = ("accuracy", "helpfulness", "tone", "conciseness")
ANNOTATORS = ["ann-01", "ann-02", "ann-03", "ann-04"]
PLACEHOLDER = (  # the spec needs one batch to be valid before the loop's own exists
    "  batches:\n    - {id: 2026-11-w1, path: support-assistant/data/annotations/2026-11-w1.jsonl, "
    "criteria_version: 1.2.0}\n"
)


def truth_choice(x: dict[str, Any], y: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """generate.py's ground-truth rule: disqualifiers, dimensions in rank order, then shorter."""
    dx, dy = x["disqualifiers"], y["disqualifiers"]
    dims = {
        d: "A"
        if x["scores"][d] > y["scores"][d]
        else "B"
        if y["scores"][d] > x["scores"][d]
        else "tie"
        for d in DIMENSIONS
    }
    if bool(dx) != bool(dy):
        return ("B" if dx else "A"), dims
    for d in DIMENSIONS:
        if dims[d] != "tie":
            return dims[d], dims
    if x["word_count"] != y["word_count"]:
        return ("A" if x["word_count"] < y["word_count"] else "B"), dims
    return "tie", dims


def project_copy(root: Path, batches: str, *, calibration: bool = False) -> Path:
    """The example project under `root` with `batches`; without `calibration` the spec's
    calibration block goes (live votes under 1.3.0 would otherwise need calibration
    answers: tests/annotation/test_calibration.py)."""
    shutil.copytree(EXAMPLE, root / "support-assistant")
    shutil.copy(SPEC.with_name("support-assistant.lock.json"), root)
    text = SPEC.read_text(encoding="utf-8")
    start, end = text.index("  batches:\n"), text.index("\nsft:")
    text = text[:start] + batches + text[end:]
    if not calibration:
        start, end = text.index("  calibration:\n"), text.index("    pass_mark: 0.8\n")
        text = text[:start] + text[end + len("    pass_mark: 0.8\n") :]
    assert "dimension_judgements: {mode: optional}" in text  # the example asks them
    spec = root / "support-assistant.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec


def answer(task_file: Path, out: list[dict[str, Any]], name: str) -> None:
    """One simulated annotator answering their own task file, by the texts shown."""
    truth = {
        row["response_id"]: row
        for row in map(
            json.loads, (EXAMPLE / "data" / "truth" / "responses.jsonl").read_text().splitlines()
        )
    }
    by_text = {
        row["text"]: truth[row["id"]]
        for row in map(json.loads, (EXAMPLE / "data" / "responses.jsonl").read_text().splitlines())
    }
    clock = datetime(2026, 11, 2, 9, 0, 0)
    rng = random.Random(name)
    for task in map(json.loads, task_file.read_text(encoding="utf-8").splitlines()):
        choice, dims = truth_choice(by_text[task["text_a"]], by_text[task["text_b"]])
        if name == "ann-04":  # position-biased: always the first-shown response
            choice = "A"
        start = clock
        clock += timedelta(seconds=rng.randint(60, 150))
        out.append(
            {
                "task_id": task["task_id"],
                "item_id": task["item_id"],
                "response_a": task["response_a"],
                "response_b": task["response_b"],
                "choice": choice,
                "dimension_choices": dims,
                "annotator": name,
                "session": task["session"],
                "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "submitted_at": clock.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "justification": None,
                "criteria_version": task["criteria_version"],
                "batch": "loop-1",
            }
        )
        clock += timedelta(seconds=5)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loop")
    batch = (
        "  batches:\n    - {id: loop-1, path: support-assistant/loop/answers.jsonl, "
        "criteria_version: 1.3.0, key: support-assistant/loop/unblinding_key.json}\n"
    )
    spec = project_copy(root, PLACEHOLDER)
    out = root / "support-assistant" / "loop"
    generate_tasks(
        load_project(spec),
        EXAMPLE / "data" / "responses.jsonl",
        out,
        annotators=ANNOTATORS,
        limit=150,
        batch="loop-1",
    )
    records: list[dict[str, Any]] = []
    for name in ANNOTATORS:
        answer(out / "annotators" / f"{name}.jsonl", records, name)
    (out / "answers.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    text = spec.read_text(encoding="utf-8").replace(PLACEHOLDER, batch)
    spec.write_text(text, encoding="utf-8")
    return spec, out


def test_the_loop_closes_under_blinding(loop: tuple[Path, Path], tmp_path: Path) -> None:
    spec, out = loop
    tasks = [json.loads(x) for x in (out / "tasks.jsonl").read_text().splitlines()]
    assert all(t["response_a"].startswith("resp-") for t in tasks)  # blind: true
    project = load_project(spec)
    report = run_qc(project)
    annotators = report.metrics["annotators"]
    # gold recognised through the key: the truthful annotators get every gold item right
    assert all(annotators[a]["gold"]["scored"] > 0 for a in ANNOTATORS)
    assert all(annotators[a]["gold"]["accuracy"] == 1.0 for a in ANNOTATORS[:3])
    assert report.excluded_annotators == ["ann-04"]
    assert {f.code for f in report.findings if f.annotator == "ann-04"} >= {"Q004"}
    dims = report.metrics["dimensions"]
    assert list(dims) == list(DIMENSIONS) and all(d["agreement_kept"] == 1.0 for d in dims.values())

    result = aggregate(project, load_records(project), failed_annotators=report.excluded_annotators)
    assert result.pairs and result.counts.get("items_with_unknown_response", 0) == 0
    truth_ids = {  # every pair's chosen response is the ground truth's preference
        row["response_id"]: row
        for row in map(
            json.loads, (EXAMPLE / "data" / "truth" / "responses.jsonl").read_text().splitlines()
        )
    }
    for pair in result.pairs:
        assert truth_choice(truth_ids[pair.chosen_id], truth_ids[pair.rejected_id])[0] == "A"
        assert set(pair.dimensions) == set(DIMENSIONS)
    write_pairs(result, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.pairs) and set(rows[0]) == {"prompt", "chosen", "rejected"}


def test_without_the_key_blinded_votes_are_refused(loop: tuple[Path, Path]) -> None:
    spec, _ = loop
    text = spec.read_text(encoding="utf-8").replace(
        ", key: support-assistant/loop/unblinding_key.json", ""
    )
    spec.with_name("nokey.yaml").write_text(text, encoding="utf-8")
    shutil.copy(spec.with_name("support-assistant.lock.json"), spec.with_name("nokey.lock.json"))
    project = load_project(spec.with_name("nokey.yaml"))
    with pytest.raises(RunError, match="prompt_id"):
        run_qc(project)


def test_tasks_refuse_unlocked_criteria(tmp_path: Path) -> None:
    spec = project_copy(tmp_path, PLACEHOLDER)
    spec.with_name("support-assistant.lock.json").unlink()
    with pytest.raises(RunError, match="not locked"):
        generate_tasks(
            load_project(spec),
            EXAMPLE / "data" / "responses.jsonl",
            tmp_path / "t",
            annotators=ANNOTATORS,
        )
    # a new version, changed but never locked: validate only warns (C007); tasks refuse
    text = spec.read_text(encoding="utf-8").replace("Says what is needed and stops", "Says less")
    spec.write_text(text.replace("version: 1.3.0\n", "version: 1.4.0\n", 1), encoding="utf-8")
    shutil.copy(SPEC.with_name("support-assistant.lock.json"), tmp_path)
    with pytest.raises(RunError, match="criteria version 1.4.0 is not in the lock file"):
        generate_tasks(
            load_project(spec),
            EXAMPLE / "data" / "responses.jsonl",
            tmp_path / "t",
            annotators=ANNOTATORS,
        )


def test_requeue_and_one_import_per_annotator(loop: tuple[Path, Path], tmp_path: Path) -> None:
    spec, _ = loop
    project = load_project(spec)
    project.spec["annotation"]["aggregation"]["min_votes"] = 3
    result = aggregate(project, load_records(project), failed_annotators=["ann-04"])
    assert result.held_back and all(h["reason"] == "too_few_votes" for h in result.held_back)
    write_pairs(result, tmp_path / "prefs")
    summary = generate_tasks(
        project,
        EXAMPLE / "data" / "responses.jsonl",
        tmp_path / "requeue",
        annotators=["ann-01", "ann-02", "ann-03", "ann-05", "ann-06"],
        batch="loop-2",
        requeue=tmp_path / "prefs" / "requeue.jsonl",
        per_annotator=True,
    )
    voted = {h["item_id"]: set(h["annotators"]) for h in result.held_back}
    tasks = [json.loads(x) for x in (tmp_path / "requeue" / "tasks.jsonl").read_text().splitlines()]
    again = [t for t in tasks if not t["gold"]]
    assert {t["item_id"] for t in again} == set(voted)
    assert all(t["annotator"] not in voted[t["item_id"]] for t in again)
    assert summary.items == len(voted)
    for name in ("ann-01", "ann-05"):
        mine = json.loads((tmp_path / "requeue" / "label_studio" / name / "tasks.json").read_text())
        assert mine and {t["meta"]["annotator"] for t in mine} == {name}
