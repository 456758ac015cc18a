"""One case per class of issue 15, through the command line: bad input exits 1, located.

Each case is the issue's own input (or the smallest form of it). The
detailed tests of each class live beside their package: tests/compiler
(test_yaml_loader, test_plan_check, test_template_limits, test_corpus),
tests/annotation/test_reader_validation.py, tests/handoff
(test_verify_bounds, test_handoff_symlinks), tests/test_run_lock.py and
the fuzz test tests/test_fuzz.py.
"""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

from click.testing import CliRunner, Result

from rlhfspec.cli.main import main
from rlhfspec.runtime.annotation.aggregate import volume_warnings
from tests.compiler.test_plan_check import forge, outside_source
from tests.handoff.test_verify_bounds import tar_bytes
from tests.test_run_lock import one, stale_lock

BATCH = "support-assistant/data/annotations/2026-11-w1.jsonl"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def edit_spec(spec: Path, old: str, new: str) -> None:
    text = spec.read_text(encoding="utf-8")
    assert old in text
    spec.write_text(text.replace(old, new), encoding="utf-8")


def test_class1_non_finite_numbers_and_weak_thresholds(project: Path, tmp_path: Path) -> None:
    edit_spec(project, "min_accuracy: 0.8", "min_accuracy: .nan")
    result = cli("validate", str(project))
    assert result.exit_code == 1 and "error[Y008]: '.nan' is not a finite number" in result.output
    edit_spec(project, "min_accuracy: .nan", "min_accuracy: 0.8")
    edit_spec(project, "session_max_minutes: 90", "session_max_minutes: .inf")
    result = cli("compile", str(project), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1 and "Y008" in result.output  # was an OverflowError, exit 3
    edit_spec(project, "session_max_minutes: .inf", "session_max_minutes: 90")
    edit_spec(project, "target: 0.6, floor: 0.4", "target: 0.5, floor: 0.3")
    edit_spec(project, "max_length_correlation: 0.3", "max_length_correlation: 0.99")
    edit_spec(project, "[validation, adversarial, production_holdout]", "[validation]")
    result = cli("validate", str(project))
    assert result.exit_code == 0, result.output
    for code in ("A008", "R002", "E003"):
        assert f"warning[{code}]" in result.output
    assert "fewer than the 5,000" in volume_warnings(1395)[0]


def test_class2_forged_plan_is_refused(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    assert cli("compile", str(project), "-o", str(out)).exit_code == 0
    forge(out / "plan.json", outside_source)
    result = cli("run", str(out / "plan.json"), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "leaves the spec's folder" in result.output
    assert not (tmp_path / "run").exists()


def test_class3_archive_with_trailing_garbage(tmp_path: Path) -> None:
    package = tmp_path / "p.tar.gz"
    package.write_bytes(gzip.compress(tar_bytes()) + gzip.compress(b"smuggled"))
    result = cli("verify", str(package))
    assert result.exit_code == 1 and "data after the end of the archive" in result.output


def _append(project: Path, rel: str, row: dict[str, object]) -> None:
    with (project.parent / rel).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _first_row(project: Path) -> dict[str, object]:
    row: dict[str, object] = json.loads(
        (project.parent / BATCH).read_text(encoding="utf-8").splitlines()[0]
    )
    return row


def test_class4_vote_repeated_in_another_batch(project: Path, tmp_path: Path) -> None:
    row = {**_first_row(project), "batch": "2026-11-w2"}
    _append(project, BATCH.replace("w1", "w2"), row)
    result = cli("qc", str(project), "-o", str(tmp_path / "qc"))
    assert result.exit_code == 1
    assert f"already voted on item {row['item_id']} at {BATCH}: line 1" in result.output


def test_class5_string_gold_is_a_located_error(project: Path, tmp_path: Path) -> None:
    lines = (project.parent / BATCH).read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[4])
    row["gold"] = "false"
    lines[4] = json.dumps(row)
    (project.parent / BATCH).write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("qc", str(project), "-o", str(tmp_path / "qc"))
    assert result.exit_code == 1
    assert f"{BATCH}: line 5: field 'gold': must be true or false" in result.output


def test_class6_regex_and_path_failures_are_diagnostics(project: Path) -> None:
    edit_spec(project, r"detect: {regex: '\[\d+\]|§\s?\d'}", "detect: {regex: 'a{4294967295}'}")
    edit_spec(
        project,
        "path: support-assistant/data/prompts/synthetic.jsonl",
        'path: "support-assistant/a\\0b.jsonl"',
    )
    result = cli("validate", str(project))
    assert result.exit_code == 1
    assert "error[C008]" in result.output and "error[F004]" in result.output
    assert "\\x00" in result.output and "\x00" not in result.output  # escaped for the terminal


def test_class7_one_owner_for_a_dead_runs_lock(tmp_path: Path) -> None:
    for trial in range(5):
        run_dir = tmp_path / f"run{trial}"
        stale_lock(run_dir)
        start, owners, results = threading.Barrier(4), [], []  # type: ignore[var-annotated]
        threads = [
            threading.Thread(target=one, args=(run_dir, start, owners, results)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "overlap" not in results


def test_class8_markdown_terminal_and_missing_keys(project: Path, tmp_path: Path) -> None:
    usage = project.parent / "support-assistant/data/prompts/usage.jsonl"
    rows = usage.read_text(encoding="utf-8").splitlines()
    row = json.loads(rows[0])
    row["topic"] = "TOPIC <script>alert(1)</script>"
    usage.write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n", encoding="utf-8")
    cli("prompts", str(project), "-o", str(tmp_path / "prompts"))
    report = (tmp_path / "prompts" / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in report and "\\<script\\>" in report

    spec = tmp_path / "missing.yaml"
    spec.write_text("spec_version: 1\n", encoding="utf-8")
    result = cli("validate", str(spec))
    missing = [line for line in result.output.splitlines() if "error[S002]" in line]
    assert result.exit_code == 1 and len(missing) == len(set(missing)) >= 3
