"""The command line: exit codes, output formats and no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhfspec.cli import main as cli
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema
from tests.conftest import CORPUS

VALID = str(CORPUS / "valid.yaml")
INVALID = str(CORPUS / "unknown_nested_key.yaml")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, list(args), env=env)
    return result.exit_code, result.output


def test_exit_codes() -> None:
    assert run("validate", VALID)[0] == cli.EXIT_OK
    assert run("validate", INVALID)[0] == cli.EXIT_INVALID
    assert run("validate", VALID, INVALID)[0] == cli.EXIT_INVALID
    assert run("validate", "does-not-exist.yaml")[0] == cli.EXIT_USAGE
    assert run("validate", "--no-such-flag", VALID)[0] == cli.EXIT_USAGE
    assert run("validate", "--strict", VALID)[0] == cli.EXIT_INVALID  # C006 warning


def test_text_format() -> None:
    code, out = run("validate", "--format", "text", INVALID)
    first = out.splitlines()[0]
    assert first.endswith(
        "error[S001]: unknown key 'epocs' in reward_model.train; did you mean 'epochs'?"
    )
    assert ":27:48: " in first
    assert "    at reward_model.train.epocs" in out
    assert out.rstrip().endswith("1 error, 0 warnings")


def test_json_format() -> None:
    code, out = run("validate", "--format", "json", INVALID)
    doc = json.loads(out)
    assert doc["valid"] is False and doc["errors"] == 1
    assert doc["diagnostics"][0]["code"] == "S001"
    assert (doc["diagnostics"][0]["line"], doc["diagnostics"][0]["col"]) == (27, 48)


def test_github_format_is_automatic_under_actions() -> None:
    code, out = run("validate", INVALID, env={"GITHUB_ACTIONS": "true"})
    assert out.startswith("::error file=")
    assert ",line=27,col=48,title=S001::unknown key 'epocs'" in out
    code, out = run("validate", VALID, env={"GITHUB_ACTIONS": "true"})
    assert out.startswith("::warning file=") and code == 0


def test_internal_error_is_short_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("rlhfspec.compiler.validate.validate_file", boom)
    result = CliRunner().invoke(cli.main, ["validate", VALID])
    assert result.exit_code == cli.EXIT_INTERNAL
    assert "internal error: RuntimeError: kaboom" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli.main, ["--debug", "validate", VALID])
    assert result.exit_code == cli.EXIT_INTERNAL


def test_schema_command_prints_the_schema() -> None:
    code, out = run("schema")
    assert code == 0 and json.loads(out) == load_schema(SPEC_SCHEMA)
    code, out = run("schema", "--which", "plan")
    assert json.loads(out)["title"].startswith("rlhfspec training plan")


def test_unwritable_output_is_a_clean_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = run("compile", VALID, "-o", str(blocker / "sub"))
    assert code == 1 and "cannot write" in out and "Traceback" not in out
