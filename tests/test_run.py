"""The run directory: lineage, resume, locking, plans as input, gates (data stages only, fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.runtime.run import EXIT_BUSY, run
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "support-assistant.yaml"


def quiet(_: str) -> None:
    pass


def test_lineage_records_hashes_of_inputs_and_outputs(project: Path, tmp_path: Path) -> None:
    run_dir = run(project, display="spec", run_dir=tmp_path / "run", until="aggregate", log=quiet)
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["plan"]["criteria_version"] == "1.2.0"
    assert lineage["libraries"]["numpy"] and lineage["seed"] == 20261101
    plan = json.loads((run_dir / "plan" / "plan.json").read_text())
    assert lineage["plan"]["fingerprint"] == plan["fingerprint"]
    assert list(lineage["stages"]) == ["prompts", "annotation_qc", "aggregate"]
    for name, entry in lineage["stages"].items():
        assert entry["status"] == "done", name
        for output in entry["outputs"]:
            assert sha256_file(run_dir / output["path"]) == output["sha256"]
        for item in entry["inputs"]:
            source = (
                project.parent / item["path"] if item["from"] == "spec" else run_dir / item["path"]
            )
            assert sha256_file(source) == item["sha256"]
    qc_gate = lineage["stages"]["annotation_qc"]["gates"][0]
    assert qc_gate["passed"] and not qc_gate["overridden"]
    assert lineage["stages"]["annotation_qc"]["metrics"]["excluded_annotators"] == [
        "ann-04",
        "ann-05",
        "ann-06",
    ]


def test_resume_skips_unchanged_and_reruns_changed(project: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    run_dir = run(project, display="spec", run_dir=tmp_path / "run", until="aggregate", log=quiet)
    run(
        project,
        display="spec",
        run_dir=run_dir,
        until="aggregate",
        resume=True,
        log=messages.append,
    )
    assert sum("skipped" in m for m in messages) == 3
    # a changed batch reruns every stage that reads it
    batch = project.parent / "support-assistant" / "data" / "annotations" / "2026-11-w4.jsonl"
    batch.write_text("".join(batch.read_text().splitlines(keepends=True)[:-5]))
    messages.clear()
    run(
        project,
        display="spec",
        run_dir=run_dir,
        until="aggregate",
        resume=True,
        log=messages.append,
    )
    assert not any("skipped" in m for m in messages)
    # a deleted output reruns its stage
    (run_dir / "preferences" / "pairs.jsonl").unlink()
    messages.clear()
    run(
        project,
        display="spec",
        run_dir=run_dir,
        until="aggregate",
        resume=True,
        log=messages.append,
    )
    assert [m for m in messages if "skipped" in m] == [
        m for m in messages if m.startswith(("[prompts]", "[annotation_qc]"))
    ]
    assert (run_dir / "preferences" / "pairs.jsonl").exists()


def test_a_second_run_on_the_same_directory_is_refused(project: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "t"})
    )
    result = CliRunner().invoke(
        main, ["run", str(project), "--run-dir", str(run_dir), "--until", "prompts"]
    )
    assert result.exit_code == EXIT_BUSY and "in use by another run" in result.output
    # a lock left by a process that no longer exists is taken over
    (run_dir / "run.lock").write_text(
        json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "since": "t"})
    )
    result = CliRunner().invoke(
        main, ["run", str(project), "--run-dir", str(run_dir), "--until", "prompts"]
    )
    assert result.exit_code == 0, result.output
    assert "taking over" in result.output and not (run_dir / "run.lock").exists()


def test_stage_needs_its_dependencies(project: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="needs 'annotation_qc'"):
        run(project, display="spec", run_dir=tmp_path / "run", only="aggregate", log=quiet)
    with pytest.raises(RunError, match="no such stage"):
        run(project, display="spec", run_dir=tmp_path / "run", only="nope", log=quiet)


def test_a_compiled_plan_runs_and_guards_its_inputs(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    assert CliRunner().invoke(main, ["compile", str(project), "-o", str(out)]).exit_code == 0
    run_dir = run(
        out / "plan.json", display="plan.json", run_dir=tmp_path / "run", until="prompts", log=quiet
    )
    assert (run_dir / "prompts" / "holdout.jsonl").exists()
    (project.parent / "support-assistant" / "data" / "gold.jsonl").write_text("")
    with pytest.raises(RunError, match="changed since plan.json was compiled"):
        run(out / "plan.json", display="plan.json", run_dir=tmp_path / "run2", log=quiet)
    plan = json.loads((out / "plan.json").read_text())
    plan["resolved"]["seed"] = 1
    (out / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(RunError, match="fingerprint mismatch"):
        run(out / "plan.json", display="plan.json", run_dir=tmp_path / "run3", log=quiet)


def test_launch_entry_runs_a_plan_stage(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    assert CliRunner().invoke(main, ["compile", str(project), "-o", str(out)]).exit_code == 0
    plan = json.loads((out / "plan.json").read_text())
    launch = next(s["launch"] for s in plan["stages"] if s["name"] == "reward_model")
    assert launch.endswith("-m rlhfspec.cli.launch plan.json --stage reward_model --resume")
    command = [
        sys.executable,
        "-m",
        "rlhfspec.cli.launch",
        "plan.json",
        "--until",
        "prompts",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "prompts" / "report.json").exists()
    refused = subprocess.run(
        command,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WORLD_SIZE": "2"},
    )
    assert refused.returncode == 2 and "--num_processes 1" in refused.stderr


def test_failed_gate_stops_and_override_is_recorded(project: Path, tmp_path: Path) -> None:
    text = project.read_text().replace(
        "exclude_failed_annotators: true", "exclude_failed_annotators: false"
    )
    project.write_text(text)
    result = CliRunner().invoke(
        main, ["run", str(project), "--run-dir", str(tmp_path / "run"), "--until", "aggregate"]
    )
    assert result.exit_code == 1
    assert (
        "annotation_quality" in result.output
        and "--override-gate annotation_quality" in result.output
    )
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert lineage["stages"]["annotation_qc"]["status"] == "failed"
    assert not (tmp_path / "run" / "preferences").exists()
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(project),
            "--run-dir",
            str(tmp_path / "run"),
            "--until",
            "aggregate",
            "--override-gate",
            "annotation_quality",
        ],
    )
    assert result.exit_code == 0, result.output
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    gate = lineage["stages"]["annotation_qc"]["gates"][0]
    assert gate["passed"] is False and gate["overridden"] is True
