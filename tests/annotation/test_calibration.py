"""Calibration end to end: `tasks` writes the calibration batch blinded like live work,
simulated annotators answer it (and their live tasks), QC scores the answers through the key
and leaves out the live votes of whoever has not qualified (Q028).

The annotators answer by the example's ground-truth rule, looked up by the texts shown
(tests/annotation/test_loop.py); ann-04 always picks the first-shown response, and ann-03
never takes the calibration set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.aggregate import aggregate, load_records
from rlhfspec.runtime.annotation.calibration import qualification, write_calibration
from rlhfspec.runtime.annotation.qc import run_qc
from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.project import load_project
from rlhfspec.runtime.report.qc_report import render_markdown
from tests.annotation.test_loop import ANNOTATORS, EXAMPLE, PLACEHOLDER, answer, project_copy

CALIBRATION = EXAMPLE / "calibration.jsonl"
TAKERS = ["ann-01", "ann-02", "ann-04"]  # ann-03 never takes it


def _answers(task_file: Path, name: str, batch: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    answer(task_file, out, name)
    for record in out:
        record["batch"] = batch
    return out


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calibration")
    spec = project_copy(root, PLACEHOLDER, calibration=True)
    out = root / "support-assistant" / "loop"
    project = load_project(spec)
    generate_tasks(
        project,
        EXAMPLE / "data" / "responses.jsonl",
        out,
        annotators=ANNOTATORS,
        limit=150,
        batch="loop-1",
    )
    summary = write_calibration(project, out, annotators=ANNOTATORS)
    assert summary is not None and summary.data["batch"] == "calibration-1.3.0"
    live, cal = [], []
    for name in ANNOTATORS:
        live += _answers(out / "annotators" / f"{name}.jsonl", name, "loop-1")
        if name in TAKERS:
            cal += _answers(out / "calibration" / "annotators" / f"{name}.jsonl", name, "cal-1")
    _write(out / "answers.jsonl", live)
    _write(out / "calibration-answers.jsonl", cal)
    batches = (
        "  batches:\n    - {id: loop-1, path: support-assistant/loop/answers.jsonl, "
        "criteria_version: 1.3.0, key: support-assistant/loop/unblinding_key.json}\n"
    )
    text = spec.read_text(encoding="utf-8").replace(PLACEHOLDER, batches)
    text = text.replace(
        "    pass_mark: 0.8\n",
        "    pass_mark: 0.8\n    batches:\n      - {id: cal-1, "
        "path: support-assistant/loop/calibration-answers.jsonl, criteria_version: 1.3.0, "
        "key: support-assistant/loop/calibration/unblinding_key.json}\n",
    )
    spec.write_text(text, encoding="utf-8")
    return spec, out


def test_calibration_tasks_are_blinded_and_complete(calibrated: tuple[Path, Path]) -> None:
    _, out = calibrated
    items = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    secret = {i["item_id"] for i in items} | {i["prompt_id"] for i in items}
    secret |= {i[k] for i in items for k in ("response_a", "response_b")}
    orders = []
    for name in ANNOTATORS:
        view = (out / "calibration" / "annotators" / f"{name}.jsonl").read_text()
        rows = [json.loads(line) for line in view.splitlines()]
        assert len(rows) == len(items)  # every annotator answers every item
        assert not any(s in view for s in secret) and '"gold"' not in view
        assert all(r["response_a"].startswith("resp-") for r in rows)
        orders.append([r["text_a"] for r in rows])
    assert len({tuple(o) for o in orders}) == len(ANNOTATORS)  # own order each
    key = json.loads((out / "calibration" / "unblinding_key.json").read_text())
    assert {t["item_id"] for t in key["tasks"].values()} == {i["item_id"] for i in items}
    assert all(t["gold"] for t in key["tasks"].values())


def test_qualification_scores_answers_against_the_gold(calibrated: tuple[Path, Path]) -> None:
    spec, _ = calibrated
    result = qualification(load_project(spec))
    assert result is not None and result["items"] == 12 and result["pass_mark"] == 0.8
    annotators = result["annotators"]
    assert sorted(annotators) == sorted(TAKERS)
    for name in ("ann-01", "ann-02"):  # the truthful annotators agree with every gold answer
        assert annotators[name]["correct"] == 12 and annotators[name]["passed"]
    biased = annotators["ann-04"]  # always the first-shown response
    assert biased["answered"] == 12 and not biased["passed"]
    assert (
        biased["agreement"] == pytest.approx(biased["correct"] / 12, abs=1e-4)
        and biased["correct"] < 10
    )


def test_qc_leaves_out_live_votes_of_the_unqualified(calibrated: tuple[Path, Path]) -> None:
    spec, _ = calibrated
    project = load_project(spec)
    report = run_qc(project)
    q028 = {f.annotator: f for f in report.findings if f.code == "Q028"}
    assert set(q028) == {"ann-03", "ann-04"}
    assert "never answered the calibration set" in q028["ann-03"].message
    assert "pass mark 0.8" in q028["ann-04"].message
    assert set(report.excluded_annotators) == {"ann-03", "ann-04"}
    assert report.metrics["qualification"]["annotators"]["ann-01"]["passed"]
    markdown = render_markdown(report)
    assert "## Calibration" in markdown and "| ann-04 | 12 of 12 |" in markdown
    result = aggregate(project, load_records(project), failed_annotators=report.excluded_annotators)
    assert result.pairs
    assert not {v for p in result.pairs for v in p.annotators} & {"ann-03", "ann-04"}


def test_answers_that_match_no_calibration_item_are_refused(
    calibrated: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, out = calibrated
    bad = tmp_path / "support-assistant"
    # the live tasks' key instead of the calibration key: the items are not calibration items
    text = spec.read_text(encoding="utf-8").replace(
        "support-assistant/loop/calibration/unblinding_key.json",
        "support-assistant/loop/unblinding_key.json",
    )
    assert text != spec.read_text(encoding="utf-8")
    other = spec.with_name("wrongkey.yaml")
    other.write_text(text, encoding="utf-8")
    other.with_name("wrongkey.lock.json").write_bytes(
        spec.with_name("support-assistant.lock.json").read_bytes()
    )
    with pytest.raises(RunError, match="calibration"):
        qualification(load_project(other))
    assert not bad.exists()


def test_example_calibration_set_is_right_and_apart_from_gold_and_live_items() -> None:
    from tests.annotation.test_loop import truth_choice

    truth = {
        row["response_id"]: row
        for row in map(
            json.loads, (EXAMPLE / "data/truth/responses.jsonl").read_text().splitlines()
        )
    }
    used = {
        frozenset((row["response_a"], row["response_b"]))
        for row in map(json.loads, (EXAMPLE / "data/truth/pairs.jsonl").read_text().splitlines())
    }
    items = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    assert len(items) == 12 and {i["criteria_version"] for i in items} == {"1.3.0"}
    for item in items:
        a, b = truth[item["response_a"]], truth[item["response_b"]]
        assert truth_choice(a, b)[0] == item["preferred"], item["item_id"]
        assert frozenset((item["response_a"], item["response_b"])) not in used
        assert item["rationale"].strip()


def test_calibration_pairs_are_never_drawn_as_live_items(tmp_path: Path) -> None:
    spec = project_copy(tmp_path, PLACEHOLDER, calibration=True)
    out = tmp_path / "tasks"
    generate_tasks(
        load_project(spec), EXAMPLE / "data" / "responses.jsonl", out, annotators=ANNOTATORS
    )
    key = json.loads((out / "unblinding_key.json").read_text())
    drawn = {frozenset((t["response_a"], t["response_b"])) for t in key["tasks"].values()}
    items = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    calibration = {frozenset((i["response_a"], i["response_b"])) for i in items}
    assert drawn and not drawn & calibration
    # without the calibration block the same seed draws some of those pairs
    plain = project_copy(tmp_path / "plain", PLACEHOLDER)
    generate_tasks(
        load_project(plain), EXAMPLE / "data" / "responses.jsonl", tmp_path / "t2",
        annotators=ANNOTATORS,
    )  # fmt: skip
    key = json.loads((tmp_path / "t2" / "unblinding_key.json").read_text())
    assert {
        frozenset((t["response_a"], t["response_b"])) for t in key["tasks"].values()
    } & calibration
