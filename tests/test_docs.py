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


def _commands() -> list[str]:
    from rlhfspec.cli.main import main

    return sorted(main.commands)


def test_readme_lists_every_command_on_one_line() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `rlhfspec ")]
    listed = sorted(row.split("`")[1].split()[1] for row in rows)
    assert listed == _commands()
    assert all(len(row) <= 120 for row in rows), (
        "one short line per command; details in docs/cli.md"
    )


def test_cli_reference_has_a_section_per_command() -> None:
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in _commands():
        assert f"## `{command}`" in page, command


def test_readme_keeps_the_two_set_up_commands() -> None:
    """CI and newcomers run these two lines verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip "
        "install -q -e '.[train]' && .venv/bin/rlhfspec run specs/support-assistant.yaml"
    ) in readme
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip "
        "install -q -e '.[train,dev]' && .venv/bin/python -m pytest"
    ) in readme


def test_docs_links_resolve() -> None:
    """Every relative link of the README and docs/ names a file that exists."""
    import re

    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_schema_markdown_descriptions_are_current() -> None:
    from rlhfspec.compiler.reference import spec_schema_text
    from rlhfspec.compiler.schemas import SPEC_SCHEMA

    on_disk = (ROOT / "schemas" / SPEC_SCHEMA).read_text(encoding="utf-8")
    assert on_disk == spec_schema_text(), "run: python -m rlhfspec.compiler.reference"


def test_shipped_specs_quote_the_on_key() -> None:
    """Editors in YAML 1.1 mode read a bare `on` as true."""
    import re

    for spec in (ROOT / "specs").glob("*.yaml"):
        assert not re.search(r"(^|[{,\s])on:", spec.read_text(encoding="utf-8")), spec.name


def test_every_artifact_format_is_listed() -> None:
    """Each `rlhfspec.<artifact>/<version>` string in the code has a row in docs/artifacts.md,
    and each row names a format the code writes."""
    import re

    form = re.compile(r"rlhfspec\.[a-z_-]+/\d+")
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("common", "compiler", "runtime", "cli")
        for p in (ROOT / folder).rglob("*.py")
    )
    page = (ROOT / "docs" / "artifacts.md").read_text(encoding="utf-8")
    in_code = set(form.findall(code))
    listed = set(re.findall(r"^\| `(rlhfspec\.[a-z_-]+/\d+)` \|", page, flags=re.M))
    assert in_code - listed == set(), "add these formats to docs/artifacts.md"
    assert listed - in_code == set(), "docs/artifacts.md lists formats no code writes"
