"""`rlhfspec init`: the scaffolded project validates, compiles, and keeps working when copied."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from rlhfspec.cli import main as cli
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, list(args))
    return result.exit_code, result.output


def test_scaffold_validates_strictly_and_its_plan_is_current(tmp_path: Path) -> None:
    project = tmp_path / "Support Bot"
    code, out = run("init", str(project))
    assert code == 0, out
    spec = project / "rlhf-spec.yaml"
    assert run("validate", "--strict", str(spec)) == (0, "0 errors, 0 warnings\n")
    code, out = run("compile", "--check", str(spec), "-o", str(project / "build"))
    assert code == 0 and "up to date" in out, out
    plan = json.loads((project / "build" / "plan.json").read_text(encoding="utf-8"))
    assert plan["resolved"]["name"] == "support-bot"
    lock = json.loads((project / "rlhf-spec.lock.json").read_text(encoding="utf-8"))
    assert "0.1.0" in json.dumps(lock)


def test_modeline_points_at_the_schema_beside_the_spec(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "p"))[0] == 0
    copy = shutil.copytree(tmp_path / "p", tmp_path / "elsewhere" / "copied")
    first = (copy / "rlhf-spec.yaml").read_text(encoding="utf-8").splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, first
    schema = json.loads((copy / match.group(1)).read_text(encoding="utf-8"))
    assert schema == load_schema(SPEC_SCHEMA)
    # a copied project validates on its own: every path is inside its folder
    assert run("validate", "--strict", str(copy / "rlhf-spec.yaml"))[0] == 0


def test_pre_commit_and_ci_run_the_checks(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "p"))[0] == 0
    hooks = yaml.safe_load((tmp_path / "p" / ".pre-commit-config.yaml").read_text())
    entries = [h["entry"] for repo in hooks["repos"] for h in repo["hooks"]]
    assert entries == [
        "rlhfspec validate --strict",
        "rlhfspec compile --check rlhf-spec.yaml -o build",
    ]
    workflow = yaml.safe_load((tmp_path / "p" / ".github/workflows/rlhf-spec.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["validate"]["steps"])
    assert "rlhfspec validate --strict" in steps and "compile --check" in steps
    assert workflow["on"] == ["pull_request", "push"]  # quoted: YAML 1.1 reads a bare on as true


def test_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    code, out = run("init", str(tmp_path))
    assert code == 1 and "not an empty folder" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
