"""The run directory: lineage, resume, locking, plans as input, gates (data stages only, fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.runtime import run as run_module
from rlhfspec.runtime.annotation.stages import prompts_stage
from rlhfspec.runtime.lineage import Artifact, GateRecord, LineageRecord, PlanRef, StageRecord
from rlhfspec.runtime.run import EXIT_BUSY, STAGES, StageImpl, load_plan, run, stage_context
from rlhfspec.runtime.stage_api import StageContext, StageOutcome
from tests.artifact_formats import assert_formats
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "support-assistant.yaml"


def quiet(_: str) -> None:
    pass


def test_lineage_records_hashes_of_inputs_and_outputs(project: Path, tmp_path: Path) -> None:
    run_dir = run(project, display="spec", run_dir=tmp_path / "run", until="aggregate", log=quiet)
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["plan"]["criteria_version"] == "1.3.0"
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
    # the record's types say what the file holds: every key written is declared, and
    # every required key is written
    assert set(lineage) == set(LineageRecord.__annotations__)
    assert set(lineage["plan"]) == set(PlanRef.__annotations__)
    for entry in lineage["stages"].values():
        assert StageRecord.__required_keys__ <= set(entry) <= set(StageRecord.__annotations__)
        assert set(entry) >= {"outputs", "inputs", "gates", "signature", "finished"}
        for output in entry["outputs"]:
            assert Artifact.__required_keys__ <= set(output) <= set(Artifact.__annotations__)
        for gate in entry["gates"]:
            assert set(gate) == set(GateRecord.__annotations__)
        for item in entry["inputs"]:
            assert set(item) == {"path", "sha256", "from"}
    assert len(assert_formats(run_dir)) >= 5  # plan, lineage, prompt and QC reports, summary
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
    with pytest.raises(RunError, match="needs 'prompts'"):
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


# ---------------------------------------------------------------------------------------------
# The plan entry as the contract: declared outputs, upstream reads, compile once


def prompts_then_extra(ctx: StageContext) -> StageOutcome:
    """The real prompts stage, plus a file its plan entry does not declare."""
    outcome = prompts_stage(ctx)
    ctx.path("prompts/extra.txt").write_text("not declared\n")
    return outcome


def prompts_without_holdout(ctx: StageContext) -> StageOutcome:
    """The real prompts stage, minus one output its plan entry declares."""
    outcome = prompts_stage(ctx)
    ctx.path("prompts/holdout.jsonl").unlink()
    return outcome


@pytest.mark.parametrize(
    ("impl", "message"),
    [
        ("prompts_then_extra", "does not declare: prompts/extra.txt"),
        ("prompts_without_holdout", "did not write its declared outputs: prompts/holdout.jsonl"),
    ],
)
def test_a_stage_must_write_exactly_its_declared_outputs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, impl: str, message: str
) -> None:
    monkeypatch.setitem(STAGES, "prompts", StageImpl(f"tests.test_run:{impl}"))
    with pytest.raises(RunError, match=message):
        run(project, display="spec", run_dir=tmp_path / "run", until="prompts", log=quiet)
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert lineage["stages"]["prompts"]["status"] == "failed"
    assert message in lineage["stages"]["prompts"]["message"]


def test_a_stage_reads_only_what_its_entry_lists(project: Path, tmp_path: Path) -> None:
    run_dir = run(project, display="spec", run_dir=tmp_path / "run", until="prompts", log=quiet)
    loaded = load_plan(project, "spec").in_folder(run_dir / "plan")
    sft = next(s for s in loaded.plan["stages"] if s["name"] == "sft")
    ctx = stage_context(
        loaded, sft, run_dir, display="spec", resume=False, overrides=frozenset(), log=quiet
    )
    assert ctx.upstream("prompts/holdout.jsonl").is_file()
    with pytest.raises(RunError, match="does not list under `reads`"):
        ctx.upstream("prompts/report.json")
    # the stage sees its own settings, not the spec
    assert set(ctx.settings) == set(ctx.project.spec) == set(sft["settings"])
    assert "criteria" not in ctx.settings and not hasattr(ctx, "spec")


SFT_CALLS: list[str] = []


def recording_sft(ctx: StageContext) -> StageOutcome:
    """Stands in for training (the subject is the runner's resume decision): records the
    holdout it was given and writes the declared model folder."""
    holdout = ctx.upstream("prompts/holdout.jsonl").read_text(encoding="utf-8")
    SFT_CALLS.append(holdout)
    ctx.path("models/sft").mkdir(parents=True, exist_ok=True)
    ctx.path("models/sft/holdout-seen.txt").write_text(holdout)
    return StageOutcome(["models/sft"])


def test_resume_reruns_sft_when_the_prompt_holdout_changes(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STAGES, "sft", StageImpl("tests.test_run:recording_sft"))
    SFT_CALLS.clear()
    messages: list[str] = []
    run_dir = run(project, display="spec", run_dir=tmp_path / "run", until="sft", log=quiet)
    run(project, display="spec", run_dir=run_dir, until="sft", resume=True, log=messages.append)
    assert len(SFT_CALLS) == 1 and sum("skipped" in m for m in messages) == 4
    # only the holdout share changes: not a setting or input file of SFT, but its holdout
    text = project.read_text()
    assert "production_holdout: {share: 0.10}" in text
    project.write_text(
        text.replace("production_holdout: {share: 0.10}", "production_holdout: {share: 0.08}")
    )
    messages.clear()
    run(project, display="spec", run_dir=run_dir, until="sft", resume=True, log=messages.append)
    skipped = [m.split("]")[0][1:] for m in messages if "skipped" in m]
    assert skipped == ["annotation_qc"]  # prompts, aggregate and sft ran again
    assert len(SFT_CALLS) == 2 and SFT_CALLS[0] != SFT_CALLS[1]
    assert SFT_CALLS[1] == (run_dir / "prompts" / "holdout.jsonl").read_text(encoding="utf-8")


def test_run_compiles_a_spec_once(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return compile_spec(path, *args, **kwargs)

    monkeypatch.setattr(run_module, "compile_spec", counting)
    run_dir = run(project, display="spec", runs_root=tmp_path / "runs", until="prompts", log=quiet)
    assert calls == [project]
    plan = json.loads((run_dir / "plan" / "plan.json").read_text())
    # the plan in the run directory finds the spec's folder from where it lies
    assert (run_dir / "plan" / plan["spec"]["dir"]).resolve() == project.parent.resolve()
