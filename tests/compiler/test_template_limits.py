"""User templates render with time and memory limits; failures exit 1 with file and line
(issue 15, class 8). On main `range(10**9)` and a recursive macro exited 3, and nothing
bounded a template's memory or time."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.common import sandbox

CASES = {
    "huge range": ("{{ range(10**9)|list|length }}", "criteria.md.j2:3: OverflowError"),
    "recursive macro": (
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "criteria.md.j2:3: recursed too deeply",
    ),
    "gigabytes of text": ("{{ ('x' * 10**10)|length }}", "criteria.md.j2:3: needed more memory"),
    "endless loops": (
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "criteria.md.j2:3: took longer than 1s",
    ),
    "undefined name": ("{{ nope.attr }}", "criteria.md.j2:3: UndefinedError"),
    "syntax error": ("{% if %}", "criteria.md.j2:3: TemplateSyntaxError"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_user_template_exits_1_with_file_and_line(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(sandbox, "SECONDS", 1)
    body, expected = CASES[name]
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "criteria.md.j2").write_text(f"# Criteria\n\n{body}\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["compile", str(project), "-o", str(out), "--templates", str(templates)]
    )
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert not out.exists()  # nothing half-written


def test_good_user_template_renders(project: Path, tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "criteria.md.j2").write_text("# {{ meta.name|md }}\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["compile", str(project), "-o", str(out), "--templates", str(templates)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "criteria.md").read_text(encoding="utf-8") == "# support-assistant\n"
