"""The annotation commands end to end on the example project: outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from rlhfspec.cli.main import main
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "support-assistant.yaml"
DATA = ROOT / "specs" / "support-assistant" / "data"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_prompts_passes_on_the_example(tmp_path: Path) -> None:
    code, out = run("prompts", str(SPEC), "-o", str(tmp_path))
    assert code == 0, out
    assert (tmp_path / "holdout.jsonl").read_text().count("\n") == 39


def test_qc_finds_the_planted_annotators(tmp_path: Path) -> None:
    code, out = run("qc", str(SPEC), "-o", str(tmp_path), "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert sorted(report["excluded_annotators"]) == ["ann-04", "ann-05", "ann-06"]
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.html"}


def test_aggregate_scores_against_truth(tmp_path: Path) -> None:
    code, out = run(
        "aggregate", str(SPEC), "-o", str(tmp_path), "--truth", str(DATA / "truth" / "pairs.jsonl")
    )
    assert code == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["excluded_annotators"] == ["ann-04", "ann-05", "ann-06"]
    assert summary["truth"]["accuracy"] > 0.9
    assert summary["pairs"] == sum(1 for _ in (tmp_path / "pairs.jsonl").open())


def test_tasks_writes_jsonl_and_label_studio(tmp_path: Path) -> None:
    code, out = run(
        "tasks",
        str(SPEC),
        "--responses",
        str(DATA / "responses.jsonl"),
        "--annotators",
        "a1,a2,a3",
        "--limit",
        "30",
        "-o",
        str(tmp_path),
    )
    assert code == 0, out
    assert (tmp_path / "tasks.jsonl").exists() and (
        tmp_path / "label_studio" / "config.xml"
    ).exists()
    code, out = run(
        "tasks",
        str(SPEC),
        "--responses",
        str(DATA / "responses.jsonl"),
        "--annotators",
        "a1",
        "-o",
        str(tmp_path / "x"),
    )
    assert code == 1 and "Traceback" not in out


def test_bad_row_refuses_the_batch_or_is_skipped(project: Path, tmp_path: Path) -> None:
    batch = project.parent / "support-assistant" / "data" / "annotations" / "2026-11-w2.jsonl"
    lines = batch.read_text().splitlines()
    row = json.loads(lines[4])
    row["choice"] = "C"
    lines[4] = json.dumps(row)
    batch.write_text("\n".join(lines) + "\n")
    code, out = run("qc", str(project), "-o", str(tmp_path / "qc"))
    assert code == 1
    assert "2026-11-w2.jsonl: line 5: field 'choice': must be one of A, B, tie" in out
    assert "--skip-bad-rows" in out and "Traceback" not in out
    code, out = run("aggregate", str(project), "-o", str(tmp_path / "agg"), "--skip-bad-rows")
    assert code == 0, out


def test_stale_criteria_version_in_a_batch(project: Path, tmp_path: Path) -> None:
    text = project.read_text().replace(
        "criteria_version: 1.2.0}\n    - {id: 2026-11-w2",
        "criteria_version: 1.1.0}\n    - {id: 2026-11-w2",
    )
    project.write_text(text)
    code, out = run("qc", str(project))
    assert code == 1 and "C005" in out and "1.1.0" in out


def test_every_json_the_commands_write_says_its_format(tmp_path: Path) -> None:
    """compile, prompts, qc, aggregate and tasks: each JSON file carries a listed `format`."""
    from tests.artifact_formats import assert_formats

    responses = str(DATA / "responses.jsonl")
    commands = {
        "compile": ["compile", str(SPEC)],
        "prompts": ["prompts", str(SPEC)],
        "qc": ["qc", str(SPEC)],
        "aggregate": ["aggregate", str(SPEC)],
        "tasks": ["tasks", str(SPEC), "--responses", responses, "--annotators", "a1,a2,a3"],
    }
    for name, args in commands.items():
        code, out = run(*args, "-o", str(tmp_path / name))
        assert code in (0, 1) and "Traceback" not in out, out
    found = assert_formats(tmp_path)
    for expected in (
        "compile/plan.json: rlhfspec.plan/1",
        "prompts/report.json: rlhfspec.prompt_report/1",
        "qc/report.json: rlhfspec.qc_report/1",
        "aggregate/summary.json: rlhfspec.aggregate-summary/1",
        "tasks/summary.json: rlhfspec.tasks_summary/1",
        "tasks/unblinding_key.json: rlhfspec.unblinding-key/2",
    ):
        assert expected in found
