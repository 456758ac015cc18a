"""The README's generated parts match the schema and the diagnostic registry."""

from __future__ import annotations

from rlhfspec.compiler.diagnostics import CODES
from rlhfspec.compiler.reference import render_readme
from tests.conftest import ROOT


def test_readme_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render_readme(text) == text, "run: python -m rlhfspec.compiler.reference README.md"


def test_every_code_is_emitted_somewhere() -> None:
    """A registered code that no module emits is dead documentation."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "compiler").rglob("*.py"))
    for code in CODES:
        assert sources.count(f'"{code}"') >= 2, f"{code} is registered but never emitted"
