"""`rlhfspec prompts`: mix, strata, privacy, production holdout and leak checks."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.project import Project, load_project
from rlhfspec.runtime.prompts.check import (
    PROMPT_CODES,
    check_prompts,
    holdout_count,
    production_holdout,
    write_prompt_report,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "support-assistant.yaml"
HOLDOUT = [f"usage-{n:04d}" for n in range(352, 391)]


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(SPEC)


def copy_example(tmp_path: Path, *, replace: tuple[str, str] | None = None) -> Path:
    """A private copy of the example spec, its lock file and data, optionally with one text edit."""
    shutil.copytree(
        ROOT / "specs" / "support-assistant" / "data", tmp_path / "support-assistant" / "data"
    )
    shutil.copy(
        ROOT / "specs" / "support-assistant" / "calibration.jsonl",
        tmp_path / "support-assistant" / "calibration.jsonl",
    )
    shutil.copy(
        ROOT / "specs" / "support-assistant.lock.json", tmp_path / "support-assistant.lock.json"
    )
    text = SPEC.read_text(encoding="utf-8")
    if replace is not None:
        assert replace[0] in text, replace[0]
        text = text.replace(replace[0], replace[1])
    spec = tmp_path / "support-assistant.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec


def codes(report: object) -> list[str]:
    return [f.code for f in report.findings]  # type: ignore[attr-defined]


def test_example_passes_with_expected_numbers(project: Project) -> None:
    report = check_prompts(project)
    assert report.findings == []
    assert report.ok and report.exit_code() == 0
    m = report.metrics
    assert (m["total"], m["available"]) == (600, 561)
    assert {k: v["available"] for k, v in m["kinds"].items()} == {
        "usage_logs": 351,
        "synthetic": 130,
        "adversarial": 80,
    }
    assert m["kinds"]["usage_logs"]["holdout"] == 39
    assert abs(sum(v["share"] for v in m["kinds"].values()) - 1) < 1e-5
    assert all(b["count"] >= 5 for b in m["strata"]["length_bins"])
    assert set(m["strata"]["fields"]["topic"]) == {
        "account",
        "billing",
        "returns",
        "shipping",
        "technical",
    }
    assert m["leaks"] == {"batches": {}, "gold": [], "sft": []}
    assert "passed: 0 error(s), 0 warning(s)" in report.format_text()


def test_holdout_is_the_last_rows_of_the_usage_logs(project: Project) -> None:
    rows = production_holdout(project)
    assert [r["id"] for r in rows] == HOLDOUT
    assert check_prompts(project).metrics["holdout"]["ids"] == HOLDOUT
    assert rows[0]["text"]  # the rows as in the file, not just ids


@pytest.mark.parametrize(
    ("n", "share", "expected"),
    [
        (390, 0.1, 39),
        (10, 0.1, 1),
        (9, 0.1, 1),
        (0, 0.1, 0),
        (7, 0.5, 4),
        (100, 0.0, 0),
        (3, 0.15, 1),
    ],
)
def test_holdout_count(n: int, share: float, expected: int) -> None:
    assert holdout_count(n, share) == expected


def test_mix_out_of_range_is_an_error(tmp_path: Path) -> None:
    spec = copy_example(
        tmp_path,
        replace=(
            "usage_logs: [0.55, 0.70]\n    synthetic: [0.18, 0.30]",
            "usage_logs: [0.70, 0.80]\n    synthetic: [0.10, 0.20]",
        ),
    )
    report = check_prompts(load_project(spec))
    assert codes(report) == ["PR001", "PR001", "PR002", "PR002"]
    assert "usage_logs prompts are 0.626" in report.findings[0].message
    assert report.exit_code() == 1


def test_usage_logs_without_privacy_review_are_refused(tmp_path: Path) -> None:
    spec = copy_example(
        tmp_path,
        replace=(
            '      privacy_review: {approved: true, by: privacy@example.com, "on": "2026-10-28", reference: PRIV-2231}\n',
            "",
        ),
    )
    with pytest.raises(RunError, match="P005"):
        load_project(spec)


@pytest.mark.parametrize(
    ("relative", "row", "code"),
    [
        ("annotations/2026-11-w2.jsonl", None, "PR008"),
        (
            "demonstrations.jsonl",
            {"prompt_id": "usage-0360", "prompt": "x", "response": "y"},
            "PR009",
        ),
        ("gold.jsonl", None, "PR010"),
    ],
)
def test_holdout_leak_is_an_error(
    tmp_path: Path, relative: str, row: dict | None, code: str
) -> None:
    spec = copy_example(tmp_path)
    path = tmp_path / "support-assistant" / "data" / relative
    lines = path.read_text(encoding="utf-8").splitlines()
    if row is None:  # reuse the first row with a holdout prompt id
        row = json.loads(lines[0])
        row["prompt_id"] = "usage-0360"
    path.write_text("\n".join([*lines, json.dumps(row)]) + "\n", encoding="utf-8")
    report = check_prompts(load_project(spec))
    assert [f.code for f in report.errors] == [code]
    assert "usage-0360" in report.errors[0].message
    assert report.exit_code() == 1


def test_leak_in_a_label_studio_batch(tmp_path: Path) -> None:
    spec = copy_example(
        tmp_path,
        replace=(
            "- {id: 2026-11-w4, path: support-assistant/data/annotations/2026-11-w4.jsonl, criteria_version: 1.2.0}",
            "- {id: 2026-11-w4, path: support-assistant/data/annotations/ls.json, criteria_version: 1.2.0, "
            "format: label_studio}",
        ),
    )
    export = [
        {"id": 1, "data": {"item_id": "i1", "prompt_id": "usage-0001"}, "annotations": []},
        {"id": 2, "data": {"item_id": "i2", "prompt_id": "usage-0390"}, "annotations": []},
    ]
    (tmp_path / "support-assistant" / "data" / "annotations" / "ls.json").write_text(
        json.dumps(export)
    )
    report = check_prompts(load_project(spec))
    assert [f.code for f in report.errors] == ["PR008"]
    assert report.metrics["leaks"]["batches"] == {"2026-11-w4": ["usage-0390"]}


def test_rare_field_value_and_empty_length_bin_are_findings(tmp_path: Path) -> None:
    spec = copy_example(
        tmp_path,
        replace=("length_words: [0, 15, 40, 100000]", "length_words: [0, 15, 40, 41, 100000]"),
    )
    path = tmp_path / "support-assistant" / "data" / "prompts" / "adversarial.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows[:2]:
        row["topic"] = "warranty"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = check_prompts(load_project(spec))
    assert codes(report) == ["PR003", "PR004"]
    assert "[40, 41)" in report.findings[0].message
    assert "topic = 'warranty' holds 2 prompt(s)" in report.findings[1].message
    assert report.metrics["strata"]["fields"]["topic"]["warranty"] == 2


def test_bad_prompt_rows_name_file_line_and_field(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    path = tmp_path / "support-assistant" / "data" / "prompts" / "synthetic.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    del rows[2]["complexity"]
    rows[4]["id"] = "usage-0001"  # duplicate across sources
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    project = load_project(spec)
    with pytest.raises(RunError) as info:
        check_prompts(project)
    message = info.value.message
    assert "synthetic.jsonl: line 3: field 'complexity': missing" in message
    assert "synthetic.jsonl: line 5: field 'id': prompt id 'usage-0001' already used at" in message
    assert "usage.jsonl: line 1" in message


def test_report_is_deterministic_and_written(project: Project, tmp_path: Path) -> None:
    first = write_prompt_report(check_prompts(project), tmp_path / "a")
    second = write_prompt_report(check_prompts(project), tmp_path / "b")
    assert [p.name for p in first] == ["report.json", "report.md", "holdout.jsonl"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    data = json.loads(first[0].read_text(encoding="utf-8"))
    assert data["ok"] is True and data["errors"] == 0
    holdout = [json.loads(line) for line in first[2].read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in holdout] == HOLDOUT
    assert "## Production holdout" in first[1].read_text(encoding="utf-8")


def test_codes_have_severities() -> None:
    assert all(
        c.startswith("PR") and info.severity in ("error", "warning")
        for c, info in PROMPT_CODES.items()
    )


def test_report_covers_privacy_and_empty_holdout_without_the_validator(project: Project) -> None:
    """A Project built in code skips validation; the report still refuses unreviewed usage logs."""
    spec = copy.deepcopy(project.spec)
    del spec["prompts"]["sources"][0]["privacy_review"]
    spec["prompts"]["production_holdout"]["share"] = 0.0
    report = check_prompts(Project(spec, project.spec_path, project.display))
    assert codes(report) == ["PR006", "PR007"]
    assert report.exit_code() == 1
    assert report.metrics["holdout"]["count"] == 0 and report.holdout == []
