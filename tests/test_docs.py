"""The generated docs match their sources, and every registered code is emitted somewhere."""

from __future__ import annotations

import pytest

from rlhfspec.common.codes import CODES, REGISTRY, group_of
from rlhfspec.common.findings import Finding
from rlhfspec.compiler.reference import PAGES, stale_pages
from tests.conftest import ROOT


def test_generated_pages_are_current() -> None:
    assert stale_pages(ROOT / "docs") == [], "run: python -m rlhfspec.compiler.reference"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_page_is_linked_from_the_readme(name: str) -> None:
    assert f"docs/{name}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_code_is_emitted_somewhere() -> None:
    """A registered code that no module emits is dead documentation."""
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("compiler", "runtime", "cli")
        for p in (ROOT / folder).rglob("*.py")
    )
    for code in CODES:
        assert f'"{code}"' in sources, f"{code} is registered but never emitted"


def test_every_code_is_documented_with_its_hint() -> None:
    page = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    for entry in REGISTRY:
        assert f"| `{entry.code}` | {entry.severity}" in page
        assert entry.hint.replace("|", "\\|") in page


def test_registry_is_ordered_within_each_group() -> None:
    """Codes of a group are numbered 001, 002, ... in registry order: a gap is a typo."""
    by_group: dict[str, list[int]] = {}
    for entry in REGISTRY:
        by_group.setdefault(group_of(entry.code).prefix, []).append(int(entry.code[-3:]))
    for prefix, numbers in by_group.items():
        assert numbers == list(range(1, len(numbers) + 1)), prefix


def test_a_finding_takes_its_severity_from_the_registry() -> None:
    warning = Finding("C006", "no lock file")
    assert warning.severity == "warning" and warning.name == "no-lock-file"
    assert Finding("C006", "no lock file", escalated=True).severity == "error"
    with pytest.raises(ValueError, match="unregistered"):
        Finding("Z999", "nothing")
