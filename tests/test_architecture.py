"""The dependency direction between packages, checked on the source (AST, every import).

common <- compiler <- runtime <- cli: the compiler imports nothing of the
runtime or the CLI (so `validate` and `compile` stay light), the runtime
never imports the CLI, and the common helpers import none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "common": ("rlhfspec.compiler", "rlhfspec.runtime", "rlhfspec.cli"),
    "compiler": ("rlhfspec.runtime", "rlhfspec.cli"),
    "runtime": ("rlhfspec.cli",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            else:
                found.append((node.lineno, node.module or ""))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.startswith(".."):
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: relative import {module} leaves the package"
                )
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_light_commands_never_import_heavy_libraries() -> None:
    heavy = ("torch", "transformers", "trl", "accelerate", "peft", "datasets")
    bad = []
    for package in ("common", "compiler"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imported_modules(path):
                if module.split(".")[0] in heavy:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_annotation_and_prompt_modules_import_on_their_own() -> None:
    """Each module imports first in a fresh interpreter: annotation.stock reads the prompt
    pool and the prompt check matches stock exports, so an import cycle would only show in
    the order a command happens to import them (`rlhfspec qc` imports qc first)."""
    import subprocess
    import sys

    for name in (
        "rlhfspec.runtime.annotation.qc",
        "rlhfspec.runtime.annotation.loading",
        "rlhfspec.runtime.annotation.stock",
        "rlhfspec.runtime.prompts.check",
        "rlhfspec.runtime.prompts.batch_ids",
    ):
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"import {name}:\n{done.stderr[-1500:]}"


def test_every_package_folder_is_installed() -> None:
    """pyproject lists packages explicitly: a new subpackage missing there would work in this
    checkout and be absent from a wheel."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        "rlhfspec." + init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for top in ("common", "compiler", "runtime", "cli")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
