"""Criteria drift: the lock file's history against the spec's criteria."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.compiler.validate import validate_file
from tests.conftest import CORPUS


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(CORPUS / "data", tmp_path / "data")
    spec = tmp_path / "spec.yaml"
    shutil.copy(CORPUS / "valid.yaml", spec)
    return spec


def lock(spec: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["lock", str(spec)])
    return result.exit_code, result.output


def codes(spec: Path) -> list[str]:
    return [d.code for d in validate_file(spec).diagnostics]


def edit(spec: Path, old: str, new: str) -> None:
    text = spec.read_text(encoding="utf-8")
    assert old in text
    spec.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_lock_then_clean(project: Path) -> None:
    assert codes(project) == ["C006"]
    code, out = lock(project)
    assert code == 0 and "locked criteria 1.0.0" in out
    assert codes(project) == []
    doc = json.loads((project.parent / "spec.lock.json").read_text())
    assert [e["version"] for e in doc["criteria"]] == ["1.0.0"]
    # locking again is a no-op
    code, out = lock(project)
    assert code == 0 and "already locked" in out


def test_changed_criteria_without_bump_names_the_change(project: Path) -> None:
    lock(project)
    edit(project, "description: Polite.", "description: Polite and warm.")
    diags = validate_file(project).diagnostics
    assert [d.code for d in diags] == ["C003"]
    assert "dimension 'tone' changed (description)" in diags[0].message
    assert diags[0].line == 4 and diags[0].col == 12
    assert "bump criteria.version" in (diags[0].hint or "")
    code, out = lock(project)
    assert code == 1 and "bump criteria.version" in out


def test_reranking_and_new_dimension_are_named(project: Path) -> None:
    lock(project)
    edit(
        project,
        "    - {id: accuracy, description: Correct.}\n    - {id: tone, description: Polite.}\n",
        "    - {id: tone, description: Polite.}\n    - {id: accuracy, description: Correct.}\n"
        "    - {id: brevity, description: Short.}\n",
    )
    message = validate_file(project).diagnostics[0].message
    assert "dimension 'brevity' was added" in message
    assert "ranking changed: accuracy > tone became tone > accuracy" in message


def test_bump_then_lock_keeps_history(project: Path) -> None:
    lock(project)
    edit(project, "description: Polite.", "description: Polite and warm.")
    edit(project, "version: 1.0.0", "version: 1.1.0")
    assert "C007" in codes(project)
    assert lock(project)[0] == 0
    assert codes(project) == []
    doc = json.loads((project.parent / "spec.lock.json").read_text())
    assert [e["version"] for e in doc["criteria"]] == ["1.0.0", "1.1.0"]


def test_version_going_backwards(project: Path) -> None:
    lock(project)
    edit(project, "description: Polite.", "description: Polite and warm.")
    edit(project, "version: 1.0.0", "version: 0.9.0")
    assert codes(project) == ["C004"]
    code, out = lock(project)
    assert code == 1 and "older" in out


def test_batch_with_unknown_criteria_version(project: Path) -> None:
    lock(project)
    edit(project, "criteria_version: 1.0.0", "criteria_version: 0.7.0")
    diags = validate_file(project).diagnostics
    assert [d.code for d in diags] == ["C005"]
    assert "batch 'b1'" in diags[0].message and "0.7.0" in diags[0].message


def test_hand_edited_lock_is_refused(project: Path) -> None:
    lock(project)
    path = project.parent / "spec.lock.json"
    doc = json.loads(path.read_text())
    doc["criteria"][0]["content"]["version"] = "9.9.9"
    path.write_text(json.dumps(doc))
    assert codes(project) == ["C009"]
    assert lock(project)[0] == 1


def test_lock_of_invalid_spec(project: Path) -> None:
    edit(project, "method: ppo", "method: ppp")
    code, out = lock(project)
    assert code == 1 and "S004" in out and "Traceback" not in out
