"""`run PLAN.json` trusts no field of the plan (issue 15, class 2).

The fingerprint is a sha256 anyone can recompute, so each crafted plan here
carries a valid one; every one must be refused (exit 1) before any stage
runs, and nothing may be written outside the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.common.hashing import canonical_json, sha256_text


@pytest.fixture
def compiled(project: Path, tmp_path: Path) -> Path:
    out = tmp_path / "build"
    result = CliRunner().invoke(main, ["compile", str(project), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out / "plan.json"


def forge(plan_path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the plan and recompute its fingerprint, as an attacker would."""
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    edit(plan)
    body = {k: v for k, v in plan.items() if k != "fingerprint"}
    plan["fingerprint"] = sha256_text(canonical_json(body))
    plan_path.write_text(json.dumps(plan, indent=2), encoding="utf-8")


def run_plan(plan_path: Path, tmp_path: Path) -> Any:
    return CliRunner().invoke(
        main,
        ["run", str(plan_path), "--run-dir", str(tmp_path / "run"), "--until", "prompts"],
    )


def outside_source(plan: dict[str, Any]) -> None:
    plan["resolved"]["prompts"]["sources"][0]["path"] = "../outside/usage.jsonl"
    for item in plan["inputs"]:
        if item["path"] == "support-assistant/data/prompts/usage.jsonl":
            item["path"] = "../outside/usage.jsonl"


def escaping_name(plan: dict[str, Any]) -> None:
    plan["spec"]["name"] = "../../../../elsewhere"
    plan["resolved"]["name"] = "../../../../elsewhere"


def nan_threshold(plan: dict[str, Any]) -> None:
    plan["resolved"]["annotation"]["gold"]["min_accuracy"] = float("nan")


def weaker_gate(plan: dict[str, Any]) -> None:
    plan["resolved"]["reward_model"]["gates"]["min_validation_accuracy"] = 0.0


def spec_elsewhere(plan: dict[str, Any]) -> None:
    plan["spec"]["dir"] = "/etc"


def spec_file_path(plan: dict[str, Any]) -> None:
    plan["spec"]["file"] = "../support-assistant.yaml"


FORGERIES = {
    "source outside the spec folder": (outside_source, "not a plan rlhfspec can run"),
    "name that is a path": (escaping_name, "not a plan rlhfspec can run"),
    "NaN threshold": (nan_threshold, "not a readable plan: NaN"),
    "gate edited after compiling": (weaker_gate, "not what its spec compiles to"),
    "spec.dir elsewhere": (spec_elsewhere, "is not in /etc"),
    "spec.file with a folder": (spec_file_path, "not a spec file name"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_plan_is_refused(compiled: Path, tmp_path: Path, name: str) -> None:
    edit, expected = FORGERIES[name]
    forge(compiled, edit)
    result = run_plan(compiled, tmp_path)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "plan.json" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything ran or was written


def test_outside_source_with_a_consistent_spec_is_refused(compiled: Path, tmp_path: Path) -> None:
    """Even with the plan's resolved settings valid by schema, the path rules apply."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "usage.jsonl").write_text('{"id": "x", "prompt": "hi"}\n')
    forge(compiled, outside_source)
    result = run_plan(compiled, tmp_path)
    assert result.exit_code == 1
    assert "differs at" in result.output or "not a plan" in result.output


def test_plan_with_trailing_garbage_is_refused(compiled: Path, tmp_path: Path) -> None:
    compiled.write_text(compiled.read_text(encoding="utf-8") + "]", encoding="utf-8")
    result = run_plan(compiled, tmp_path)
    assert result.exit_code == 1
    assert "not a readable plan" in result.output


def test_unedited_plan_runs(compiled: Path, tmp_path: Path) -> None:
    result = run_plan(compiled, tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "prompts" / "holdout.jsonl").is_file()
